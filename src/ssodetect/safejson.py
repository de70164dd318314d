"""JSON read from files a user (or someone else) may have written: too deep a nesting is a bad file, not a crash.

:func:`json.loads` raises :class:`RecursionError` on a document nested a few thousand levels deep (``[[[[...]]]]``);
here that is a :class:`ValueError` like any other malformed JSON, so every caller's handling of a bad file applies.
A named pipe or device in a file's place is a :class:`ValueError` too, never read (the reader would block).
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

__all__ = ["loads", "read", "read_regular", "open_regular"]


def loads(text: str | bytes):
    """:func:`json.loads`, with a document nested too deeply raising :class:`ValueError`."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def read_regular(path: str | Path) -> bytes:
    """The bytes of ``path`` when it is a regular file (a link to one counts); :class:`ValueError` for a named pipe,
    a device or a directory, which is never read (a pipe would block the reader for ever).  The check is made on
    the opened file (no window between a check and the open)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # opening a pipe without a writer does not block this way
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path}: not a regular file")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read()
    finally:
        os.close(fd)


def open_regular(path: str | Path):
    """``path`` opened for binary reading when it is a regular file (a link to one counts); :class:`ValueError` for
    a named pipe, a device or a directory, never opened so as to block (checked on the opened file);
    :class:`FileNotFoundError` when absent."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path}: not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read(path: str | Path):
    """The JSON document in file ``path`` (UTF-8); :class:`ValueError` when malformed, nested too deeply or not a
    regular file (:func:`read_regular`)."""
    return loads(read_regular(path).decode("utf-8"))
