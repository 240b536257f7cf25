"""A Typer app around one command group's ``register`` (shared by the CLI tests)."""

from __future__ import annotations

from collections.abc import Callable

import typer


def subcommand_app(register: Callable[[typer.Typer], None]) -> typer.Typer:
    """An app with the commands ``register`` adds plus a second, unused one: with a
    single command typer would run it without its name, unlike ``mpo``."""
    app = typer.Typer()
    register(app)

    @app.command()
    def other() -> None:
        """Unused."""

    return app
