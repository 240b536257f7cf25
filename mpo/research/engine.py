"""The walk-forward task graph on ``dask.distributed`` (the only module that talks to Dask).

``--workers K`` starts a local cluster of ``K`` single-threaded worker
processes; ``--scheduler tcp://HOST:PORT`` connects to a running one (started
with ``dask scheduler`` and ``dask worker tcp://HOST:PORT --nthreads 1`` on
each machine, all with mpo installed and the run folder on a shared path).
Each universe's data are scattered to the workers once; fit tasks run first,
each stitched run as soon as its spec's fits are done. Finished tasks
(result files with the same identity) are not submitted again.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from mpo.errors import MpoError, ResearchError
from mpo.research.tasks import FitTask, StitchTask, run_fit, run_stitch

__all__ = ["GraphResult", "connect", "run_graph"]

logger = logging.getLogger(__name__)

#: Seconds to wait for a scheduler to answer.
CONNECT_TIMEOUT = 10


def _redact(address: str) -> str:
    from mpo.tuning.storage import redact

    return redact(address)


@contextlib.contextmanager
def connect(workers: int = 1, scheduler: str | None = None) -> Iterator:
    """A ``distributed.Client``: a new local cluster of ``workers`` processes, or ``scheduler``'s.

    Raises
    ------
    ResearchError
        ``workers < 1``, or the scheduler cannot be reached (its address shown
        with any password masked).
    """
    from distributed import Client, LocalCluster

    if scheduler is None and (isinstance(workers, bool) or int(workers) < 1):
        raise ResearchError(f"--workers must be >= 1, got {workers!r}.")
    if scheduler is not None:
        if not isinstance(scheduler, str) or "://" not in scheduler:
            raise ResearchError(
                f"--scheduler {scheduler!r} is not an address: give tcp://HOST:PORT of a "
                "running `dask scheduler`."
            )
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT)
        except ValueError:
            raise ResearchError(
                f"--scheduler {_redact(scheduler)} is not an address Dask reads: give "
                "tcp://HOST:PORT (no user or password; secure a cluster with TLS, "
                "`dask scheduler --tls-...`)."
            ) from None
        except (OSError, TimeoutError) as exc:
            raise ResearchError(
                f"cannot reach the Dask scheduler at {_redact(scheduler)} within "
                f"{CONNECT_TIMEOUT} s ({type(exc).__name__}); start it with `dask scheduler` "
                "and workers with `dask worker ADDRESS --nthreads 1`, or drop --scheduler to "
                "run a local cluster."
            ) from None
        try:
            n = len(client.scheduler_info().get("workers", {}))
            if n == 0:
                logger.warning(
                    "scheduler %s has no workers yet; tasks wait for one", _redact(scheduler)
                )
            yield client
        finally:
            client.close()
        return
    logging.getLogger("distributed").setLevel(logging.WARNING)  # its INFO lines drown ours
    cpus = os.cpu_count() or 1
    if workers > cpus:
        logger.warning("%d workers on %d cores: tasks will compete for the cores", workers, cpus)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # inherited by the worker processes
    with (
        LocalCluster(
            n_workers=int(workers),
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",  # no fixed port: another run may hold 8787
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


@dataclass
class GraphResult:
    """What the graph produced: result dicts by task key, failure messages by task key."""

    fits: dict[str, dict] = field(default_factory=dict)
    stitched: dict[str, dict] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    skipped: int = 0
    ran: int = 0


def _reason(exc: BaseException) -> str:
    if isinstance(exc, MpoError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def run_graph(
    client,
    markets: dict,
    fits: list[FitTask],
    stitches: list[StitchTask],
    *,
    progress: bool = True,
) -> GraphResult:
    """Run ``fits`` and ``stitches`` on ``client``; ``markets`` maps universe -> MarketData.

    A failed task is recorded (with the reason) and its stitched run is not
    attempted; every other task runs on.
    """
    from distributed import as_completed

    out = GraphResult()

    def pending(tasks, finished: dict) -> list:
        todo = []
        for t in tasks:
            done = t.done()
            if done is None:
                todo.append(t)
            else:
                finished[t.key] = done
        return todo

    todo_fits, todo_stitch = pending(fits, out.fits), pending(stitches, out.stitched)
    out.skipped = len(fits) + len(stitches) - len(todo_fits) - len(todo_stitch)
    if out.skipped:
        logger.warning(
            "%d of %d tasks finished in an earlier run: skipped", out.skipped,
            len(fits) + len(stitches),
        )  # fmt: skip
    total = len(todo_fits) + len(todo_stitch)
    if not total:
        return out
    needed = {t.universe for t in todo_fits} | {s.universe for s in todo_stitch}
    scattered = {u: client.scatter(markets[u], broadcast=True) for u in sorted(needed)}
    futures = {}
    for t in todo_fits:
        futures[t.key] = client.submit(
            run_fit, t, scattered[t.universe], key=f"{t.key}#{t.identity}", pure=False
        )
    for s in todo_stitch:
        deps = [futures.get(k, out.fits.get(k)) for k in s.fit_keys]
        futures[s.key] = client.submit(
            run_stitch, s, scattered[s.universe], *deps, key=f"{s.key}#{s.identity}", pure=False
        )
    kind = {f.key: "fit" for f in todo_fits} | {s.key: "stitch" for s in todo_stitch}
    by_future = {fut.key: k for k, fut in futures.items()}
    bar = tqdm(total=total, desc="tasks", unit="task", disable=not progress)
    try:
        for fut in as_completed(list(futures.values())):
            key = by_future[fut.key]
            if fut.status == "error":
                exc = fut.exception()
                out.failures[key] = _reason(exc)
                logger.error("%s failed: %s", key, out.failures[key])
            elif fut.status == "cancelled":
                out.failures[key] = "cancelled"
            else:
                (out.fits if kind[key] == "fit" else out.stitched)[key] = fut.result()
                out.ran += 1
            bar.update(1)
    except BaseException:
        client.cancel(list(futures.values()))
        raise
    finally:
        bar.close()
    return out
