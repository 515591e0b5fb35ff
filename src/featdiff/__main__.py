import sys

from featdiff.cli import main

sys.exit(main())
