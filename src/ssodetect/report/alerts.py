"""Alerts: a JSON document for the moving objects a run could not identify, and its delivery.

:func:`alert_document` builds the document from a run's output directory (its
ADES file, objects table and cutouts); :func:`deliver_alert` hands it to a
user-given command and/or POSTs it to a URL, with retries and time limits, and
never raises: a receiver that is down costs at most
``(retries + 1) * timeout + backoff * (2**retries - 1)`` seconds and a warning.
"""
from __future__ import annotations

import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
from astropy.table import Table

from ssodetect.config import AlertConfig
from ssodetect.report.ades import read_ades
from ssodetect.report.cutouts import INDEX_NAME, cutout_objects

__all__ = ["ALERT_SCHEMA", "alert_document", "write_alert", "deliver_alert"]

log = logging.getLogger(__name__)

#: Bytes of a receiver's answer read (its status line and headers are what counts).
MAX_RESPONSE_BYTES = 65536

#: Identifies the document's layout (``schema`` field).
ALERT_SCHEMA = "ssodetect-alert/2"


def alert_document(outdir: str | Path, *, run_id: str = "", obs_id: str = "") -> dict | None:
    """The alert for the unidentified moving objects of a run's outputs in ``outdir``; None when there are none.

    Parameters
    ----------
    outdir : path
        A run's output (or staging) directory: ``objects.ecsv``, ``observations.psv``, ``cutouts.fits``.
    run_id, obs_id : str
        Identifiers recorded in the document.

    Returns
    -------
    dict or None
        ``schema``, ``run_id``, ``obs_id``, ``created_utc``, ``n_objects``, and per object ``object``,
        ``rate`` [arcsec/h], ``pa`` [deg], ``mag``, ``n_obs``, ``kind``, ``ades`` (its ADES optical rows as
        dicts of strings, as in ``observations.psv``; empty for positions on a relative WCS, which ADES does
        not carry) and ``cutouts`` (file and HDU name of its image cube, and of the index table whose rows
        with its name describe the cube's planes in order).
    """
    outdir = Path(outdir)
    objects = Table.read(outdir / "objects.ecsv", format="ascii.ecsv")
    if len(objects) == 0:
        return None
    if "designation" in objects.colnames:  # empty designations read back as masked values
        objects = objects[[np.ma.is_masked(d) or not str(d).strip() for d in objects["designation"]]]
    unidentified = objects
    if len(unidentified) == 0:
        return None
    rows: dict[str, list] = {}
    psv = outdir / "observations.psv"
    if psv.exists():
        for _, records in read_ades(psv):
            for rec in records:
                rows.setdefault(rec.get("trkSub", ""), []).append(rec)
    stamps = cutout_objects(outdir / "cutouts.fits")
    entries = []
    for row in unidentified:
        name = str(row["object"])
        entries.append({
            "object": name,
            "kind": str(row["kind"]),
            "n_obs": int(row["n_obs"]),
            "rate": _num(row["rate"]),
            "pa": _num(row["pa"]),
            "mag": _num(row["mag"]),
            "ades": rows.get(name, []),
            "cutouts": ({"file": str((outdir / "cutouts.fits").name), "hdu": name, "index_hdu": INDEX_NAME}
                        if name in stamps else None),
        })
    return {
        "schema": ALERT_SCHEMA,
        "run_id": run_id,
        "obs_id": obs_id,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "n_objects": len(entries),
        "objects": entries,
    }


def _num(value) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def deliver_alert(path: str | Path, config: AlertConfig) -> bool:
    """Run ``config.command`` on the alert file and/or POST it to ``config.url``; True when all succeeded.

    Each delivery is tried ``1 + config.retries`` times with a doubling wait; failures are logged as
    warnings, never raised.  ``config.timeout`` is a deadline for the whole attempt, not per read: a
    receiver that answers one byte at a time is cut off at it, and a command still running at it is ended
    with its whole process group (children included).
    """
    path = Path(path)
    ok = True
    if config.command:
        argv = [*config.command, str(path)]
        ok &= _retry(lambda: _run_command(argv, path, config.timeout), f"alert command {argv[0]}", config)
    if config.url:
        payload = path.read_bytes()
        ok &= _retry(lambda: _post(config.url, payload, config.timeout), f"alert POST to {config.url}", config)
    return ok


def _retry(attempt, what: str, config: AlertConfig) -> bool:
    wait = config.backoff
    for k in range(config.retries + 1):
        try:
            attempt()
            log.info("%s delivered", what)
            return True
        except Exception as exc:  # anything the receiver does wrong is logged, never raised
            last = exc
            if k < config.retries:
                log.info("%s failed (%s); retry %d of %d in %.1f s", what, exc, k + 1, config.retries, wait)
                time.sleep(wait)
                wait *= 2.0
    log.warning("%s failed after %d attempts: %s", what, config.retries + 1, last)
    return False


#: Runs the alert command as a child subreaper (Linux): descendants that leave its process group (setsid, double
#: fork) are re-parented to it, and at the deadline, or when the command ends, every one left is killed.
_REAPER = r"""
import ctypes, os, signal, subprocess, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
try:
    child = subprocess.Popen(sys.argv[2:])
except OSError as exc:
    sys.stderr.write(f"cannot start {sys.argv[2]!r}: {exc.strerror or exc}\n")
    sys.exit(127)
def children():
    me, found = str(os.getpid()), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me and fields[0] != "Z":
                found.append(int(entry))
    return found
def reap(sig):
    for _ in range(50):
        pids = children()
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            return
        time.sleep(0.02)
signal.signal(signal.SIGTERM, lambda *a: (reap(signal.SIGKILL), os._exit(143)))
try:
    code = child.wait(timeout=float(sys.argv[1]))
except subprocess.TimeoutExpired:
    code = 124
reap(signal.SIGKILL)
sys.exit(code)
"""


#: Bytes of an alert command's error output read back for the warning (its last line is shown).
MAX_COMMAND_MESSAGE = 4096


def _run_command(argv: list[str], path: Path, timeout: float) -> None:
    """Run the alert command in its own process group (on Linux under a subreaper that also ends descendants
    which left the group); at ``timeout`` everything it started is terminated (then killed)."""
    env = {**os.environ, "SSODETECT_ALERT": str(path)}
    if sys.platform.startswith("linux"):
        argv = [sys.executable, "-c", _REAPER, repr(float(timeout)), *argv]
    reaper = sys.platform.startswith("linux")
    # its output goes nowhere and its messages to a file read back in part: a command printing without end
    # costs no memory
    with tempfile.TemporaryFile() as errors:
        try:
            process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=errors, start_new_session=True)
        except OSError as exc:
            raise RuntimeError(f"cannot start {argv[0]!r}: {exc.strerror or exc}") from None
        try:
            # the subreaper ends the command at the deadline itself; this one is the backstop
            process.wait(timeout=timeout + (1.0 if reaper else 0.0))
        except subprocess.TimeoutExpired:
            _end_group(process)
            raise TimeoutError(f"still running after {timeout:g} s; its process group was ended") from None
        except BaseException:
            _end_group(process)
            raise
        _end_leftovers(process)
        if process.returncode == 124 and reaper:
            raise TimeoutError(f"still running after {timeout:g} s; it and everything it started were ended")
        if process.returncode != 0:
            errors.seek(0)
            head = errors.read(MAX_COMMAND_MESSAGE).decode(errors="replace").strip()
            last = head.splitlines()[-1] if head else ""  # one line, never a page (or a traceback)
            raise RuntimeError(f"exit status {process.returncode}" + (f": {last[:200]}" if last else ""))


def _end_leftovers(process: subprocess.Popen) -> None:
    """After the command's leader exited: SIGKILL whatever is left in its process group (the subreaper ends the
    command's descendants itself, unless the command killed it: then the group's members would run on)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def _end_group(process: subprocess.Popen, grace: float = 1.0) -> None:
    """SIGTERM to the command's process group, SIGKILL after ``grace`` seconds if anything is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader has exited; children of the group may still run
            os.killpg(process.pid, 0)
        except (ProcessLookupError, PermissionError):
            break
    if process.poll() is None:
        process.kill()
        process.wait()


def _post(url: str, payload: bytes, timeout: float) -> None:
    """POST ``payload``; the whole exchange (connect, send, status, body) must end within ``timeout`` seconds."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url}")
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = kind(parts.hostname, parts.port, timeout=timeout)
    expired = threading.Event()

    def cut_off() -> None:
        expired.set()
        sock = connection.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    timer = threading.Timer(timeout, cut_off)
    timer.daemon = True
    timer.start()
    try:
        connection.connect()
        if expired.is_set():
            raise TimeoutError(f"no connection within {timeout:g} s")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection.request("POST", target, body=payload,
                           headers={"Content-Type": "application/json", "User-Agent": "ssodetect"})
        response = connection.getresponse()
        response.read(MAX_RESPONSE_BYTES)  # the status is the answer; a receiver's long body is not kept in memory
        if expired.is_set():
            raise TimeoutError(f"no complete answer within {timeout:g} s")
        if not 200 <= response.status < 300:
            raise RuntimeError(f"HTTP {response.status} {response.reason}")
    except (OSError, http.client.HTTPException) as exc:
        if expired.is_set():
            raise TimeoutError(f"no complete answer within {timeout:g} s") from None
        raise exc
    finally:
        timer.cancel()
        connection.close()


def write_alert(outdir: str | Path, target: str | Path, **ids) -> bool:
    """Write :func:`alert_document` of ``outdir`` to ``target`` as JSON; False (nothing written) when there is
    nothing to alert."""
    document = alert_document(outdir, **ids)
    if document is None:
        return False
    Path(target).write_text(json.dumps(document, indent=2))
    return True
