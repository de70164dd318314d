"""Atomic output: a run's products appear complete or not at all, and nothing else is touched.

:class:`OutputStage` collects a command's products in a hidden staging directory
beside the output directory.  Two ways to commit:

* ``replace=True`` (a run, a simulated scene, a batch field): the whole stage
  *becomes* the output directory.  On Linux the two directories are exchanged in
  one ``renameat2(RENAME_EXCHANGE)`` call; elsewhere the previous directory is
  renamed aside, the stage renamed into place and the previous one removed (a
  crash between the two renames is repaired by the next command on that
  directory).  A reader never sees a mix of two runs.
* ``replace=False`` (a report or a table added to an existing directory): each
  staged file is moved into place with an atomic ``os.replace``.

Every commit records what it wrote in ``OUTDIR/.ssodetect-products.json``.  A
directory holding files that no record of ours lists is never replaced (it may
be the user's data): the command stops with a one-line error before any work.
One command at a time writes a directory: a lock file ``.NAME.lock`` beside it
(``flock``) is held from the stage's creation to its commit, and staging
directories left by a killed command are removed by the next one.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path

from ssodetect import safejson
from ssodetect.errors import InputError, SSODetectError
from ssodetect.keys import cache_key, cache_key_path, sign_text, verify_text

__all__ = ["atomic_write_text", "atomic_write_bytes", "OutputStage", "OutputLock", "RECORD", "STAGE_MARKER",
           "remove_dead_stages",
           "stage_marker_text",
           "recorded_files",
           "foreign_files", "irregular_products", "record_files", "check_free_space", "expected_output_bytes",
           "check_apart", "safe_name", "sha256_file", "DIRECTORY_KINDS", "directory_kind", "check_directory_kind", "enclosing_kind"]

log = logging.getLogger(__name__)


def safe_name(text: str, limit: int = 40) -> str:
    """A file-name part made from a name read from data (a CCD id): ASCII letters, digits, ``-`` and ``_`` only, at
    most ``limit`` characters.  A name that had to be changed gets 8 hex digits of its SHA-1, so that two names never
    meet in one file (``A.1`` and ``A_1``) and none climbs out of its folder (``x/../../escaped``)."""
    text = str(text)
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "_" for c in text)
    if safe == text and 0 < len(safe) <= limit and not re.search(r"-[0-9a-f]{8}$", safe):
        return safe  # (a name ending like a changed name's hash is hashed too: never equal to another's safe form)
    digest = hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{safe[:limit] or 'ccd'}-{digest}"

#: The record of the files ssodetect wrote into a directory (relative POSIX paths).
RECORD = ".ssodetect-products.json"
#: What the record's signature is bound to (a signature of another kind of file does not verify as a record).
RECORD_CONTEXT = "ssodetect products record"


def atomic_write_bytes(path: str | Path, payload: bytes) -> Path:
    """Write ``payload`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


#: The file that marks a staging (or set-aside) directory as ssodetect's: only such directories are ever removed as
#: left by an interrupted command (a user's directory named like one is not ours).
STAGE_MARKER = ".ssodetect-stage"


#: HMAC context of a stage marker's signature.
STAGE_CONTEXT = "ssodetect stage marker v1"
#: The file a replacement leaves in the new run just before the swap: the stage's name and the old run's inode, signed,
#: so that the old run a kill leaves in the stage's place (unmarked) is known as ours, and nothing else is.
SWAP_NOTE = ".ssodetect-swap"
SWAP_CONTEXT = "ssodetect swap note v1"


def _swap_note(directory: Path) -> tuple[str, int] | None:
    """``(stage name, old run's inode)`` of a signed :data:`SWAP_NOTE` in ``directory``, None without a valid one."""
    fields = _marker_fields(directory / SWAP_NOTE)
    if fields is None:
        return None
    inode, signature, name = fields
    if not (name and "/" not in name and verify_text(f"{name}:{inode}", SWAP_CONTEXT, cache_key()[0], signature)):
        return None
    return name, inode


def stage_marker_text(directory: Path, pid: int) -> str:
    """The contents of :data:`STAGE_MARKER` for ``directory`` written by process ``pid``: the id and an HMAC of the
    directory's name and the id under the user's key, so that a marker planted in a directory of the user's (with a
    dead process's id) does not make ssodetect remove it, nor anything the user put in it."""
    name = Path(directory).name
    return f"{pid}\n{sign_text(f'{name}:{pid}', STAGE_CONTEXT, cache_key()[0])}\n{name}\n"


def _marker_fields(path: Path) -> tuple[int, str, str] | None:
    """``(pid, signature, name)`` of a regular marker file of this user's (name '' in a marker of before the name was
    written in it), None when it is not one."""
    try:
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode) or info.st_size > 4096:
            return None
        if hasattr(os, "getuid") and info.st_uid != os.getuid():
            return None
        lines = path.read_text().splitlines()
        if len(lines) not in (2, 3):
            return None
        return int(lines[0]), lines[1], lines[2] if len(lines) == 3 else ""
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _mark(directory: Path) -> None:
    """Write :data:`STAGE_MARKER` (the writing process's id, signed) into a working directory just created."""
    (directory / STAGE_MARKER).write_text(stage_marker_text(directory, os.getpid()))


def _left_by_us(path: Path) -> bool:
    """Whether ``path`` is a working directory a command of this user created and left: a directory (not a link),
    private to the user as ``tempfile.mkdtemp`` makes it (owned by them, mode 0700), holding a regular
    :data:`STAGE_MARKER` signed with the user's key whose process is gone.  (Under a key that lives only as long as
    its process, another process's stage cannot be told from a planted one: it is left where it is.)"""
    try:
        info = path.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_mode & 0o077:
            return False
        if hasattr(os, "getuid") and info.st_uid != os.getuid():
            return False
        fields = _marker_fields(path / STAGE_MARKER)
        if fields is None or fields[2] not in ("", path.name):
            return False
        pid = fields[0]
        if not verify_text(f"{path.name}:{pid}", STAGE_CONTEXT, cache_key()[0], fields[1]):
            return False
    except (OSError, ValueError):
        return False
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True  # this process's own earlier command (the lock is ours)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive under another user
        return False
    return False  # still running: not left


def _files(directory: Path) -> list[str]:
    """Relative POSIX paths of the files (and links) under ``directory``."""
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if not p.is_dir() or p.is_symlink())


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (hex), read into one reused buffer (a full field's 10 GB of frames:
    no new bytes object per block; 1.2 -> 1.5 GB/s)."""
    digest = hashlib.sha256()
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while size := handle.readinto(buffer):
            digest.update(view[:size])
    return digest.hexdigest()


def _digest(path: Path) -> str | None:
    """SHA-256 of a file's bytes (``link:`` and the target for a symbolic link; ``special`` for a named pipe, a
    device or a directory, which is never opened: a pipe would block for ever); None when it cannot be read."""
    try:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            return "link:" + os.readlink(path)
        if not stat.S_ISREG(info.st_mode):
            return "special"
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # swapped for a pipe since the lstat: still no block
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return "special"
            os.set_blocking(fd, True)
            h = hashlib.sha256()
            with os.fdopen(fd, "rb", closefd=False) as handle:
                while block := handle.read(1 << 20):
                    h.update(block)
            return h.hexdigest()
        finally:
            os.close(fd)
    except OSError:
        return None


def _record_text(directory: Path, names) -> str:
    """The products record of ``names`` (relative paths under ``directory``): each with its SHA-256, signed with the
    user's key (:mod:`ssodetect.keys`).  The checksums bind the record to these very files: a record copied from
    another directory, or a product edited since, does not make a file ssodetect's."""
    files = {name: _digest(Path(directory) / name) for name in sorted(set(names))}
    return _signed_record({name: digest for name, digest in files.items() if digest is not None})


def _signed_record(files: dict) -> str:
    """The record's text for ``files`` (name -> SHA-256, or a list of those a file may hold while a commit that adds
    files moves them in), signed with the user's key."""
    key, persistent = cache_key()
    if not persistent:  # a key that dies with this process could never verify it: judged by the manifest instead
        return json.dumps({"files": files}, indent=1)
    return json.dumps({"files": files, "hmac": sign_text(json.dumps(sorted(files.items())), RECORD_CONTEXT, key)},
                      indent=1)


def _read_record(directory: Path) -> set[str] | None:
    """The files a record lists, signed by this user's key, whose contents are still those it recorded; None without
    a record, with an unsigned one, or with one of a version before the checksums (judged by the manifest); raises
    UnsignedRecord for a signature that does not verify or an unreadable record."""
    try:
        record = safejson.read(directory / RECORD)
        files = record["files"]
        if isinstance(files, list) and all(isinstance(n, str) for n in files):
            return None  # names only (a version before the checksums): the manifest's checksums decide
        if not isinstance(files, dict) or not all(
                isinstance(n, str) and (isinstance(d, str) or (isinstance(d, list) and all(isinstance(e, str) for e in d)))
                for n, d in files.items()):
            raise TypeError
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        raise UnsignedRecord(f"{directory / RECORD}: unreadable") from None
    if "hmac" not in record:
        return None  # unsigned (a key that could not be kept): judged like a run without a record (its manifest)
    key, persistent = cache_key()
    if not persistent:  # (the directory was blamed when the key itself was not usable: open to others, unreadable)
        raise UnsignedRecord(f"{directory / RECORD}: its signature cannot be checked, because your cache key "
                             f"{cache_key_path()} is not usable now (the warning above says why): make it usable "
                             "again (mode 0600, yours) or choose another output directory")
    if not verify_text(json.dumps(sorted(files.items())), RECORD_CONTEXT, key, record.get("hmac")):
        raise UnsignedRecord(f"{directory / RECORD}: not signed with your key (written by another user or key, or "
                             "altered), so ssodetect will not replace the files it lists: remove the directory yourself "
                             "or choose another")
    ours, changed = set(), []
    for name, digest in files.items():
        now = _digest(directory / name)
        if now in (digest if isinstance(digest, list) else [digest]):
            ours.add(name)  # a file changed since, step-cache entries included, is not taken as ours
        elif now is not None:
            changed.append(name)
    if changed:
        log.info("%s: %d recorded file(s) changed since ssodetect wrote them (%s): no longer taken as its own",
                 directory, len(changed), ", ".join(sorted(changed)[:3]))
    return ours


class UnsignedRecord(InputError):
    """A products record that this user's key did not sign: the files it lists are not taken as ours."""


def recorded_files(directory: str | Path) -> set[str] | None:
    """The files ssodetect recorded writing into ``directory``; None when it holds no record.

    The record's files count when their contents are those it recorded (an edited product is the user's now).  A run
    written before the record (or its checksums) existed is recognised by its ``manifest.json`` (its ``products`` of
    the names earlier versions wrote, :data:`LEGACY_PRODUCTS`, whose checksums still match), when that manifest is
    the user's own (owned by them, writable by no one else).  A record not signed with the user's key
    (:mod:`ssodetect.keys`) raises :class:`UnsignedRecord`: someone who can write the directory could otherwise list
    a file of the user's and have a run remove it.
    """
    directory = Path(directory)
    names = _read_record(directory)
    if names is not None:
        return names | {RECORD}
    try:
        info = (directory / "manifest.json").lstat()
        if (hasattr(os, "getuid") and info.st_uid != os.getuid()) or info.st_mode & 0o022:
            return None  # a manifest someone else wrote (or could have) proves nothing about the files it lists
        manifest = safejson.read(directory / "manifest.json")
        products = manifest.get("products")
        if isinstance(products, dict) and "ssodetect" in json.dumps(manifest.get("software", "")):
            # an earlier version's run: its products as its manifest checksummed them (a listed file with other
            # contents is not taken as ours)
            return {name for name, entry in products.items() if isinstance(entry, dict) and _legacy_product(name)
                    and _same_sha256(directory / name, entry.get("sha256"))} | {"manifest.json", "run.log", RECORD}
    except (OSError, ValueError, AttributeError):
        pass
    return None


#: The files a run of an earlier version wrote (an unsigned manifest may list only these: a manifest forged to list
#: a file of the user's, with its right checksum, must not make a run remove it).
LEGACY_PRODUCTS = ("observations.ecsv", "objects.ecsv", "astrometry.ecsv", "streaks.ecsv", "known.ecsv",
                   "vetting.ecsv", "cutouts.fits", "overview.fits", "provenance.json", "observations.psv",
                   "observations.xml", "observations.mpc", "objects.reg", "report.html", "alert.json", "config.toml",
                   "evaluation.ecsv")
_LEGACY_PATTERNS = (re.compile(r"steps/[a-z_]+\.(pkl|json)"), re.compile(r"logs/[a-z_]+\.log"),
                    re.compile(r"regions/e\d+_[A-Za-z0-9_-]+\.reg"),
                    re.compile(r"intermediate/[a-z_]+/[^/]+(/[^/]+)?"))


def _legacy_product(name: str) -> bool:
    return name in LEGACY_PRODUCTS or any(p.fullmatch(name) for p in _LEGACY_PATTERNS)


def _same_sha256(path: Path, digest) -> bool:
    try:
        if not path.is_file() or path.is_symlink():
            return False
        h = hashlib.sha256()
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                h.update(block)
        return h.hexdigest() == digest
    except OSError:
        return False


def irregular_products(directory: str | Path) -> list[str]:
    """The product names in ``directory`` (those of :data:`LEGACY_PRODUCTS`, ``manifest.json`` and the record)
    that exist as something other than a regular file (or a link to one): a named pipe there would block a
    reader for ever, a directory or device is no product."""
    directory = Path(directory)
    found = []
    for name in (*LEGACY_PRODUCTS, "manifest.json", RECORD):
        path = directory / name
        try:
            if not stat.S_ISREG(path.stat().st_mode):
                found.append(name)
        except FileNotFoundError:
            continue
        except OSError:
            found.append(name)
    return found


def foreign_files(directory: str | Path, limit: int = 4) -> list[str]:
    """Files under ``directory`` that no record of ours lists (all of them when it holds no record), a file changed
    since we recorded it included, and empty directories where no file of ours lies; the walk stops after ``limit``
    of them (a home directory given as OUTDIR is refused at once, not scanned)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    recorded = recorded_files(directory)
    ours = recorded or set()
    found = []
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        here = Path(root).relative_to(directory).as_posix()
        names = sorted(files) + [d for d in dirs if os.path.islink(os.path.join(root, d))]
        candidates = [Path(root, name).relative_to(directory).as_posix() for name in names]
        if not names and not dirs and here != "." and not any(name.startswith(here + "/") for name in ours):
            candidates = [here]  # an empty directory where none of ours lies (made by someone else): theirs
        for relative in candidates:
            if relative not in ours and not (recorded is not None and _leftover(relative, ours, directory)):
                found.append(relative)
                if len(found) >= limit:
                    return found
    return found


#: A temporary file of :func:`atomic_write_bytes` (``.NAME.XXXXXXXX.tmp``, :func:`tempfile.mkstemp`'s characters).
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp")
#: Age [s] from which :meth:`OutputStage._tidy` removes a leftover (:func:`_leftover`).
LEFTOVER_AGE = 3600.0
#: Files written by atomic writes into directories of ours besides the record's and the products' (ml train, batch).
_ATOMIC_NAMES = ("metrics.json", "model.pt", "checkpoint.pt", "complete.json")


def _leftover(relative: str, ours: set, directory: Path) -> bool:
    """Whether a file under a directory of ours (``directory``; the file ``relative``, POSIX) is what a killed
    command of ours left: the temporary of an atomic write of one of our files (``.NAME.XXXXXXXX.tmp`` where NAME is
    the record's, a file the record lists or, at the top only, one of :data:`_ATOMIC_NAMES` that such a directory
    holds; not any file named like a product: a user's ``steps/.notes.pkl.XXXXXXXX.tmp`` had been removed), a
    replacement's :data:`SWAP_NOTE` signed with the user's key, or a replacement's :data:`STAGE_MARKER` at the top
    (killed between the swap and its removal, or before the swap: the old run's) signed with the user's key for a
    stage of this directory (a user's file of that name is theirs).  Such files are neither the user's (they do not
    block a replacement) nor listed as ours; :meth:`OutputStage._tidy` removes them."""
    if relative == STAGE_MARKER:
        fields = _marker_fields(Path(directory) / STAGE_MARKER)
        if fields is None:
            return False
        pid, signature, name = fields
        # (the stage of OUTDIR: ".OUT.stage-...", or ".A__OUT.stage-..." beside the nearest directory that existed)
        stage = f"{sibling_name(Path(os.path.realpath(directory)).name)}.stage-"
        return (name.startswith(".") and stage in name
                and verify_text(f"{name}:{pid}", STAGE_CONTEXT, cache_key()[0], signature))
    if relative == SWAP_NOTE:
        return _swap_note(Path(directory)) is not None
    parent, _, base = relative.rpartition("/")
    match = _TEMPORARY.fullmatch(base)
    if match is None:
        return False
    target = f"{parent}/{match['name']}" if parent else match["name"]
    if target in ours or target == RECORD:
        return True
    # files written before they are recorded, only at the top of the directory that has them: a batch field's
    # complete.json (in a run's directory), a training's products (not in a run's directory; a user's
    # ".model.pt.backup01.tmp" in a run had been taken for ours)
    run = os.path.lexists(Path(directory) / "manifest.json")
    return not parent and (target == "complete.json" if run else target in _ATOMIC_NAMES and target != "complete.json")


def remove_dead_stages(outdir: str | Path) -> list[Path]:
    """Remove the stages beside ``outdir`` that killed commands of this user's left (``.OUT.stage-`` and eight
    characters, private, holding a signed :data:`STAGE_MARKER` of a process that is gone); returns them.  For a
    directory no command will write again (a batch's complete field, whose killed run's stage had stayed for good);
    the caller holds a lock that excludes other writers of it (the batch directory's)."""
    outdir = Path(os.path.realpath(outdir))
    prefix = f".{sibling_name(outdir.name)}.stage-"
    pattern = re.compile(re.escape(prefix) + r"[a-z0-9_]{8}")
    removed = []
    for path in outdir.parent.glob(glob.escape(prefix) + "*"):
        if pattern.fullmatch(path.name) and _left_by_us(path):
            log.info("removing %s, left by an interrupted command", path)
            _remove(path)
            removed.append(path)
    return removed


def record_files(directory: str | Path, names) -> None:
    """Add ``names`` (relative paths) to ``directory``'s record of the files ssodetect wrote there."""
    directory = Path(directory)
    known = _read_record(directory) or set()
    atomic_write_text(directory / RECORD, _record_text(directory, known | set(names)))


def _remove(path: Path) -> None:
    """Remove a file, link or directory tree of ours (a link itself, never what it points to)."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _nearest_existing(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path




class OutputLock:
    """An exclusive lock on one output directory, held by one command at a time (``flock`` on ``.NAME.lock``
    beside it: the same lock for a command replacing the directory and one adding files to it (``inside=True``,
    which stages inside it and falls back to ``.ssodetect.lock`` inside when the parent is read-only); removed on
    release).

    Raises
    ------
    InputError
        Another command holds the directory, or its parent cannot be written.
    """

    def __init__(self, directory: str | Path, *, inside: bool = False):
        self.directory = Path(os.path.realpath(directory))
        beside = _nearest_existing(self.directory.parent)
        self.path = beside / f".{sibling_name(self.directory.relative_to(beside))}.lock"
        if inside:  # files added to an existing directory: staged inside it, its parent need not be writable
            self.base = self.directory
            if not os.access(beside, os.W_OK | os.X_OK):
                # (a command replacing the whole directory needs its parent writable: none can run beside us)
                self.path = self.directory / ".ssodetect.lock"
        else:
            self.base = beside
        self._fd: int | None = None
        self._user_fd: int | None = None
        self._acquire()
        try:
            self._acquire_user_lock()
        except BaseException:
            self.release()
            raise

    def _acquire_user_lock(self) -> None:
        """A second lock on the same directory, in the user's cache (``$XDG_CACHE_HOME/ssodetect/locks``), named by
        the directory's whole path: the lock beside it is named after the nearest directory that exists, so two
        commands on ``new/out``, one started before ``new`` was made and one after, had held two locks and written
        the directory at once.  Without a usable cache directory only the lock beside it is taken."""
        folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ssodetect" / "locks"
        path = folder / (hashlib.sha256(os.fsencode(str(self.directory))).hexdigest()[:32] + ".lock")
        for _ in range(20):
            try:
                folder.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
            except OSError as exc:  # (said: two commands on a directory whose parent appears meanwhile may both run)
                log.warning("%s: no lock in the user's cache %s (%s); only the lock beside it is held", self.directory,
                            folder, exc.strerror or exc)
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise InputError(f"{self.directory}: another ssodetect command is writing it (lock {path})") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a file its previous holder removed while we opened it
                self._user_fd, self._user_path = fd, path
                return
            os.close(fd)
        raise InputError(f"{self.directory}: could not take its lock {path}")

    def _open(self) -> int:
        """The lock file, opened without following a link or blocking on a pipe; refused unless it is a lock file
        of ours (a regular file of this user's, with no other name, empty or holding a process number): a file
        of the user's or a link planted under the lock's name is never written or removed."""
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise InputError(f"{self.path}: a symbolic link where ssodetect keeps the lock of {self.directory}; "
                                 "remove it") from None
            if exc.errno == errno.EISDIR:
                raise InputError(f"{self.path}: a directory where ssodetect keeps the lock of {self.directory}; "
                                 "remove or rename it") from None
            raise InputError(f"{self.directory}: cannot write beside it in {self.base} ({exc.strerror})") from None
        try:
            info = os.fstat(fd)
            problem = ("not a regular file" if not stat.S_ISREG(info.st_mode)
                       else "another user's" if hasattr(os, "getuid") and info.st_uid != os.getuid()
                       else "a file with other names (hard links)" if info.st_nlink > 1
                       else "")
            if not problem:
                held = os.pread(fd, 64, 0) if info.st_size <= 64 else b"x"
                if held.strip() and not held.strip().isdigit():
                    problem = "not a lock file of ssodetect's (it holds other data)"
        except OSError as exc:
            problem = exc.strerror or str(exc)
        if problem:
            os.close(fd)
            raise InputError(f"{self.path}: {problem}, where ssodetect keeps the lock of {self.directory}; "
                             "move it away or choose another output directory")
        os.set_blocking(fd, True)
        return fd

    def _acquire(self) -> None:
        for _ in range(20):
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                try:
                    owner = os.read(fd, 200).decode(errors="replace").strip() or "?"
                finally:
                    os.close(fd)
                raise InputError(f"{self.directory}: another ssodetect command is writing it (process {owner}; "
                                 f"lock {self.path})") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a lock file its previous holder removed while we waited for it
                self._fd = fd
                try:
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{os.getpid()}".encode())
                except OSError:  # a full disk (N11): the lock file is not left behind
                    self.release()
                    raise
                return
            os.close(fd)
        raise InputError(f"{self.directory}: could not take its lock {self.path}")

    def release(self) -> None:
        """Give the lock up and remove the lock file (a second call does nothing)."""
        if self._user_fd is not None:
            fd, self._user_fd = self._user_fd, None
            try:
                if os.fstat(fd).st_ino == self._user_path.lstat().st_ino:
                    self._user_path.unlink(missing_ok=True)
            except OSError:
                pass
            finally:
                os.close(fd)
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            try:  # only the file this command locked (not one put under its name since)
                same = os.fstat(fd).st_ino == self.path.lstat().st_ino
            except OSError:
                same = False
            if same:
                self.path.unlink(missing_ok=True)
        finally:
            os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one atomic step (Linux ``renameat2``); False where that is not available."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


class OutputStage:
    """Staging area for the products of one command.

    Use as a context manager; write into :attr:`path` (or through :meth:`file`)
    and the products are committed to ``outdir`` when the block exits without error.

    Parameters
    ----------
    outdir : str or Path
        Final output directory (created, with its parents, only on commit).
    replace : bool
        True: the stage replaces ``outdir`` as a whole (a run's directory); ``outdir`` must hold only files
        ssodetect recorded writing.  False: the staged files are added to ``outdir``, each replacing a file of
        the same name.
    lock : OutputLock, optional
        A lock on ``outdir`` the caller already holds (and keeps after the commit); by default the stage takes
        its own and gives it up at the commit.  A lock is not re-entrant: a second lock on the same directory,
        even in the same process, is refused.
    kind : str, optional
        With ``replace``: what the command writes (a kind of :data:`DIRECTORY_KINDS`); an ``outdir`` holding the
        products of another kind is refused (:func:`check_directory_kind`).

    Raises
    ------
    InputError
        ``outdir`` is a file, holds files ssodetect did not write (``replace``), cannot be removed or written,
        or another command is writing it.
    """

    def __init__(self, outdir: str | Path, *, replace: bool = False, lock: OutputLock | None = None,
                 kind: str | None = None):
        self.outdir = Path(os.path.realpath(outdir))  # a link to a directory: the directory is written, not the link
        self.replace = replace
        self.kind = kind
        self.committed = False
        if self.outdir.exists() and not self.outdir.is_dir():
            raise InputError(f"{outdir}: exists and is not a directory")
        self._own_lock = lock is None
        inside = not replace and self.outdir.is_dir()  # adding files: stage and lock inside the directory
        self.lock = OutputLock(self.outdir, inside=inside) if lock is None else lock
        try:
            self.base = self.lock.base
            self._tidy()
            if replace and kind is not None:
                check_directory_kind(self.outdir, kind, outdir)
            if replace and self.outdir.is_dir():
                self._check_replaceable(outdir)
            try:
                self.path = Path(tempfile.mkdtemp(prefix=self._prefix("stage"), dir=self.base))
                _mark(self.path)
            except OSError as exc:
                raise InputError(f"{outdir}: cannot write in {self.base} ({exc.strerror})") from None
        except BaseException:
            self._unlock()
            raise

    def _unlock(self) -> None:
        if self._own_lock:
            self.lock.release()

    def _prefix(self, kind: str) -> str:
        if self.base == self.outdir:
            return f".ssodetect.{kind}-"
        return f".{sibling_name(self.outdir.relative_to(self.base))}.{kind}-"

    def _tidy(self) -> None:
        """Remove stages of killed commands; put back a directory a crash left renamed aside (we hold the lock).

        Only directories holding our :data:`STAGE_MARKER` are ours: a directory of the user's that merely has a
        stage's name is left alone.  Before a replacement, the stages a killed command that added files (a report)
        left inside the output directory go too."""
        inner = self._own(".ssodetect.stage-", self.outdir) if self.replace and self.outdir.is_dir() else []
        swapped = self._swapped_out()
        for stale in self._own(self._prefix("stage")) + inner + swapped:
            log.info("removing %s, left by an interrupted command", stale)
            _remove(stale)
        if swapped:  # (and the new run's marker that the same kill left: no longer a stage)
            if _leftover(STAGE_MARKER, set(), self.outdir):
                (self.outdir / STAGE_MARKER).unlink(missing_ok=True)
            (self.outdir / SWAP_NOTE).unlink(missing_ok=True)
        if self.outdir.is_dir():
            try:
                ours = recorded_files(self.outdir)
            except UnsignedRecord:
                ours = None  # not our directory: nothing in it is removed
            now = time.time()
            # at any depth (an atomic write into steps/ or a batch's field killed there), links not followed
            for root, dirs, names in os.walk(self.outdir) if ours is not None else ():
                dirs[:] = [d for d in dirs if not d.startswith(".ssodetect.stage-")]  # (a stage: removed whole)
                for name in names:
                    path = Path(root, name)
                    relative = path.relative_to(self.outdir).as_posix()
                    # (a writer that holds no lock of this directory, a batch's or a training's, may be writing one
                    # now: only those an hour old are removed; younger ones are merely not taken as the user's)
                    try:
                        old = (_leftover(relative, ours, self.outdir) and not path.is_symlink()
                               and now - path.lstat().st_mtime > LEFTOVER_AGE)
                    except OSError:  # (gone meanwhile)
                        continue
                    if old:
                        log.info("removing %s, left by an interrupted command", path)
                        path.unlink(missing_ok=True)
        previous = sorted(self._own(self._prefix("previous")), key=lambda p: p.lstat().st_mtime)
        if previous and not self.outdir.exists() and (previous[-1] / "run").is_dir() and self.outdir.parent.is_dir():
            log.warning("%s: restored from %s (an interrupted commit)", self.outdir, previous[-1])
            os.rename(previous[-1] / "run", self.outdir)
        for stale in previous:
            _remove(stale)

    def _note_swap(self) -> bool:
        """Leave :data:`SWAP_NOTE` in the stage (the new run) before it is swapped with OUTDIR (the old run): the
        stage's name and the old run's inode, signed.  Always True (a note that cannot be written only leaves a kill
        just after the swap untidied)."""
        try:
            inode = os.stat(self.outdir).st_ino
            signature = sign_text(f"{self.path.name}:{inode}", SWAP_CONTEXT, cache_key()[0])
            (self.path / SWAP_NOTE).write_text(f"{inode}\n{signature}\n{self.path.name}\n")
        except OSError:
            pass
        return True

    def _swapped_out(self) -> list[Path]:
        """The old run a kill left in the stage's place just after a replacement's swap, before it marked it: the
        directory the new run's :data:`SWAP_NOTE` names, when it is still the very directory (inode) swapped out (a
        user's directory of that name, or a copy of a run, is not)."""
        note = _swap_note(self.outdir) if self.outdir.is_dir() else None
        if note is None:
            return []
        # (a swap happens only where OUTDIR existed: its stage lay beside it, whichever command looks now)
        outdir = Path(os.path.realpath(self.outdir))
        path = outdir.parent / note[0]
        try:
            info = path.lstat()
        except OSError:
            return []
        if (stat.S_ISDIR(info.st_mode) and info.st_ino == note[1]
                and path.name.startswith(f".{sibling_name(outdir.name)}.stage-")
                and not (hasattr(os, "getuid") and info.st_uid != os.getuid())):
            return [path]
        return []

    def _own(self, prefix: str, base: Path | None = None) -> list[Path]:
        """Directories of ``base`` (the stage's) named ``prefix`` + a temporary name's 8 characters, exactly, that
        hold our :data:`STAGE_MARKER`: the stage of a directory named like ``OUT.stage-a`` beside ``OUT``
        (``.OUT.stage-a.stage-...``) is another's, and a directory of the user's named like a stage is theirs."""
        base = self.base if base is None else base
        pattern = re.compile(re.escape(prefix) + r"[a-z0-9_]{8}")
        return [p for p in base.glob(glob.escape(prefix) + "*") if pattern.fullmatch(p.name) and _left_by_us(p)]

    def _check_replaceable(self, shown) -> None:
        strangers = foreign_files(self.outdir)
        if strangers:
            more = f" and {len(strangers) - 3} more" if len(strangers) > 3 else ""
            raise InputError(f"{shown}: holds files ssodetect did not write or that changed since it wrote them "
                             f"({', '.join(strangers[:3])}{more}); "
                             "choose another output directory or move them")
        for folder in [self.outdir, *(p for p in self.outdir.rglob("*") if p.is_dir() and not p.is_symlink())]:
            if not os.access(folder, os.W_OK | os.X_OK):
                raise InputError(f"{folder}: not writable, so the earlier products in it cannot be replaced")

    def file(self, name: str) -> Path:
        """Path of a product inside the stage (never the record's name: the commit writes the record)."""
        if Path(name).name == RECORD:
            raise InputError(f"{self.outdir / name}: the record of the files ssodetect wrote there; not a product name")
        return self.path / name

    def carry(self, name: str) -> int:
        """Keep ``outdir/name`` (a file or a directory of an earlier run's, e.g. the intermediate products of a
        step loaded from the cache) in the new products, unless the stage has it already; returns files kept."""
        src = self.outdir / name
        files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file()) if src.is_dir() else []
        kept = 0
        for path in files:
            dest = self.path / path.relative_to(self.outdir)
            if dest.exists() or path.is_symlink():
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, dest)
            except OSError:
                shutil.copy2(path, dest)
            kept += 1
        return kept

    def commit(self, *, keep_lock: bool = False) -> list[Path]:
        """Move the products into the output directory; returns their final paths.

        ``keep_lock``: a lock the stage took itself is kept after a successful commit (for work that follows in
        the directory, such as an alert's delivery recorded in its log) until :meth:`release`."""
        done = False
        try:
            # the directory's path may lead elsewhere now (a link made in it while the command ran, e.g. a parent
            # that did not exist): another command may hold that directory's locks, which are not ours; refused
            now = Path(os.path.realpath(self.outdir))
            if now != self.outdir:
                shutil.rmtree(self.path, ignore_errors=True)
                raise InputError(f"{self.outdir}: its path now leads to {now} (a link appeared in it while this "
                                 "command ran); nothing was written: run again")
            # the stage keeps its marker until its products are in place: a stage a kill leaves is tidied next time
            # (a replacement's marker goes with it into OUTDIR and is removed there just after)
            names = [name for name in _files(self.path) if name != STAGE_MARKER]
            if self.replace:
                # files may have landed in OUTDIR while the command ran (it may not even have existed): they are
                # the user's, and the swap would remove them with the old run; refused, OUTDIR left as it is
                strangers = foreign_files(self.outdir) if self.outdir.is_dir() else []
                if strangers:
                    more = f" and {len(strangers) - 3} more" if len(strangers) > 3 else ""
                    shutil.rmtree(self.path, ignore_errors=True)
                    raise InputError(f"{self.outdir}: files ssodetect did not write appeared in it while this command "
                                     f"ran ({', '.join(strangers[:3])}{more}); nothing was replaced: move them and "
                                     "run again")
                atomic_write_text(self.path / RECORD, _record_text(self.path, names))
                self.outdir.parent.mkdir(parents=True, exist_ok=True)
                if not self.outdir.exists():
                    os.rename(self.path, self.outdir)
                elif self._note_swap() and _exchange(self.path, self.outdir):
                    try:  # the old run, now in the stage's place: marked, so a kill during its removal leaves it tidied
                        os.chmod(self.path, 0o700)
                        _mark(self.path)
                    except OSError:
                        pass
                    shutil.rmtree(self.path, ignore_errors=True)
                else:
                    aside = Path(tempfile.mkdtemp(prefix=self._prefix("previous"), dir=self.base))
                    _mark(aside)
                    os.rename(self.outdir, aside / "run")
                    os.rename(self.path, self.outdir)
                    shutil.rmtree(aside, ignore_errors=True)
                (self.outdir / STAGE_MARKER).unlink(missing_ok=True)  # no longer a stage
                (self.outdir / SWAP_NOTE).unlink(missing_ok=True)
            else:
                # adding files: one of that name already there must be ours as we wrote it (not the user's, not a
                # product the user edited since); refused before anything moves
                present = [name for name in names if os.path.lexists(self.outdir / name)]
                ours = (recorded_files(self.outdir) or set()) if present else set()
                theirs = [name for name in present if name not in ours]
                if theirs:
                    shutil.rmtree(self.path, ignore_errors=True)
                    more = f" and {len(theirs) - 3} more" if len(theirs) > 3 else ""
                    raise InputError(f"{', '.join(str(self.outdir / n) for n in theirs[:3])}{more}: not as ssodetect "
                                     "wrote it (yours, or edited since); nothing was written: move it, or write "
                                     "elsewhere")
                self.outdir.mkdir(parents=True, exist_ok=True)
                if names:
                    # signed first, the record lets each file be as it was or as it is to be: a kill between the
                    # moves leaves every file ours (the next command replaces them), not strangers that block it
                    try:
                        known = ours or recorded_files(self.outdir) or set()
                    except UnsignedRecord:
                        shutil.rmtree(self.path, ignore_errors=True)
                        raise
                    files = {name: _digest(self.outdir / name) for name in sorted(known) if name != RECORD}
                    files = {name: digest for name, digest in files.items() if digest is not None}
                    for name in names:
                        new, old = _digest(self.path / name), files.get(name)
                        if new is not None:
                            files[name] = [old, new] if old is not None and old != new else new
                    atomic_write_text(self.outdir / RECORD, _signed_record(files))
                for name in names:
                    dest = self.outdir / name
                    try:
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        os.replace(self.path / name, dest)
                    except OSError as exc:
                        raise InputError(f"{dest}: cannot be written ({exc.strerror})") from None
                if names:
                    record_files(self.outdir, names)
                shutil.rmtree(self.path, ignore_errors=True)
            done = True
            return [self.outdir / name for name in names]
        finally:
            self.committed = done
            if not (done and keep_lock):
                self._unlock()

    def release(self) -> None:
        """Give up the lock a commit with ``keep_lock`` kept (nothing otherwise)."""
        self._unlock()

    def discard(self) -> None:
        """Remove the stage and everything in it (the output directory stays as it was); after a commit, only
        give the lock up."""
        try:
            if not self.committed:
                shutil.rmtree(self.path, ignore_errors=True)
        finally:
            self._unlock()

    def __enter__(self) -> "OutputStage":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


#: What each command that replaces its output directory as a whole writes there, told by names only it writes (the
#: first kind whose name is present decides): a directory of another kind is never replaced by it (a run had
#: removed a trained model, a scene a run, a dataset a run).
DIRECTORY_KINDS = (
    ("batch", "a batch of fields", ("batch_summary.ecsv",)),
    ("model", "a trained model", ("model.pt", "checkpoint.pt")),
    ("dataset", "a training dataset", ("dataset.json",)),
    ("scene", "a simulated scene", ("truth.ecsv", "truth_wcs.ecsv")),
    ("calibration", "calibration masters", ("master_bias.fits", "master_dark.fits", "master_flat.fits")),
    ("run", "a run", ("manifest.json", "observations.ecsv", "objects.ecsv", "steps")),
    ("astrometry", "astrometric solutions", ("astrometry.ecsv",)),
)


def directory_kind(directory: str | Path) -> tuple[str, str, str] | None:
    """``(kind, description, the name that tells it)`` of an output directory (:data:`DIRECTORY_KINDS`), told by the
    names its products record lists (a file of that name, or a folder of files); None for one that is missing,
    holds no record of ssodetect's (a ``manifest.json`` of the user's own makes no run) or none of those names."""
    directory = Path(directory)
    try:
        if not directory.is_dir():
            return None
        listed = recorded_files(directory) or set()  # (a record not signed with the user's key tells nothing)
    except (OSError, SSODetectError):
        return None
    folders = {name.split("/", 1)[0] for name in listed if "/" in name}
    for kind, description, names in DIRECTORY_KINDS:
        for name in names:
            if name in listed or name in folders:
                return kind, description, name
    return None


def check_directory_kind(directory: str | Path, kind: str, shown=None) -> None:
    """Refuse an output directory that holds the products of another kind of command than ``kind`` (one of
    :data:`DIRECTORY_KINDS`), which this one would replace.

    Raises
    ------
    InputError
        Naming the directory, what it holds and the name that tells it.
    """
    found = directory_kind(directory)
    what = dict((k, d) for k, d, _ in DIRECTORY_KINDS)[kind]
    shown = shown if shown is not None else directory
    if found is not None and found[0] != kind:
        raise InputError(f"{shown}: holds {found[1]} ({found[2]}), not {what}, and would lose it; choose another "
                         "output directory")
    if found is None:
        # products of a command of no kind of its own (ml predict's scores): never replaced as a whole by this one
        try:
            others = sorted(n for n in (recorded_files(directory) or set()) if n != RECORD)
        except (OSError, SSODetectError):
            others = []
        if others:
            raise InputError(f"{shown}: holds files another ssodetect command wrote ({', '.join(others[:3])}), not "
                             f"{what}, and would lose them; choose another output directory")
    # nor inside another command's directory (its steps, a scene's folder), which that command replaces as a whole
    # (the runs of a batch's fields are its own)
    outer = enclosing_kind(directory)
    if outer is not None and (outer[1][0], kind) not in NESTED_KINDS:
        raise InputError(f"{shown}: inside {outer[1][1]} ({outer[0]}), which its command replaces as a whole; choose "
                         "an output directory outside it")


def enclosing_kind(path: str | Path) -> tuple[Path, tuple[str, str, str]] | None:
    """The nearest directory above ``path`` (links resolved) that has a kind (:func:`directory_kind`), with it; None
    when there is none."""
    for above in Path(os.path.realpath(path)).parents:
        found = directory_kind(above)
        if found is not None:
            return above, found
    return None


#: (outer, inner) kinds of directory one command writes inside the other's: a batch's fields are runs.
NESTED_KINDS = {("batch", "run")}


def expected_output_bytes(input_bytes: int, *, keep: bool = False) -> int:
    """A generous estimate of what a run writes [bytes] for ``input_bytes`` of frames.

    Measured: 6 % of the inputs for a 4-exposure x 4-CCD 2048^2 field (41 MB for 671 MB), 37 % for a small
    768^2 scene (8.7 MB for 23.7 MB, the fixed-size report dominating); the estimate is 16 MB + 40 % of the
    inputs, doubled when intermediate products are kept.
    """
    estimate = 16 * 2**20 + 0.4 * input_bytes
    return int(2 * estimate if keep else estimate)


def check_free_space(stage: OutputStage, input_bytes: int, *, keep: bool = False) -> None:
    """Refuse, before any work, a run whose products would not fit on the output's file system.

    Raises
    ------
    InputError
        Less free space than :func:`expected_output_bytes` beside the output directory.
    """
    try:
        info = os.statvfs(stage.base)
    except OSError:
        return
    free = info.f_bavail * info.f_frsize
    need = expected_output_bytes(input_bytes, keep=keep)
    if free < need:
        raise InputError(f"{stage.outdir}: only {free / 2**20:.0f} MB free on its file system; a run on "
                         f"{input_bytes / 2**20:.0f} MB of frames writes up to about {need / 2**20:.0f} MB")


#: Longest OUTDIR part kept in the names of its lock, stage and previous directories beside it (a file name holds
#: 255 bytes; the rest is a hash of the whole, the kind and tempfile's suffix).
SIBLING_NAME_MAX = 160


def sibling_name(relative: str | Path) -> str:
    """The OUTDIR part of the names of the files and directories beside it (lock, stage, previous).

    ``relative`` is OUTDIR's path below the existing directory they are made in; a long one is cut and a hash of the
    whole added, so that names stay within a file system's 255 bytes and distinct.
    """
    name = Path(relative).as_posix().replace("/", "__")
    if len(name.encode()) <= SIBLING_NAME_MAX:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    return name.encode()[:SIBLING_NAME_MAX - 17].decode(errors="ignore") + "-" + digest


def check_apart(outdir: str | Path, inputs, what: str = "input", owner: str = "run") -> None:
    """Refuse an output directory that holds (or is) one of the command's input files or directories: it is
    replaced as a whole.

    Raises
    ------
    InputError
        Naming the directory and the input.
    """
    try:  # a path through a symlink loop is refused now, not after the whole run
        Path(outdir).resolve()
    except (RuntimeError, OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise InputError(f"{outdir}: cannot be resolved ({exc})") from None
    out = Path(os.path.realpath(outdir))
    for item in inputs:
        path = Path(os.path.realpath(item))
        if path == out or out in path.parents:
            raise InputError(f"{outdir}: holds the {owner}'s {what} {item}; the output directory is replaced as a "
                             "whole, so choose another one")


def check_not_inside(outdir: str | Path, inputs, what: str = "input") -> None:
    """Refuse an output directory that lies inside one of the command's input directories (inputs are never written
    into).

    Raises
    ------
    InputError
        Naming the directory and the input.
    """
    out = Path(os.path.realpath(outdir))
    for item in inputs:
        path = Path(os.path.realpath(item))
        if path.is_dir() and path in out.parents:
            raise InputError(f"{outdir}: inside the {what} {item} (inputs are never written into); choose another "
                             "output directory")
