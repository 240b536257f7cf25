"""``mpo dashboard``: browse run folders of every kind in a browser (optional extra).

- :mod:`mpo.dashboard.runs`: find run folders (backtest, compare, tune, train,
  walk-forward) and read them into plain pandas objects; no streamlit, unit-tested;
- :mod:`mpo.dashboard.frames`: the tables and series the pages show (equity,
  drawdowns, costs, the tuning history, training curves), from those objects;
- :mod:`mpo.dashboard.app`: the Streamlit script (``streamlit run``);
- :mod:`mpo.dashboard.cli`: ``register(app)`` adds the ``dashboard`` command;
- :mod:`mpo.dashboard.errors`: :class:`DashboardError`, :class:`RunFolderError`.

Streamlit is imported only by the script and, when it launches it, by the
command, so ``import mpo`` works without it (``pip install 'mpo[dashboard]'``).
The dashboard only reads: runs write data, the dashboard draws it (STYLE.md 15).
"""

from mpo.dashboard.errors import DashboardError, RunFolderError
from mpo.dashboard.runs import KINDS, RunFolder, discover_runs, load_run

__all__ = ["KINDS", "DashboardError", "RunFolder", "RunFolderError", "discover_runs", "load_run"]
