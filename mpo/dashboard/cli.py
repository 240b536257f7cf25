"""``mpo dashboard [RUNS_DIR] [--port N]``: ``streamlit run`` on :mod:`mpo.dashboard.app`.

``register(app)`` adds the command to the ``mpo`` typer app. Nothing here
imports streamlit (it runs in its own process), so ``import mpo`` and the rest
of the command line work without the ``dashboard`` extra; without it the
command is one ``error:`` line naming ``pip install 'mpo[dashboard]'``.
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from mpo.cli_errors import one_line_errors
from mpo.dashboard.errors import DashboardError

__all__ = ["APP", "DEFAULT_PORT", "register", "streamlit_command"]

logger = logging.getLogger(__name__)

#: The Streamlit script that ``streamlit run`` executes.
APP = Path(__file__).with_name("app.py")
DEFAULT_PORT = 8501


def require_streamlit() -> None:
    """Raise :class:`DashboardError` (with the install command) unless streamlit is importable."""
    try:
        found = importlib.util.find_spec("streamlit") is not None
    except (ImportError, ValueError):  # a broken install, or sys.modules["streamlit"] = None
        found = False
    if not found:
        raise DashboardError(
            "mpo dashboard needs streamlit, an optional extra: pip install 'mpo[dashboard]' "
            "(in a clone: pip install -e '.[dashboard]')."
        )


def streamlit_command(
    runs_dir: str | Path,
    *,
    port: int = DEFAULT_PORT,
    address: str = "localhost",
    headless: bool = False,
) -> list[str]:
    """The ``python -m streamlit run app.py ... -- RUNS_DIR`` command line of the dashboard.

    Raises
    ------
    DashboardError
        When streamlit is not installed, ``port`` is not in 1..65535, or
        ``runs_dir`` is not a folder.
    """
    require_streamlit()
    if isinstance(port, bool) or not 1 <= int(port) <= 65535:
        raise DashboardError(f"--port must be in 1..65535, got {port=}.")
    root = Path(runs_dir).expanduser()
    if not root.is_dir():
        what = "is a file" if root.exists() else "does not exist"
        raise DashboardError(
            f"the runs folder {str(root)!r} {what}: pass the folder your runs were written to "
            "(`--out` of mpo backtest/compare/tune/train; default runs/)."
        )
    return [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.port", str(int(port)),
        "--server.address", address,
        "--server.headless", "true" if headless else "false",
        "--browser.gatherUsageStats", "false",  # offline by default, as the rest of mpo
        "--", str(root.resolve()),
    ]  # fmt: skip


def register(app: typer.Typer) -> None:
    """Add ``mpo dashboard`` to ``app``."""

    @app.command()
    def dashboard(
        runs_dir: Annotated[
            Path, typer.Argument(help="Folder of run folders (or one run folder).")
        ] = Path("runs"),
        port: Annotated[int, typer.Option("--port", help="Port to serve on.")] = DEFAULT_PORT,
        address: Annotated[
            str, typer.Option("--address", help="Address to listen on (0.0.0.0: every interface).")
        ] = "localhost",
        headless: Annotated[
            bool, typer.Option("--headless", help="Do not open a browser (servers, CI).")
        ] = False,
    ) -> None:
        """Browse run folders in a browser: backtests, tuning, training, walk-forward."""
        with one_line_errors():
            cmd = streamlit_command(runs_dir, port=port, address=address, headless=headless)
        typer.echo(f"mpo dashboard of {runs_dir} on http://{address}:{port} (Ctrl-C stops it)")
        logger.info("running %s", " ".join(cmd))
        proc = subprocess.Popen(cmd)
        try:
            code = proc.wait()
        except KeyboardInterrupt:  # streamlit got the same SIGINT: let it finish
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            code = 0
        raise typer.Exit(code=code)
