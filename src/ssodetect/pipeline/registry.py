"""A registry of runs in SQLite: one row per run directory, rebuilt from the runs' own ``manifest.json``.

The registry is an index, never the record: every row comes from a run's manifest (written atomically
with the run), so the database can be deleted and rebuilt at any time (:meth:`Registry.sync`).  It lives
in one file under a root directory (``ROOT/.ssodetect-registry.sqlite``); its schema carries a version
and is migrated forward on opening (a database of a newer version is refused, not altered).

Times are UTC ISO-8601 strings as the manifests write them; ``duration_s`` is ``finished - started`` [s].
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from ssodetect import safejson
from ssodetect.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["Registry", "REGISTRY_NAME", "SCHEMA_VERSION", "MAX_DEPTH", "utc_now"]

#: The registry's file under the root.
REGISTRY_NAME = ".ssodetect-registry.sqlite"
#: Directory levels below the root searched for runs.
MAX_DEPTH = 4

#: Schema migrations: entry k takes a database from version k to k + 1.
_MIGRATIONS = [
    """
    CREATE TABLE runs (
        outdir TEXT PRIMARY KEY,          -- the run directory, relative to the root (POSIX)
        run_id TEXT NOT NULL,
        obs_id TEXT NOT NULL DEFAULT '',
        started_utc TEXT NOT NULL DEFAULT '',
        finished_utc TEXT NOT NULL DEFAULT '',
        duration_s REAL,
        status TEXT NOT NULL,             -- complete | partial (stopped before the report)
        n_objects INTEGER,
        n_known INTEGER,
        n_observations INTEGER,
        warnings INTEGER NOT NULL DEFAULT 0,
        version TEXT NOT NULL DEFAULT '',
        profile TEXT NOT NULL DEFAULT '',
        command TEXT NOT NULL DEFAULT '',
        keywords TEXT NOT NULL DEFAULT '',
        manifest_mtime_ns INTEGER NOT NULL
    );
    CREATE INDEX runs_started ON runs (started_utc DESC);
    """,
    """
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        outdir TEXT NOT NULL,             -- relative to the root
        argv TEXT NOT NULL,               -- JSON list: the ssodetect command line (after 'ssodetect')
        keywords TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL,             -- queued | running | done | failed | cancelled | interrupted
        created_utc TEXT NOT NULL,
        started_utc TEXT NOT NULL DEFAULT '',
        finished_utc TEXT NOT NULL DEFAULT '',
        pid INTEGER,
        exit_code INTEGER,
        message TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX jobs_status ON jobs (status, id);
    """,
]
SCHEMA_VERSION = len(_MIGRATIONS)
#: The tables and columns the migrations make (checked on opening).
_TABLE_COLUMNS = {name: re.findall(r"^\s+([a-z_]+) [A-Z]+", body, flags=re.M)
                  for name, body in re.findall(r"CREATE TABLE (\w+) \((.*?)\n    \);", "".join(_MIGRATIONS), flags=re.S)}
#: Columns that hold numbers (a value of another type in a damaged registry is shown as unknown).
_NUMBER_COLUMNS = ("duration_s", "n_objects", "n_known", "n_observations", "warnings", "manifest_mtime_ns")


def _duration(started: str, finished: str) -> float | None:
    """Seconds from ``started`` to ``finished``; None when either is no time or the run would end before it began (a
    hand-edited manifest: ``runs`` showed a negative duration)."""
    try:
        seconds = (datetime.fromisoformat(finished) - datetime.fromisoformat(started)).total_seconds()
    except (TypeError, ValueError):
        return None
    return seconds if seconds >= 0 else None


class DamagedManifest(Exception):
    """A ``manifest.json`` that is unreadable, or a run's whose values cannot be a run's (said, not listed)."""


def _is_time(text: str) -> bool:
    try:
        datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return False
    return True


def _row(root: Path, manifest_path: Path) -> dict | None:
    """The registry row of one run directory from its manifest; None when it is another program's ``manifest.json``
    (no ``run_id`` and ``steps``).

    Raises
    ------
    DamagedManifest
        Unreadable (not JSON, nested without end) or a run's with counts that are not counts (why, in words).
    """
    try:
        manifest = safejson.read(manifest_path)
        mtime = manifest_path.stat().st_mtime_ns
    except (OSError, ValueError, RecursionError) as exc:
        raise DamagedManifest(f"unreadable ({type(exc).__name__})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("run_id"), str) or "steps" not in manifest:
        return None
    results = manifest.get("results") if isinstance(manifest.get("results"), dict) else {}
    steps = manifest.get("steps") if isinstance(manifest.get("steps"), list) else []
    complete = any(isinstance(s, dict) and s.get("step") == "report" and s.get("status") == "run" for s in steps)
    software = manifest.get("software") if isinstance(manifest.get("software"), dict) else {}
    profile = manifest.get("profile") if isinstance(manifest.get("profile"), dict) else {}
    command = manifest.get("command") if isinstance(manifest.get("command"), list) else []
    keywords = manifest.get("keywords") if isinstance(manifest.get("keywords"), list) else []
    started, finished = str(manifest.get("started_utc") or ""), str(manifest.get("finished_utc") or "")
    counts = {name: results.get(name) for name in ("n_objects", "n_known", "n_observations")}
    counts["warnings"] = manifest.get("warnings") or 0
    if not all(v is None or (isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**62)
               for v in counts.values()):
        # counts that are not counts (one of them broke the whole listing)
        raise DamagedManifest("its counts of objects, observations or warnings are not counts")
    if started and not _is_time(started):  # (campaign 33: "not a date" was listed as the newest run)
        raise DamagedManifest(f"its start time {started[:40]!r} is no time")
    if finished and not _is_time(finished):
        finished = ""
    return {
        "outdir": manifest_path.parent.relative_to(root).as_posix(), "run_id": manifest["run_id"],
        "obs_id": str(manifest.get("obs_id") or ""), "started_utc": started, "finished_utc": finished,
        "duration_s": _duration(started, finished), "status": "complete" if complete else "partial",
        "n_objects": counts["n_objects"], "n_known": counts["n_known"],
        "n_observations": counts["n_observations"], "warnings": counts["warnings"],
        "version": str(software.get("ssodetect", "")), "profile": str(profile.get("name") or ""),
        "command": " ".join(str(c) for c in command), "keywords": " ".join(str(k) for k in keywords),
        "manifest_mtime_ns": mtime,
    }


def user_registry(root: str | Path) -> Path:
    """Where ``ssodetect runs ROOT`` keeps the index of a ROOT that holds no registry of its own: the user's cache
    (``$XDG_CACHE_HOME`` or ``~/.cache``), ``ssodetect/registries/<hash of ROOT's real path>.sqlite``.  Listing runs
    writes nothing into ROOT (a directory the console or the watcher does not own is the user's)."""
    real = os.path.realpath(root)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "ssodetect" / "registries" / (hashlib.sha256(real.encode()).hexdigest()[:24] + ".sqlite")


class Registry:
    """The runs under ``root``, indexed in ``root/.ssodetect-registry.sqlite`` (or in ``path``).

    Parameters
    ----------
    root : path
        Directory whose run directories (those holding a run's ``manifest.json``, up to :data:`MAX_DEPTH`
        levels down) are registered.
    path : path, optional
        The database file, when not ``root/.ssodetect-registry.sqlite`` (see :func:`user_registry`); its folder
        is made.

    Raises
    ------
    InputError
        ``root`` is not a directory, or its registry is not a database of ours (or of a newer version).
    """

    def __init__(self, root: str | Path, path: str | Path | None = None):
        self.root = Path(os.path.realpath(root))
        self.damaged: list[tuple[Path, str]] = []  # manifests the last sync could not list, and why
        if not self.root.is_dir():
            raise InputError(f"{root}: not a directory")
        self.path = self.root / REGISTRY_NAME if path is None else Path(path)
        if str(path) == ":memory:":
            self.path = ":memory:"  # (an index for this call only)
        elif path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise InputError(f"{self.path.parent}: cannot be made for the run registry "
                                 f"({exc.strerror or exc})") from None
        if self.path != ":memory:" and (self.path.is_symlink() or (self.path.exists() and not self.path.is_file())):
            # (a link would have the database written wherever it points)
            raise InputError(f"{self.path}: not a run registry (a link or not a regular file); remove it to rebuild it")
        existed = self.path != ":memory:" and self.path.exists()
        if existed and self.path.stat().st_size == 0:  # (someone's empty file was turned into a registry)
            raise InputError(f"{self.path}: not a run registry (an empty file); remove it to rebuild it")
        try:
            self.db = sqlite3.connect(self.path, timeout=30.0)
            self.db.row_factory = sqlite3.Row
            if existed and self.db.execute("PRAGMA user_version").fetchone()[0] == 0 and self.db.execute(
                    "SELECT COUNT(*) FROM sqlite_master").fetchone()[0]:
                # another program's database: never migrated into one of ours (tables were added to it)
                raise sqlite3.DatabaseError("another database: none of the registry's tables and version")
            self._migrate()
            check = self.db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError("damaged: " + " ".join(str(check).split())[:120])
            for table, columns in _TABLE_COLUMNS.items():  # (a dropped or remade table was an internal error)
                have = {str(r[1]) for r in self.db.execute(f"PRAGMA table_info({table})")}
                lacking = [c for c in columns if c not in have]
                if lacking:
                    raise sqlite3.DatabaseError(f"its table {table} " + ("is missing" if not have else
                                                f"lacks {', '.join(lacking[:3])}"))
        except sqlite3.DatabaseError as exc:
            if getattr(self, "db", None) is not None:
                self.db.close()
            raise InputError(f"{self.path}: not a run registry ({exc}); remove it to rebuild it") from None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise InputError(f"{self.path}: registry schema {version} is newer than this version's "
                             f"({SCHEMA_VERSION}); use a newer ssodetect or remove it to rebuild it")
        for k in range(version, SCHEMA_VERSION):
            with self.db:
                self.db.executescript(_MIGRATIONS[k])
                self.db.execute(f"PRAGMA user_version = {k + 1}")
            log.info("%s: registry schema %d -> %d", self.path, k, k + 1)

    def _manifests(self) -> list[Path]:
        found = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            depth = len(Path(dirpath).relative_to(self.root).parts)
            # not into hidden directories (stages, the step cache) nor below a run (its steps/, logs/, ...)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if depth < MAX_DEPTH else []
            if "manifest.json" in filenames:
                found.append(Path(dirpath) / "manifest.json")
                dirnames[:] = []
        return found

    def sync(self) -> dict:
        """Bring the registry up to date with the run directories under the root.

        New and changed manifests (by modification time) are read; rows whose directory no longer holds a
        run's manifest are removed.  Returns counts: ``added``, ``updated``, ``removed``, ``unchanged``,
        ``unreadable`` (``manifest.json`` files that are not a run's: another program's) and ``damaged`` (not
        readable, or a run's whose counts or start time cannot be a run's: not listed; ``self.damaged`` holds their
        paths and why).
        """
        counts = {"added": 0, "updated": 0, "removed": 0, "unchanged": 0, "unreadable": 0, "damaged": 0}
        self.damaged = []
        known = {r["outdir"]: r["manifest_mtime_ns"] for r in self.db.execute("SELECT outdir, manifest_mtime_ns FROM runs")}
        seen = set()
        with self.db:
            for path in self._manifests():
                key = path.parent.relative_to(self.root).as_posix()
                try:
                    key.encode("utf-8")
                except UnicodeEncodeError:  # a folder named with bytes that are no UTF-8: no database text holds it
                    shown = key.encode("utf-8", "backslashreplace").decode("ascii", "replace")
                    log.warning("%s: a run folder whose name is not valid UTF-8 text; not listed (rename it)",
                                self.root / shown)
                    counts["unreadable"] += 1
                    continue
                try:
                    mtime = path.stat().st_mtime_ns
                except OSError:
                    continue
                if known.get(key) == mtime:
                    seen.add(key)
                    counts["unchanged"] += 1
                    continue
                try:
                    row = _row(self.root, path)
                except DamagedManifest as exc:
                    counts["damaged"] += 1
                    self.damaged.append((path, str(exc)))
                    continue
                if row is None:
                    counts["unreadable"] += 1
                    continue
                seen.add(key)
                counts["updated" if key in known else "added"] += 1
                names = ", ".join(row)
                marks = ", ".join(f":{k}" for k in row)
                self.db.execute(f"INSERT OR REPLACE INTO runs ({names}) VALUES ({marks})", row)
            gone = [k for k in known if k not in seen]
            for key in gone:
                self.db.execute("DELETE FROM runs WHERE outdir = ?", (key,))
            counts["removed"] = len(gone)
        return counts

    def rebuild(self) -> dict:
        """Empty the registry and register every run under the root again (see :meth:`sync`)."""
        with self.db:
            self.db.execute("DELETE FROM runs")
        return self.sync()

    def runs(self, *, search: str = "", status: str = "", limit: int = 100, offset: int = 0) -> list[dict]:
        """Registered runs, newest first.

        ``search`` matches (case-insensitively, as a substring) the directory, run and observation ids,
        keywords, profile and command; ``status`` is ``complete`` or ``partial`` (empty: both).
        """
        where, params = [], []
        if search:
            # a substring: LIKE's own wildcards in it are escaped ('%' had matched every run)
            like = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append("(" + " OR ".join(f"{column} LIKE ? ESCAPE '\\'" for column in
                                           ("outdir", "run_id", "obs_id", "keywords", "profile", "command")) + ")")
            params += [f"%{like}%"] * 6
        if status:
            where.append("status = ?")
            params.append(status)
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY started_utc DESC, outdir LIMIT ? OFFSET ?"
        rows = [dict(r) for r in self.db.execute(sql, [*params, int(limit), int(offset)])]
        for row in rows:  # an edited registry's text where a number belongs: unknown, not a number made up
            for name in _NUMBER_COLUMNS:
                if name in row and not (row[name] is None or isinstance(row[name], (int, float))):
                    row[name] = None if name != "warnings" else 0
            for name, value in row.items():
                if name not in _NUMBER_COLUMNS and value is not None and not isinstance(value, str):
                    row[name] = str(value)
        return rows

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM runs").fetchone()[0])

    # jobs: runs queued by the console, executed by its workers

    def enqueue(self, outdir: str, argv: list[str], keywords: str = "") -> int:
        """Queue a run (``argv``: the ``ssodetect`` arguments); returns the job id."""
        with self.db:
            cur = self.db.execute("INSERT INTO jobs (outdir, argv, keywords, status, created_utc) VALUES (?, ?, ?, ?, ?)",
                                  (outdir, json.dumps(argv), keywords, "queued", utc_now()))
        return int(cur.lastrowid)

    def claim(self) -> dict | None:
        """The oldest queued job, marked running (one claimant wins: the update is conditional)."""
        with self.db:
            row = self.db.execute("SELECT * FROM jobs WHERE status = 'queued' ORDER BY id LIMIT 1").fetchone()
            if row is None:
                return None
            cur = self.db.execute("UPDATE jobs SET status = 'running', started_utc = ? WHERE id = ? AND status = 'queued'",
                                  (utc_now(), row["id"]))
            if cur.rowcount != 1:
                return None
        return self.job(int(row["id"]))

    def update_job(self, job_id: int, **fields) -> None:
        if not fields:
            return
        names = ", ".join(f"{k} = ?" for k in fields)
        with self.db:
            self.db.execute(f"UPDATE jobs SET {names} WHERE id = ?", [*fields.values(), int(job_id)])

    def job(self, job_id: int) -> dict | None:
        if not 0 <= int(job_id) < 2**63:
            return None
        row = self.db.execute("SELECT * FROM jobs WHERE id = ?", (int(job_id),)).fetchone()
        return dict(row) if row is not None else None

    def jobs(self, *, limit: int = 100, active_only: bool = False) -> list[dict]:
        sql = "SELECT * FROM jobs" + (" WHERE status IN ('queued', 'running')" if active_only else "")
        return [dict(r) for r in self.db.execute(sql + " ORDER BY id DESC LIMIT ?", (int(limit),))]

    def recover(self, alive=None) -> int:
        """Jobs left ``running`` by a server that stopped: marked ``interrupted`` (their OUTDIR holds the previous
        run or none: a run commits whole); returns how many.  ``alive(pid) -> bool``: a job whose process still runs
        (another console's) is left alone."""
        running = self.db.execute("SELECT id, pid FROM jobs WHERE status = 'running'").fetchall()
        gone = [r["id"] for r in running if alive is None or r["pid"] is None or not alive(int(r["pid"]))]
        with self.db:
            for job_id in gone:
                self.db.execute("UPDATE jobs SET status = 'interrupted', finished_utc = ?, "
                                "message = 'the console stopped during the run' WHERE id = ? AND status = 'running'",
                                (utc_now(), job_id))
        return len(gone)


def utc_now() -> str:
    """The time now, UTC ISO-8601 to the second (as the manifests write it)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
