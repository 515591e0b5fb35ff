"""`featdiff encode` refuses an OUT it cannot write before it encodes anything (tests/data/test_image_folder.py
runs one that writes)."""

import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG = PROJECT_ROOT / "configs" / "cifar10_lt_if100.yaml"


def encode(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "featdiff", "encode", str(CONFIG), str(out)], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("featdiff: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_an_out_under_a_regular_file_is_refused_before_encoding(tmp_path):
    blocker = tmp_path / "some-file"
    blocker.write_text("not a folder")
    result = encode(blocker / "x.safetensors")
    assert_one_line_error(result, str(blocker), "is a file, not a folder")
    assert blocker.read_text() == "not a folder"


def test_an_existing_out_is_never_overwritten(tmp_path):
    out = tmp_path / "features.safetensors"
    out.write_bytes(b"mine")
    assert_one_line_error(encode(out), "already exists")
    assert out.read_bytes() == b"mine"
