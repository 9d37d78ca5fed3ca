"""The code passes the ruff configuration in pyproject.toml (ruff is in the dev extra)."""

import subprocess
import sys

from tests.helpers import REPO_ROOT


def test_ruff_check_passes():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "."], capture_output=True, text=True, cwd=REPO_ROOT,
                            timeout=120)
    assert result.returncode == 0, f"ruff check . found problems:\n{result.stdout}{result.stderr}"
