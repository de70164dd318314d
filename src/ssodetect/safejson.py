"""JSON read from files a user (or someone else) may have written: too deep a nesting is a bad file, not a crash.

:func:`json.loads` raises :class:`RecursionError` on a document nested a few thousand levels deep (``[[[[...]]]]``);
here that is a :class:`ValueError` like any other malformed JSON, so every caller's handling of a bad file applies.
"""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["loads", "read"]


def loads(text: str | bytes):
    """:func:`json.loads`, with a document nested too deeply raising :class:`ValueError`."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def read(path: str | Path):
    """The JSON document in file ``path`` (UTF-8); :class:`ValueError` when malformed or nested too deeply."""
    return loads(Path(path).read_text())
