"""Atomic output: files appear complete or not at all.

:class:`OutputStage` collects a run's products in a hidden staging directory
next to the output directory and moves each into place with an atomic
``os.replace`` only when the run succeeded; on failure the stage is removed and
the output directory is left as it was.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["atomic_write_text", "atomic_write_bytes", "OutputStage"]

log = logging.getLogger(__name__)


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


class OutputStage:
    """Staging area for the products of one run.

    Use as a context manager; write into :attr:`path` (or through :meth:`file`)
    and the files are moved into ``outdir`` when the block exits without error.

    Parameters
    ----------
    outdir : str or Path
        Final output directory (created if needed, only on success).
    """

    def __init__(self, outdir: str | Path):
        self.outdir = Path(outdir)
        parent = self.outdir.resolve().parent
        parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f".{self.outdir.name}.stage-", dir=parent))

    def file(self, name: str) -> Path:
        """Path of a product inside the stage."""
        return self.path / name

    def commit(self) -> list[Path]:
        """Move every staged file into the output directory (each move atomic)."""
        self.outdir.mkdir(parents=True, exist_ok=True)
        moved = []
        for src in sorted(self.path.rglob("*")):
            if src.is_dir():
                continue
            dest = self.outdir / src.relative_to(self.path)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
            moved.append(dest)
        shutil.rmtree(self.path, ignore_errors=True)
        return moved

    def discard(self) -> None:
        """Remove the stage and everything in it."""
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> "OutputStage":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()
