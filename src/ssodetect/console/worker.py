"""The console's workers: queued runs executed as ``ssodetect`` processes, out of the web process.

Each worker is a thread that claims the oldest queued job from the registry (:mod:`ssodetect.pipeline.registry`),
starts ``python -m ssodetect.cli ARGS`` in its own session (its output in ``ROOT/.ssodetect-console/jobs/ID.log``),
waits for it and records its end; the run itself commits its directory whole, so a cancelled or interrupted job
leaves the previous run (or nothing).  A restarted console marks the jobs that were running as interrupted.
"""
from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from ssodetect.pipeline.registry import Registry, utc_now

log = logging.getLogger(__name__)

__all__ = ["Workers", "CONSOLE_DIR", "PLAIN_NAME", "PLAIN_NAME_RULE", "job_log"]

#: The console's own files under the root (job logs).
CONSOLE_DIR = ".ssodetect-console"
#: A run or visit directory name the console and the watch accept: plain, no separators, no leading dot.
PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
#: :data:`PLAIN_NAME`'s rule in words.
PLAIN_NAME_RULE = "up to 100 letters, digits, '.', '_' and '-', the first a letter or a digit"


def job_log(root: Path, job_id: int) -> Path:
    """Where job ``job_id``'s output goes."""
    return Path(root) / CONSOLE_DIR / "jobs" / f"{int(job_id)}.log"


#: Seconds a cancelled job's process has to end after SIGTERM before it is killed (SIGKILL).
CANCEL_GRACE_S = 30.0


class Workers:
    """``n`` threads running the queued jobs of ``root``'s registry, one process each.

    Parameters
    ----------
    root : Path
    n : int
        Runs at a time.
    poll : float
        Seconds between looks at the queue when it is empty.
    """

    def __init__(self, root: Path, n: int = 1, poll: float = 0.5):
        self.root = Path(root)
        self.n = max(1, int(n))
        self.poll = poll
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._procs: dict[int, subprocess.Popen] = {}
        self._cancelled: set[int] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        with Registry(self.root) as reg:
            n = reg.recover(alive=_alive)
        if n:
            log.warning("%d run(s) were running when the console stopped: marked interrupted", n)
        for k in range(self.n):
            thread = threading.Thread(target=self._loop, name=f"ssodetect-worker-{k}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking jobs; end the running ones (their directories stay as they were)."""
        self._stop.set()
        with self._lock:
            for job_id, proc in self._procs.items():
                self._signal(proc, signal.SIGTERM)
        for thread in self._threads:
            thread.join(timeout)

    def cancel(self, job_id: int) -> bool:
        """Cancel a queued or running job; False when it had already ended."""
        with Registry(self.root) as reg:
            job = reg.job(job_id)
            if job is None or job["status"] not in ("queued", "running"):
                return False
            if job["status"] == "queued":
                reg.update_job(job_id, status="cancelled", finished_utc=utc_now(), message="cancelled before it started")
                return True
        with self._lock:
            self._cancelled.add(int(job_id))
            proc = self._procs.get(int(job_id))
        if proc is not None:
            self._signal(proc, signal.SIGTERM)
            # a run busy inside one long library call does not see SIGTERM (a 1000 px PSF kernel kept a cancelled job
            # "running" and the worker blocked): killed after a grace; its stage and lock are cleaned by the next run
            timer = threading.Timer(CANCEL_GRACE_S, self._kill_if_running, args=(proc,))
            timer.daemon = True
            timer.start()
        return True

    def _kill_if_running(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            log.warning("job process %d still running %g s after it was cancelled: killed", proc.pid, CANCEL_GRACE_S)
            self._signal(proc, signal.SIGKILL)

    @staticmethod
    def _signal(proc: subprocess.Popen, sig) -> None:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _loop(self) -> None:
        while not self._stop.is_set():
            with Registry(self.root) as reg:
                job = reg.claim()
            if job is None:
                self._stop.wait(self.poll)
                continue
            try:
                self._run(job)
            except Exception as exc:  # the worker must survive a job's failure to start
                log.exception("job %s failed to run", job["id"])
                with Registry(self.root) as reg:
                    reg.update_job(job["id"], status="failed", finished_utc=utc_now(), message=f"{type(exc).__name__}: {exc}")

    def _run(self, job: dict) -> None:
        import json

        job_id = int(job["id"])
        path = job_log(self.root, job_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "ssodetect.cli", *json.loads(job["argv"])]
        with open(path, "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
            with self._lock:
                self._procs[job_id] = proc
            with Registry(self.root) as reg:
                reg.update_job(job_id, pid=proc.pid)
            code = proc.wait()
        with self._lock:
            self._procs.pop(job_id, None)
            cancelled = job_id in self._cancelled
        if cancelled:
            status, message = "cancelled", "cancelled while running (the output directory was left as it was)"
        elif self._stop.is_set() and code < 0:
            status, message = "interrupted", "the console stopped during the run"
        else:
            status = "done" if code in (0, 1) else "failed"
            message = {0: "", 1: "finished with warnings"}.get(code, _last_line(path))
        with Registry(self.root) as reg:
            reg.update_job(job_id, status=status, exit_code=code, finished_utc=utc_now(), message=message)
            reg.sync()  # the run's manifest enters the registry


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if line.startswith("ssodetect: ")]
    return (errors or lines or [""])[-1][:300]


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a job another console runs)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
