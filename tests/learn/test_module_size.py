"""Small modules: no module of mpo.learn reaches 600 lines (STYLE.md: one responsibility)."""

from __future__ import annotations

from pathlib import Path

import mpo.learn

MAX_LINES = 600
ROOT = Path(mpo.learn.__file__).parent


def test_every_learn_module_is_under_600_lines():
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for path in sorted(ROOT.rglob("*.py"))
    }
    assert len(sizes) > 10  # the package was found
    too_long = {name: n for name, n in sizes.items() if n >= MAX_LINES}
    assert not too_long, f"split these modules along their responsibilities: {too_long}"
