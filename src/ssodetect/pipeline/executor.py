"""One interface for running per-CCD work: serially or on Dask.

``SerialExecutor`` runs in-process; ``DaskExecutor`` uses a ``LocalCluster`` of
``workers`` processes or connects to a running scheduler.  Results come back
in the order of the inputs, so a run gives identical outputs either way.

Serial runs and local Dask clusters keep freed memory in the heap while they run (:data:`HEAP_ENVIRONMENT`): a 4k CCD's
per-step arrays are 17-68 MB each, which glibc otherwise maps fresh and returns at every step, and on
virtual machines the page faults of re-mapping them cost ~0.5 s of system time per CCD image (4.45 ->
3.9 s per 4096x4132 CCD image on the development machine, peak memory unchanged).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import socket
import warnings
from collections import namedtuple
from importlib.util import find_spec
from typing import Callable, Iterable
from urllib.parse import urlsplit

from tqdm import tqdm

from ssodetect.errors import ConfigError

#: The settings :func:`require_extras` reads (a Config's ``execution`` section has them).
Config_like = namedtuple("Config_like", "workers scheduler")


#: Local worker processes allowed per CPU of the machine (more only queue for the CPUs, each with its own memory).
MAX_WORKERS_PER_CPU = 4


def require_extras(execution, *, astroscrappy: bool = False) -> None:
    """Check, before any work, that the optional packages the settings need are installed (and workers are few enough:
    at most :data:`MAX_WORKERS_PER_CPU` per CPU).

    Parameters
    ----------
    execution
        ``workers`` and ``scheduler`` (``[execution]``): Dask is needed for more than one worker or a scheduler.
    astroscrappy : bool
        ``[clean] astroscrappy`` is on.

    Raises
    ------
    ConfigError
        One line naming the setting and the extra to install.
    """
    cpus = os.cpu_count() or 1
    if not execution.scheduler and execution.workers > MAX_WORKERS_PER_CPU * cpus:
        raise ConfigError(f"--workers {execution.workers}: more workers than this machine's {cpus} CPUs can run (at most "
                          f"{MAX_WORKERS_PER_CPU * cpus}; each local worker is a process with its own memory)")
    if execution.scheduler:
        _reachable(execution.scheduler)  # before any work: an address nothing listens on
    if (execution.workers > 1 or execution.scheduler) and (find_spec("dask") is None or find_spec("distributed") is None):
        raise ConfigError("--workers > 1 and --scheduler run on Dask, which is not installed: "
                          "pip install 'ssodetect[dask]' (or run with --workers 1)")
    if astroscrappy and find_spec("astroscrappy") is None:
        raise ConfigError("[clean] astroscrappy = true needs astroscrappy: pip install 'ssodetect[clean]'")

__all__ = ["HEAP_ENVIRONMENT", "SerialExecutor", "DaskExecutor", "make_executor"]

log = logging.getLogger(__name__)


#: glibc allocator settings while per-CCD work runs: no separate mappings for large blocks
#: (``MALLOC_MMAP_MAX_``), freed memory not returned to the system (``MALLOC_TRIM_THRESHOLD_``), one heap for
#: all threads (``MALLOC_ARENA_MAX``; Dask runs tasks on a worker thread, whose own arena would map large
#: blocks whatever the settings).  Set with ``mallopt`` in this process by :class:`SerialExecutor`; in the
#: environment a local Dask cluster's worker processes start with (Dask's ``pre-spawn-environ``: the arena
#: limit only works before a process's threads first allocate).  Workers of a remote scheduler keep their own
#: settings (start them with these environment variables for the same speed).
HEAP_ENVIRONMENT = {"MALLOC_MMAP_MAX_": 0, "MALLOC_TRIM_THRESHOLD_": 2**31 - 1, "MALLOC_ARENA_MAX": 1}

#: mallopt parameter numbers of glibc's malloc.h for the settings above, and glibc's defaults (restored after
#: a run; an arena maximum of 0 means glibc's own limit).
_MALLOPT = {"MALLOC_MMAP_MAX_": (-4, 65536), "MALLOC_TRIM_THRESHOLD_": (-1, 128 * 1024), "MALLOC_ARENA_MAX": (-8, 0)}


def _libc():
    """glibc through ctypes, or None on other C libraries (the settings are then left alone)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_retainers = 0  # serial executors open in this process


def _set_heap(retain: bool) -> None:
    """Apply :data:`HEAP_ENVIRONMENT` to this process (``retain``) or, when the last executor that asked
    for it closes, restore glibc's defaults and hand the retained memory back (``malloc_trim``)."""
    global _retainers
    _retainers = _retainers + 1 if retain else max(_retainers - 1, 0)
    libc = _libc()
    if libc is None or (not retain and _retainers):
        return
    for name, (param, default) in _MALLOPT.items():
        libc.mallopt(param, HEAP_ENVIRONMENT[name] if retain else default)
    if not retain:
        libc.malloc_trim(0)


class SerialExecutor:
    """Run tasks one after another in this process (with :data:`HEAP_ENVIRONMENT` until :meth:`close`)."""

    description = "serial"

    def __init__(self):
        _set_heap(True)
        self._open = True

    def map(self, fn: Callable, items: Iterable, *, progress: bool = False, desc: str = "") -> list:
        items = list(items)
        return [fn(item) for item in tqdm(items, desc=desc, unit="ccd", disable=not progress, leave=False)]

    def close(self) -> None:
        if self._open:
            self._open = False
            _set_heap(False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _reachable(address: str, timeout: float = 10.0) -> None:
    """Refuse a TCP scheduler address nothing listens on at once (Dask would retry for its whole timeout)."""
    try:
        parts = urlsplit(address if "://" in address else f"tcp://{address}")
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise ConfigError(f"dask scheduler {address!r}: not an address ({exc})") from None
    if parts.scheme in ("tcp", "tls") and (not host or not port):
        raise ConfigError(f"dask scheduler {address!r}: not an address (tcp://HOST:PORT)")
    if parts.scheme not in ("tcp", "tls"):
        return
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(f"dask scheduler {address}: cannot connect ({exc.strerror or exc})") from None


#: Seconds a Dask scheduler has to complete the connection (a listener that is not one may never answer).
CONNECT_DEADLINE = 30.0


def _connect(client_class, address: str):
    """A Dask client of ``address``, within :data:`CONNECT_DEADLINE` seconds, or a ConfigError saying why.

    The connection runs in a thread: a listener that is not a Dask scheduler may never answer (or answer bytes that
    Dask reads as a huge message), and neither may hold or crash the command."""
    import threading

    outcome: dict = {}

    def attempt():
        try:
            outcome["client"] = client_class(address, timeout=f"{CONNECT_DEADLINE:g}s")
        except BaseException as exc:  # refused, unknown host, not Dask's protocol (MemoryError reading junk)
            outcome["error"] = exc

    # a daemon thread: one stuck on a listener that never answers must not keep the command from exiting
    thread = threading.Thread(target=attempt, name="ssodetect-connect", daemon=True)
    thread.start()
    thread.join(CONNECT_DEADLINE + 5.0)
    if "client" in outcome:
        return outcome["client"]
    if "error" not in outcome:
        raise ConfigError(f"dask scheduler {address}: no Dask scheduler answered within {CONNECT_DEADLINE:g} s (is it "
                          "one?)")
    exc = outcome["error"]
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    raise ConfigError(f"dask scheduler {address}: cannot connect ({type(exc).__name__}: {detail[:200]})")


class _Collect(logging.Handler):
    """Keeps the warnings logged in a worker process while a task runs (see :class:`_Relayed`)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        record.msg, record.args = record.getMessage(), None  # arguments need not pickle
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.exc_info = None
        self.records.append(record)


class _Relayed:
    """``fn`` run on a Dask worker with the warnings it logs and the Python warnings it raises kept and sent back with
    its result, so that the run logs, shows and counts them as a serial run would (a worker's own log goes to its
    stderr, unprefixed, and to no ``run.log``; campaign 32: a CCD skipped as all NaN exited 0 on Dask, 1 serially)."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, item):
        collect = _Collect()
        root = logging.getLogger()
        root.addHandler(collect)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")  # every one sent back: the run's own filters decide what is said
                result = self.fn(item)
        finally:
            root.removeHandler(collect)
        raised = [(str(w.message), w.category, w.filename, w.lineno) for w in caught]
        return result, collect.records, raised


def relay(records: list, raised: list) -> None:
    """Log and raise again, in this process, what a worker's task logged and raised (:class:`_Relayed`)."""
    for record in records:
        logging.getLogger(record.name).handle(record)
    for message, category, filename, lineno in raised:
        warnings.warn_explicit(message, category, filename, lineno)


class DaskExecutor:
    """Run tasks on Dask workers.

    Parameters
    ----------
    workers : int, optional
        Start a ``LocalCluster`` with this many single-threaded worker processes (with
        :data:`HEAP_ENVIRONMENT`).
    address : str, optional
        Connect to a running scheduler instead (``tcp://host:port``).
    """

    def __init__(self, *, workers: int | None = None, address: str | None = None):
        require_extras(Config_like(workers or 1, address or ""))
        from dask.distributed import Client, LocalCluster
        self._cluster = None
        if address:
            _reachable(address)
            self.client = _connect(Client, address)
            self.description = f"dask scheduler {address}"
        else:
            import dask

            # the workers' environment at their start (also for workers that replace a dead one); Dask sets
            # it in this process to spawn them: this process's own environment is restored afterwards
            saved = dict(os.environ)
            environ = {**dask.config.get("distributed.nanny.pre-spawn-environ", default={}),
                       **{name: str(value) for name, value in HEAP_ENVIRONMENT.items()}}
            try:
                with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
                    self._cluster = LocalCluster(
                        n_workers=workers or 1, threads_per_worker=1, processes=True, dashboard_address=":0",  # any free port
                    )
            finally:
                os.environ.clear()
                os.environ.update(saved)
            self.client = Client(self._cluster)
            self.description = f"dask LocalCluster ({workers} workers)"

    def map(self, fn: Callable, items: Iterable, *, progress: bool = False, desc: str = "") -> list:
        from dask.distributed import as_completed

        items = list(items)
        futures = self.client.map(_Relayed(fn), items, pure=False)
        with tqdm(total=len(futures), desc=desc, unit="ccd", disable=not progress, leave=False) as bar:
            for _ in as_completed(futures):
                bar.update(1)
        results = []
        for result, records, raised in self.client.gather(futures):  # in the inputs' order, as a serial run says them
            relay(records, raised)
            results.append(result)
        return results

    def close(self) -> None:
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def make_executor(*, workers: int = 1, scheduler: str = ""):
    """Serial for one worker and no scheduler, Dask otherwise.

    Raises ConfigError for settings :func:`require_extras` refuses, or an unreachable scheduler.
    """
    require_extras(Config_like(workers, scheduler))
    if scheduler:
        return DaskExecutor(address=scheduler)
    if workers > 1:
        return DaskExecutor(workers=workers)
    return SerialExecutor()
