"""The README never lies: its example runs, and CI runs its commands."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _command_after(marker: str) -> str:
    lines = README.splitlines()
    index = lines.index(f"<!-- {marker} -->")
    assert lines[index + 1].startswith("```"), f"a code fence must follow <!-- {marker} -->"
    return lines[index + 2]


def test_readme_example_runs(capsys):
    block = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "torch.Size([1000, 2])" in out


def test_ci_runs_the_readme_commands():
    """.ci/run reads both commands from the README; check it finds the same lines."""
    for marker in ("test-command", "main-command"):
        found = subprocess.run(
            ["awk", "-v", f"marker=<!-- {marker} -->", "$0 ~ marker {getline; getline; print; exit}", "README.md"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout.strip()
        assert found == _command_after(marker)
        assert "pip install" in found
    ci = (ROOT / ".ci" / "run").read_text()
    assert "readme_command test-command" in ci and "readme_command main-command" in ci
    assert "pytest" in _command_after("test-command")
