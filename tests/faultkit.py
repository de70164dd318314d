"""Helpers of the fault-injection suite: run the CLI in-process, snapshot directories, copy a good run.

Imported by the ``test_faults_*`` modules of this directory (pytest puts the directory on ``sys.path``:
tests/ has no ``__init__.py``, so the default ``prepend`` import mode applies).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ssodetect.cli import main

RECORD = ".ssodetect-products.json"


@dataclass
class Outcome:
    """Exit status and the lines written by one in-process ``ssodetect`` command."""

    code: int
    err: list[str]
    out: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[str]:
        return [line for line in self.err if line.startswith("ssodetect: ")]

    @property
    def warnings(self) -> list[str]:
        return [line for line in self.err if line.startswith("WARNING")]

    def steps(self) -> dict[str, str]:
        """Step -> status from the ``steps: ingest run, detect cached, ...;`` line of ``ssodetect run``."""
        for line in self.out:
            if line.startswith("steps: "):
                body = line[len("steps: "):].split(";")[0]
                return dict(part.strip().split(" ", 1) for part in body.split(","))
        return {}


def cli(capsys, *args) -> Outcome:
    """``ssodetect ARGS -q`` in this process (stderr/stdout through pytest's ``capsys``)."""
    capsys.readouterr()
    code = main([*map(str, args), "-q"])
    captured = capsys.readouterr()
    return Outcome(code, captured.err.strip().splitlines(), captured.out.strip().splitlines())


def cli_uncaptured(*args) -> Outcome:
    """``ssodetect ARGS -q`` for a fixture that has no ``capsys`` (module scope): streams redirected here."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main([*map(str, args), "-q"])
    return Outcome(code, err.getvalue().strip().splitlines(), out.getvalue().strip().splitlines())


def snapshot(root: str | Path) -> dict:
    """Every entry under ``root`` (hidden ones included; links not followed): relative path ->
    ("dir", mode) | ("link", target) | ("file", mode, sha256).  {} when ``root`` does not exist;
    ``root`` itself being a link or a file is recorded under ".".
    """
    root = Path(root)
    if root.is_symlink():
        return {".": ("link", os.readlink(root))}
    if not root.exists():
        return {}
    if root.is_file():
        return {".": ("file", stat.S_IMODE(root.stat().st_mode), hashlib.sha256(root.read_bytes()).hexdigest())}
    found = {".": ("dir", stat.S_IMODE(root.stat().st_mode))}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                found[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = ("dir", stat.S_IMODE(st.st_mode))
            elif stat.S_ISREG(st.st_mode):
                found[rel] = ("file", stat.S_IMODE(st.st_mode), hashlib.sha256(path.read_bytes()).hexdigest())
            else:
                found[rel] = ("other", stat.S_IFMT(st.st_mode))
    return found


def files(root: str | Path) -> set[str]:
    """Relative paths of the files and links under ``root`` (what the product record lists)."""
    return {rel for rel, entry in snapshot(root).items() if rel != "." and entry[0] != "dir"}


def leftovers(directory: str | Path) -> list[str]:
    """ssodetect's working entries beside ``directory``: ``.NAME.stage-XXXXXXXX``, ``.NAME.previous-XXXXXXXX`` (with
    the stage marker inside: a user's directory of that name is not ours), ``.NAME.lock`` (not those of a sibling
    directory named ``NAME.stage-a``)."""
    import re

    directory = Path(directory)
    mine = re.compile(re.escape(f".{directory.name}.") + r"((stage|previous)-[a-z0-9_]{8}|lock)")
    return sorted(p.name for p in directory.parent.iterdir() if mine.fullmatch(p.name)
                  and (p.name.endswith(".lock") or (p / ".ssodetect-stage").is_file()))


def copy_run(source: str | Path, dest: str | Path) -> Path:
    """A copy of a run directory (links kept as links)."""
    shutil.copytree(source, dest, symlinks=True)
    return Path(dest)


def recorded(directory: str | Path) -> set[str]:
    """The files ``directory``'s product record lists, the record itself included."""
    import json

    return set(json.loads((Path(directory) / RECORD).read_text())["files"]) | {RECORD}


def write_record(directory: str | Path, names) -> None:
    """Replace ``directory``'s product record by one listing ``names``, signed with this session's key (as a run of
    this user's would have written it)."""
    from ssodetect.io.outputs import _record_text

    (Path(directory) / RECORD).write_text(_record_text(Path(directory), names))


def copy_inputs(scene: str | Path, dest: str | Path) -> Path:
    """The scene's FITS frames (no record, no catalogues) in a directory of the user's own."""
    dest = Path(dest)
    dest.mkdir(parents=True)
    for path in sorted(Path(scene).glob("exp_*.fits")):
        shutil.copy2(path, dest / path.name)
    return dest


def set_header(path: str | Path, hdu: int, **values) -> None:
    """Set header cards of HDU ``hdu`` of a FITS file in place (through astropy)."""
    from astropy.io import fits

    with fits.open(path, mode="update") as hdul:
        for key, value in values.items():
            hdul[hdu].header[key] = value


def raw_card(path: str | Path, occurrence: int, key: str, value: str) -> None:
    """Overwrite the ``occurrence``-th (0-based) card ``key`` of a FITS file with ``key = value`` as raw bytes (astropy
    would rewrite a value it cannot represent)."""
    path = Path(path)
    data = bytearray(path.read_bytes())
    at = -1
    for _ in range(occurrence + 1):
        at = data.index(f"{key:<8}=".encode(), at + 1)
    data[at:at + 80] = f"{key:<8}= {value:>20}".ljust(80).encode()
    path.write_bytes(bytes(data))


class Killed(BaseException):
    """Stands for a SIGKILL (only finally clauses run after it)."""


def run_killed_at_exchange(capsys, monkeypatch, scene, out, exchange) -> None:
    """``ssodetect run SCENE --out OUT`` killed in the commit's swap: ``exchange(a, b)`` stands for
    ``ssodetect.io.outputs._exchange`` and raises :class:`Killed` where the kill falls; the stage's clean-up does
    nothing but give up the lock (a kill cleans nothing up)."""
    import pytest

    from ssodetect.io import outputs

    monkeypatch.setattr(outputs, "_exchange", exchange)
    monkeypatch.setattr(outputs.OutputStage, "discard", lambda self: self._unlock())
    with pytest.raises(Killed):
        cli(capsys, "run", scene, "--out", out)
    monkeypatch.undo()
