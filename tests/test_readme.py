"""The README's Python code runs as written (cvxpylayers' habit)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def test_readme_python_blocks_run(monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README should show the Python API"
    monkeypatch.chdir(README.parent)
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, str(README), "exec"), namespace)
    out = capsys.readouterr().out
    assert "sharpe_vs_hold" in out and "spo" in out


def test_readme_names_existing_files():
    text = README.read_text()
    root = README.parent
    for rel in set(re.findall(r"(?:policies|scripts|benchmarks)/[\w./-]+\.(?:toml|py|sh)", text)):
        assert (root / rel).exists(), rel
