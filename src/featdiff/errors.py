"""The one exception type that means "the user asked for something we cannot do".

The CLI turns it into a one-line message and exit status 2; everything else is a bug and keeps
its traceback.
"""


class UserError(Exception):
    """Bad input: the message names the problem and how to fix it, on one line."""
