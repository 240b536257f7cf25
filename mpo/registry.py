"""Registries: the extension points of mpo, and how third-party packages add to them.

Every pluggable kind of thing (cost terms, policy kinds, returns forecasters,
risk models, data sources, encoders, QP backends, tuning objectives) lives in
one :class:`Registry`. Built-in items register themselves with the
``@REGISTRY.register("name")`` decorator in the module that defines them; a
third-party package adds items through the Python entry-point group named by
the registry (e.g. ``mpo.policies``)::

    # pyproject.toml of a plugin package
    [project.entry-points."mpo.policies"]
    my_kind = "my_package.policies:MyKind"

Entry points are loaded lazily, the first time a registry is asked for a name
it does not know (or for its list of names), so importing mpo stays cheap and
a broken plugin only fails when it is used: the error names the entry point.

Dispatch goes through :meth:`Registry.get`; no module compares kind strings.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Generic, TypeVar

from mpo.errors import SpecError

__all__ = ["Registry", "RegistryError"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class RegistryError(SpecError):
    """An unknown name, a duplicate registration or a plugin that fails to load."""


class Registry(Generic[T]):
    """Names -> items (classes or callables) of one kind, extensible by entry points.

    Parameters
    ----------
    what
        What the items are, for messages (``"cost term"``).
    group
        The entry-point group third-party packages register under
        (``"mpo.cost_terms"``).
    bootstrap
        Modules to import before the first lookup: those that register the
        built-in items (avoids import cycles between the registry's users and
        its items).
    """

    def __init__(self, what: str, group: str, bootstrap: tuple[str, ...] = ()) -> None:
        self.what = what
        self.group = group
        self._bootstrap = bootstrap
        self._items: dict[str, T] = {}
        self._origin: dict[str, str] = {}
        self._entry_points_loaded = False
        self._booted = False

    def __repr__(self) -> str:
        return f"Registry({self.what!r}, group={self.group!r}, names={self.names()})"

    # ------------------------------------------------------------- registration
    def register(self, name: str, item: T | None = None, *, replace: bool = False):
        """Register ``item`` under ``name``; without ``item``, a decorator.

        A name can be registered once; ``replace=True`` overrides (tests,
        deliberate patches). Names are lowercase identifiers (``[a-z0-9_]``).
        """
        if not isinstance(name, str) or not name or not name.replace("_", "").isalnum():
            raise RegistryError(
                f"{self.what} name must be a non-empty identifier of letters, digits and "
                f"underscores, got {name!r}."
            )
        if item is None:

            def decorator(obj: T) -> T:
                self.register(name, obj, replace=replace)
                return obj

            return decorator
        if name in self._items and not replace and self._items[name] is not item:
            raise RegistryError(
                f"{self.what} {name!r} is already registered (by {self._origin[name]}); choose "
                "another name or pass replace=True."
            )
        self._items[name] = item
        self._origin[name] = getattr(item, "__module__", "?") or "?"
        if hasattr(item, "__dict__") and isinstance(item, type):
            # items that are classes know their own registered name
            if "name" not in item.__dict__:
                try:
                    item.name = name  # type: ignore[attr-defined]
                except (AttributeError, TypeError):  # pragma: no cover - frozen classes
                    pass
        return item

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests); unknown names are ignored."""
        self._items.pop(name, None)
        self._origin.pop(name, None)

    # ------------------------------------------------------------------ lookup
    def _boot(self) -> None:
        if self._booted:
            return
        self._booted = True
        import importlib

        for module in self._bootstrap:
            importlib.import_module(module)

    def load_entry_points(self, *, force: bool = False, only: str | None = None) -> list[str]:
        """Import the items that installed packages declare in :attr:`group`.

        The first call scans every installed distribution; later calls do
        nothing unless ``force`` (re-import every entry point) or ``only``
        (look for that one name again: a package installed since the first
        scan is found).
        """
        if self._entry_points_loaded and not force and only is None:
            return []
        self._entry_points_loaded = True
        added = []
        for ep in metadata.entry_points(group=self.group):
            if only is not None and ep.name != only:
                continue
            if ep.name in self._items and not force:
                continue
            try:
                obj = ep.load()
            except Exception as exc:  # any import error of a plugin
                raise RegistryError(
                    f"the {self.what} plugin {ep.name!r} ({ep.value}, entry-point group "
                    f"{self.group!r}) failed to load: {type(exc).__name__}: {exc}. Fix or "
                    "uninstall the package that provides it."
                ) from exc
            self.register(ep.name, obj, replace=True)
            self._origin[ep.name] = f"entry point {ep.value}"
            added.append(ep.name)
            logger.debug("%s %r loaded from entry point %s", self.what, ep.name, ep.value)
        return added

    def get(self, name: str) -> T:
        """The item registered as ``name``; :class:`RegistryError` naming the choices if none."""
        self._boot()
        if name not in self._items:
            self.load_entry_points()
        if name not in self._items and isinstance(name, str):
            self.load_entry_points(only=name)
        try:
            return self._items[name]
        except (KeyError, TypeError):
            pass
        names = self.names()
        close = difflib.get_close_matches(str(name), names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise RegistryError(
            f"unknown {self.what} {name!r}; registered: {', '.join(names) or '(none)'}.{hint} "
            f"Packages add {self.what}s through the entry-point group {self.group!r}."
        ) from None

    def __contains__(self, name: object) -> bool:
        self._boot()
        if name not in self._items:
            self.load_entry_points()
        if name not in self._items and isinstance(name, str):
            self.load_entry_points(only=name)
        return name in self._items

    def names(self) -> list[str]:
        """Registered names, built-ins first, in registration order."""
        self._boot()
        self.load_entry_points()
        return list(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter([(n, self._items[n]) for n in self.names()])

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


def one_of(registry: Registry, what: str) -> Callable[[str], str]:
    """A pydantic-friendly validator: ``value`` must be a name in ``registry``."""

    def check(value: str) -> str:
        if value not in registry:
            registry.get(value)  # raises with the list of names
        return value

    check.__name__ = f"check_{what}"
    return check
