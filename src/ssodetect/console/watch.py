"""Watch folders: a visit that has landed completely is queued as a run (and its alert sent by the run).

Each immediate subdirectory of the watched folder is one visit (a field's exposures, however many CCDs each).
A visit is complete when its frames make ``exposures`` exposures (their headers read: a file still being
written does not count) and no file in it has changed for ``settle`` seconds; it is then queued once, as
``ssodetect run VISIT --out ROOT/VISIT`` with the watch's settings (configuration file: its ``[alerts]`` are the
notification; reference catalogue; station).  A visit still incomplete after ``timeout`` seconds is reported
once (a warning, and a job of status ``incomplete`` with the count seen) and not run.
"""
from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from datetime import datetime
from pathlib import Path

from ssodetect.config import IOConfig
from ssodetect.errors import SSODetectError
from ssodetect.io import find_inputs, group_exposures, scan_file
from ssodetect.console.worker import PLAIN_NAME, PLAIN_NAME_RULE
from ssodetect.pipeline.registry import Registry, utc_now

log = logging.getLogger(__name__)

__all__ = ["Watcher", "visit_state", "visit_files"]


def visit_state(folder: Path, io: IOConfig) -> tuple[int, float, int]:
    """``(exposures, last change, unreadable)`` of a visit folder: the exposures its readable frames make with all
    their CCDs (as many as its most complete exposure), the newest modification time [s since the epoch] of its
    files (0 when it holds none), and how many of its files cannot be read yet (being written, or broken)."""
    n, newest, unreadable = visit_files(folder, io)
    return n, newest, len(unreadable)


def visit_files(folder: Path, io: IOConfig) -> tuple[int, float, list[str]]:
    """:func:`visit_state` with the unreadable files named (the folder itself when its files cannot be listed)."""
    try:
        paths = find_inputs([folder])
    except SSODetectError as exc:  # e.g. a FIFO or device among its files: a visit that cannot be run as it is
        try:
            if not any(folder.iterdir()):  # an empty folder: a visit whose files have not landed yet, nothing broken
                return 0, folder.stat().st_mtime, []
        except OSError:
            pass
        # the error names the offending entry first ("PATH: problem"); the folder when it does not
        text, said = str(exc), str(folder)
        if text.startswith(said):
            said += text[len(said):].split(": ", 1)[0]
        try:
            return 0, folder.stat().st_mtime, [said]
        except OSError:
            return 0, 0.0, [said]
    newest = max((os.stat(p).st_mtime for p in paths), default=0.0)
    refs, unreadable = [], []
    for path in paths:
        try:
            refs += [r for r in scan_file(path, io, warn=False) if r.frame_type == "light"]
        except SSODetectError:
            unreadable.append(str(path))
    try:
        exposures = group_exposures(refs, io, min_exposures=1) if refs else []
    except SSODetectError:
        return 0, newest, unreadable
    # an exposure counts once all its CCDs have landed (as many as the most complete exposure has)
    full = max((len(e.ccds) for e in exposures), default=0)
    return sum(len(e.ccds) == full for e in exposures), newest, unreadable


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _named(paths: list[str]) -> str:
    """The first of ``paths`` and how many others (a message stays one line however many files are broken)."""
    return paths[0] + (f" and {len(paths) - 1} other(s)" if len(paths) > 1 else "")


class Watcher:
    """Queue the complete visits of ``inbox`` as runs into ``root`` (see the module's description).

    Parameters
    ----------
    inbox, root : Path
    exposures : int
        Exposures that make a visit complete.
    settle : float
        Seconds without a change before a complete visit is queued.
    timeout : float
        Seconds after a visit's first file before an incomplete one is reported.
    run_args : list of str
        Further ``ssodetect run`` arguments (``--config``, ``--refcat``, ``--station``...).
    poll : float
        Seconds between looks.
    """

    def __init__(self, inbox: Path, root: Path, *, exposures: int = 4, settle: float = 5.0, timeout: float = 3600.0,
                 run_args: list[str] | None = None, poll: float = 1.0, io: IOConfig | None = None):
        # absolute: the runs execute with the root as their working directory
        self.inbox, self.root = Path(os.path.realpath(inbox)), Path(os.path.realpath(root))
        if not self.inbox.is_dir():
            raise SSODetectError(f"{inbox}: not a directory to watch")
        self.exposures, self.settle, self.timeout, self.poll = int(exposures), float(settle), float(timeout), float(poll)
        self.run_args = list(run_args or [])
        self.io = io or IOConfig()
        self._first_seen: dict[str, float] = {}
        #: Visits seen at the last look but not queued, and why (an incomplete visit, unreadable files, settling).
        self.waiting: dict[str, str] = {}
        #: Warnings of the last look (folders skipped, visits given up): ``watch --once`` exits 1 after any.
        self.warned: list[str] = []
        self._told: set = set()  # changed visits already said in the log (a watch looks every second)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self, now: float | None = None) -> list[int]:
        """One look at the inbox: queue the visits that became complete; returns the new job ids."""
        now = time.time() if now is None else now
        new = []
        self.waiting, self.warned = {}, []
        with Registry(self.root) as reg:
            jobs = reg.jobs(limit=1_000_000)  # newest first: a name's latest job is the one kept
            taken: dict[str, dict] = {}
            for j in jobs:
                taken.setdefault(j["outdir"], j)
            for folder in sorted(p for p in self.inbox.iterdir() if p.is_dir() and not p.name.startswith(".")):
                name = folder.name
                if name in taken:
                    self._changed_since(folder, taken[name])
                    continue
                if not PLAIN_NAME.match(name):
                    self.warned.append(f"{str(folder)!r}: a visit folder's name must be {PLAIN_NAME_RULE} (it "
                                       "names the run's directory): skipped")
                    log.warning("%s", self.warned[-1])
                    taken[name] = {}
                    continue
                n, newest, broken = visit_files(folder, self.io)
                unreadable = len(broken)
                if newest == 0.0:
                    continue
                first = self._first_seen.setdefault(name, now)
                if n >= self.exposures and not unreadable and now - newest >= self.settle:
                    argv = ["run", str(folder), "--out", str(self.root / name), *self.run_args,
                            "--keyword", "watch", "--keyword", f"landed={newest:.3f}"]
                    new.append(reg.enqueue(name, argv, "watch"))
                    log.info("visit %s complete (%d exposures, last file %.1f s ago): queued as job %d", name, n,
                             now - newest, new[-1])
                elif now - first <= self.timeout:
                    self.waiting[name] = (f"{n} of {self.exposures} exposures"
                                          + (f", {unreadable} file(s) unreadable (being written, or broken): "
                                             f"{_named(broken)}" if unreadable else "")
                                          + ("" if n < self.exposures or unreadable else
                                             f", the last file {now - newest:.1f} s old (settle {self.settle:g} s)"))
                else:
                    job = reg.enqueue(name, [], "watch")
                    reg.update_job(job, status="incomplete", finished_utc=utc_now(),
                                   message=f"incomplete visit: {n} of {self.exposures} exposures"
                                           + (f" ({unreadable} file(s) unreadable: {_named(broken)})"
                                              if unreadable else "")
                                           + f" after {self.timeout:g} s; not run")
                    self.warned.append(f"{folder}: incomplete visit ({n} of {self.exposures} exposures after "
                                       f"{self.timeout:g} s): not run")
                    log.warning("%s", self.warned[-1])
        return new

    def _changed_since(self, folder: Path, job: dict) -> None:
        """A visit folder whose name a job of ROOT already has is never run again; if files landed in it after that
        job was queued (its ``landed=`` keyword), or the job is not this inbox's visit, say so once per change (a
        warning: ``watch --once`` exits 1) instead of skipping it silently (campaign 30: new frames added to a run
        visit, or another night copied under its name, were never processed, exit 0)."""
        if not job:  # (a name refused at this look)
            return
        try:
            argv = json.loads(job.get("argv") or "[]")
        except ValueError:
            argv = []
        landed = next((float(a.split("=", 1)[1]) for a in argv if isinstance(a, str) and a.startswith("landed=")
                       and _is_number(a.split("=", 1)[1])), None)
        ours = len(argv) > 1 and argv[0] == "run" and os.path.realpath(str(argv[1])) == str(folder)
        if not argv and job.get("keywords") == "watch":  # a visit given up as incomplete: when it was
            ours = True
            try:
                landed = datetime.fromisoformat(str(job.get("finished_utc"))).timestamp()
            except ValueError:
                landed = None
        try:  # the files a visit's run reads (as visit_files sees them; no header is read at every look)
            newest = max((os.stat(p).st_mtime for p in find_inputs([folder])), default=0.0) if ours else 0.0
        except (SSODetectError, OSError):
            newest = float("inf")
        if ours and landed is not None and newest <= landed + 1e-3:
            return
        said = (f"{folder}: files changed after its run (job {job['id']}, {job.get('status', '')}): not run again; "
                "put new frames in a folder of a new name" if ours else
                f"{folder}: ROOT already has a run named {folder.name!r} (job {job['id']}): not run; rename the folder")
        key = (folder.name, newest, int(job["id"]))
        if key not in self._told:
            self._told.add(key)
            log.warning("%s", said)
        self.warned.append(said)

    def start(self) -> None:
        def loop():
            while not self._stop.is_set():
                try:
                    self.check()
                except Exception:  # a bad look must not end the watch
                    log.exception("watching %s", self.inbox)
                self._stop.wait(self.poll)

        self._thread = threading.Thread(target=loop, name="ssodetect-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
