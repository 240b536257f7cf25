"""pytest fixtures that install a plugin package the way pip does, without pip or network.

pip installs a package by copying it into ``site-packages`` next to a
``<name>-<version>.dist-info`` folder whose ``entry_points.txt`` lists the
package's entry points; :mod:`importlib.metadata` finds that folder on
``sys.path``. :func:`install_distribution` writes the same folder in a
temporary directory, the fixtures put it on ``sys.path`` and make the mpo
registries read the entry points again, and undo all of it afterwards.

Use in a test module::

    from plugins.fixtures import example_plugin  # noqa: F401  (a fixture)
"""

from __future__ import annotations

import importlib
import shutil
import sys
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from mpo.registry import Registry

__all__ = [
    "EXAMPLE_PLUGIN",
    "InstalledPlugin",
    "broken_plugin",
    "entry_points_of",
    "example_plugin",
    "install_distribution",
]

#: The example plugin's project folder (``pyproject.toml`` and the package).
EXAMPLE_PLUGIN = Path(__file__).resolve().parent / "mpo_example_plugin"


@dataclass(frozen=True)
class InstalledPlugin:
    """A plugin installed for one test: its ``site`` folder and entry points by group."""

    site: Path
    entry_points: Mapping[str, Mapping[str, str]]


def entry_points_of(project: Path) -> dict[str, dict[str, str]]:
    """The ``[project.entry-points]`` table of ``project/pyproject.toml``: group -> name -> value."""
    meta = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
    return {g: dict(eps) for g, eps in meta["project"].get("entry-points", {}).items()}


def install_distribution(
    site: Path, name: str, version: str, entry_points: Mapping[str, Mapping[str, str]]
) -> Path:
    """Write ``site/<name>-<version>.dist-info`` (METADATA, entry_points.txt, INSTALLER, RECORD).

    Returns the dist-info folder. The packages themselves are copied by the caller.
    """
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8"
    )
    lines = []
    for group, eps in entry_points.items():
        lines += [f"[{group}]", *(f"{ep} = {value}" for ep, value in eps.items()), ""]
    (info / "entry_points.txt").write_text("\n".join(lines), encoding="utf-8")
    (info / "INSTALLER").write_text("pytest\n", encoding="utf-8")
    (info / "RECORD").write_text("", encoding="utf-8")
    return info


def _registries(groups: set[str]) -> Iterator[Registry]:
    """The registries of the imported mpo modules that read one of ``groups``."""
    for module_name, module in list(sys.modules.items()):
        if module is None or not (module_name == "mpo" or module_name.startswith("mpo.")):
            continue
        for value in list(vars(module).values()):
            if isinstance(value, Registry) and value.group in groups:
                yield value


def _top_level_packages(entry_points: Mapping[str, Mapping[str, str]]) -> set[str]:
    """``{"mpo_example_plugin"}`` for values like ``"mpo_example_plugin:example_market"``."""
    return {v.split(":")[0].split(".")[0] for eps in entry_points.values() for v in eps.values()}


def _installed(
    monkeypatch: pytest.MonkeyPatch,
    site: Path,
    entry_points: Mapping[str, Mapping[str, str]],
    *,
    load: bool = True,
) -> Iterator[InstalledPlugin]:
    """Put ``site`` on ``sys.path`` and (``load``) reload the data sources' entry points.

    Afterwards the plugin's names leave every mpo registry of its groups and its
    modules leave ``sys.modules``; ``monkeypatch`` then restores ``sys.path``.
    """
    from mpo.data.sources import DATA_SOURCES

    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    try:
        if load:
            DATA_SOURCES.load_entry_points(force=True)
        yield InstalledPlugin(site, entry_points)
    finally:
        for registry in {id(r): r for r in _registries(set(entry_points))}.values():
            for name in entry_points[registry.group]:
                registry.unregister(name)
        packages = _top_level_packages(entry_points)
        for name in [m for m in sys.modules if m.split(".")[0] in packages]:
            del sys.modules[name]
        importlib.invalidate_caches()


@pytest.fixture
def example_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InstalledPlugin]:
    """``tests/plugins/mpo_example_plugin`` installed, its entry points loaded (then removed)."""
    site = tmp_path / "site-packages"
    shutil.copytree(EXAMPLE_PLUGIN / "mpo_example_plugin", site / "mpo_example_plugin")
    entry_points = entry_points_of(EXAMPLE_PLUGIN)
    install_distribution(site, "mpo-example-plugin", "0.1", entry_points)
    yield from _installed(monkeypatch, site, entry_points)


@pytest.fixture
def broken_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InstalledPlugin]:
    """A distribution whose data source ``broken_market`` fails to import (missing dependency).

    Installed but not loaded: the test triggers the load.
    """
    site = tmp_path / "site-packages"
    (site / "mpo_broken_plugin").mkdir(parents=True)
    (site / "mpo_broken_plugin" / "__init__.py").write_text(
        "import mpo_missing_dependency  # not installed\n", encoding="utf-8"
    )
    entry_points = {"mpo.data_sources": {"broken_market": "mpo_broken_plugin:load"}}
    install_distribution(site, "mpo-broken-plugin", "0.1", entry_points)
    yield from _installed(monkeypatch, site, entry_points, load=False)
