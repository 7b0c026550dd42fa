"""Every Python example of the package's README.md, run as it is written
against a running Roadie (its address substituted), by the interpreter in
$ROADIE_README_PYTHON: in CI, a fresh virtual environment that holds only
`pip install ./client/python`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Roadie

README = Path(__file__).resolve().parents[1] / "README.md"
ADDRESS = "127.0.0.1:50051"
NOT_RUN = "<!-- not run:"
BLOCK = re.compile(r"(?P<before>[^\n]*)\n```python\n(?P<code>.*?)```", re.S)


def examples() -> list[tuple[int, str]]:
    """(line, code) of each python block the README does not mark not-run."""
    text = README.read_text()
    found = []
    for match in BLOCK.finditer(text):
        if not match.group("before").startswith(NOT_RUN):
            found.append((text[: match.start("code")].count("\n") + 1, match.group("code")))
    return found


def test_the_readme_marks_only_the_tls_example_not_run() -> None:
    text = README.read_text()
    assert text.count("```python") == len(examples()) + 1
    assert text.count(NOT_RUN) == 1


@pytest.mark.parametrize("line,code", examples(), ids=lambda v: str(v) if isinstance(v, int) else "")
def test_readme_example_runs(server: Roadie, tmp_path: Path, line: int, code: str) -> None:
    python = os.environ.get("ROADIE_README_PYTHON", sys.executable)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONHASHSEED": "0"}
    done = subprocess.run(
        [python, "-c", code.replace(ADDRESS, server.address)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"README.md:{line} failed:\n{done.stdout}{done.stderr}"
    assert done.stdout.strip(), f"README.md:{line} printed nothing"
