"""One interface for running per-CCD work: serially or on Dask.

``SerialExecutor`` runs in-process; ``DaskExecutor`` uses a ``LocalCluster`` of
``workers`` processes or connects to a running scheduler.  Results come back
in the order of the inputs, so a run gives identical outputs either way.
"""
from __future__ import annotations

import logging
from typing import Callable, Iterable

from tqdm import tqdm

__all__ = ["SerialExecutor", "DaskExecutor", "make_executor"]

log = logging.getLogger(__name__)


class SerialExecutor:
    """Run tasks one after another in this process."""

    description = "serial"

    def map(self, fn: Callable, items: Iterable, *, progress: bool = False, desc: str = "") -> list:
        items = list(items)
        return [fn(item) for item in tqdm(items, desc=desc, unit="ccd", disable=not progress, leave=False)]

    def close(self) -> None:
        return None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class DaskExecutor:
    """Run tasks on Dask workers.

    Parameters
    ----------
    workers : int, optional
        Start a ``LocalCluster`` with this many single-threaded worker processes.
    address : str, optional
        Connect to a running scheduler instead (``tcp://host:port``).
    """

    def __init__(self, *, workers: int | None = None, address: str | None = None):
        try:
            from dask.distributed import Client, LocalCluster
        except ImportError as exc:  # the [dask] extra is missing
            raise RuntimeError("Dask execution needs the 'dask' extra: pip install 'ssodetect[dask]'") from exc
        self._cluster = None
        if address:
            self.client = Client(address, timeout="30s")
            self.description = f"dask scheduler {address}"
        else:
            self._cluster = LocalCluster(
                n_workers=workers or 1, threads_per_worker=1, processes=True, dashboard_address=None
            )
            self.client = Client(self._cluster)
            self.description = f"dask LocalCluster ({workers} workers)"

    def map(self, fn: Callable, items: Iterable, *, progress: bool = False, desc: str = "") -> list:
        from dask.distributed import as_completed

        items = list(items)
        futures = self.client.map(fn, items, pure=False)
        with tqdm(total=len(futures), desc=desc, unit="ccd", disable=not progress, leave=False) as bar:
            for _ in as_completed(futures):
                bar.update(1)
        return self.client.gather(futures)

    def close(self) -> None:
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def make_executor(*, workers: int = 1, scheduler: str = ""):
    """Serial for one worker and no scheduler, Dask otherwise."""
    if scheduler:
        return DaskExecutor(address=scheduler)
    if workers > 1:
        return DaskExecutor(workers=workers)
    return SerialExecutor()
