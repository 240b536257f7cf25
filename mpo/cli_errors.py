"""One rule for every ``mpo`` command: an error is one line on stderr and exit code 2.

:func:`one_line_errors` is the ``with`` block every command's work runs in
(``mpo.cli``, ``mpo train``, ``mpo explain``, ``mpo shrink``, ``mpo
dashboard``, ``mpo walkforward``): an :class:`~mpo.errors.MpoError` is
printed as ``error: <message>``; an ``OSError`` (disk full, read-only folder,
missing permission) names its file; anything else says it is not a known
input error. A traceback only with ``-v`` (the root logger at INFO).
``typer.Exit`` and ``KeyboardInterrupt`` pass through.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import typer

from mpo.errors import MpoError

__all__ = ["one_line_errors"]


@contextlib.contextmanager
def one_line_errors(unexpected: bool = True) -> Iterator[None]:
    """Run the block; turn its errors into ``error: ...`` and ``typer.Exit(2)``.

    ``unexpected=False`` converts only ``MpoError`` and ``OSError`` and lets any other
    exception through (``mpo train``, whose in-process kill tests raise through it).
    """
    try:
        yield
    except MpoError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None
    except typer.Exit:
        raise
    except Exception as exc:
        if logging.getLogger().isEnabledFor(logging.INFO):
            raise
        if not unexpected and not isinstance(exc, OSError):
            raise
        if isinstance(exc, OSError):  # disk full, read-only folder, missing permission
            message = (
                f"{exc.strerror or exc} ({exc.filename or 'no file name'}); check the path, its "
                "permissions and the free disk space (-v shows the traceback)."
            )
        else:
            message = (
                f"{type(exc).__name__}: {exc}. This is not a known input error; run again with "
                "-v for the traceback and report it."
            )
        typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None
