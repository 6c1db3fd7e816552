"""Run a study's independent points on this machine's cores (joblib) or on a Dask cluster."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator


def run_points(fn: Callable, points: list, jobs: int = 1, dask: str | None = None) -> Iterator:
    """fn(point) for every point, yielded as each finishes (in any order; a failing point raises).

    `dask`: None runs on `jobs` local processes; "local" starts a Dask cluster of `jobs` workers on
    127.0.0.1 (and stops it); any other value is a running Dask scheduler's address
    (tcp://HOST:8786). Results come back to the caller, so workers need no shared filesystem."""
    if not points:
        return
    if dask is None:
        from joblib import Parallel, delayed

        yield from Parallel(n_jobs=jobs, return_as="generator_unordered")(delayed(fn)(p) for p in points)
        return
    import cloudpickle
    from distributed import Client, LocalCluster, as_completed

    mod = sys.modules.get(fn.__module__)
    if mod is not None and mod.__name__ != "__main__" and not mod.__name__.startswith("netkv."):
        cloudpickle.register_pickle_by_value(mod)  # a script's module: workers cannot import it
    cluster = None
    if dask == "local":
        cluster = LocalCluster(
            n_workers=jobs, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        )
        dask = cluster.scheduler_address
    client = Client(dask)
    try:
        print(f"dask scheduler {dask}: {len(client.scheduler_info()['workers'])} workers", file=sys.stderr)
        for fut in as_completed(client.map(fn, points, pure=False)):
            yield fut.result()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
