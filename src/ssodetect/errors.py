"""Exceptions raised for user-facing problems, and the logging pieces that count warnings and say each once.

Each message is one line that names the offending file (or setting) and what is
wrong with it; the CLI prints it and exits non-zero.
"""
from __future__ import annotations

import logging
import re

__all__ = ["SSODetectError", "InputError", "ConfigError", "RepeatFilter", "WarningCount", "PrintableFormatter",
           "reason", "printable"]


def printable(text: str) -> str:
    """``text`` as it may be printed on a terminal: control characters (NUL, ESC, BEL, CR...) and direction marks
    (U+202E...) written as escapes, so that a file name or a header value cannot rewrite the screen."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in str(text))


class SSODetectError(Exception):
    """Base class of every error a user can cause and fix.  Its message is one printable line (:func:`printable`:
    a path holding a NUL or an escape sequence, given to the Python API, is named with escapes, as the CLI names
    it)."""

    def __str__(self) -> str:
        return printable(super().__str__())


class InputError(SSODetectError):
    """An input file is missing, unreadable, or unsuitable for the run."""


class ConfigError(SSODetectError):
    """The configuration file or a command-line setting is invalid."""


#: What a reader's message means to a user, for the messages a wrong kind of file gives (matched in order).
_PLAIN = (
    (re.compile(r"No SIMPLE card found", re.I), "it does not start with a FITS header (SIMPLE card): not a FITS file"),
    (re.compile(r"codec can't decode byte (0x[0-9a-f]+) in position (\d+)", re.I),
     r"not UTF-8 text (byte \1 at position \2)"),
    (re.compile(r"please provide a 'format' argument|Format could not be identified", re.I),
     "not a table format that can be recognised (ECSV, FITS, CSV or Parquet)"),
    (re.compile(r"Empty or corrupt FITS file", re.I), "empty or truncated"),
    (re.compile(r"No table found", re.I), "it holds no table (an image?)"),
    (re.compile(r"Keyword '?([A-Z0-9_-]+)'? not found", re.I), r"its header has no \1 card"),
)
#: Advice a library gives its programmers, not our users (its options are not the CLI's).
_ADVICE = re.compile(r"[,;.]?\s*(try (with|using|setting)|you may|use the \w+ argument|set \w+=|please provide)"
                     r"[^.;]*[.;]?|\s*\(note: [^)]*\)", re.I)


def reason(exc: BaseException, limit: int = 200) -> str:
    """Why a reader failed, in words for the one-line message: known library messages in plain words, others as
    their first line, without the library's advice to programmers (``try with ignore_missing_simple=True``) and
    without Python's exception name ("unreadable" when the message is empty)."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    text = " ".join(lines[0].split()) if lines else ""
    if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":  # a KeyError's quoted message
        text = text[1:-1]
    for pattern, plain in _PLAIN:
        match = pattern.search(text)
        if match:
            return match.expand(plain)
    text = _ADVICE.sub("", text).strip(" ,;:")
    if len(text) > limit:  # cut at a word, and say so
        text = text[:limit].rsplit(" ", 1)[0] + " ..."
    return text if text else "unreadable"


class RepeatFilter(logging.Filter):
    """Lets a warning through once: the same warning said again (a frame's flag map read by each step that reads
    its pixels, the cache key consulted by each step) is neither printed nor counted again."""

    def __init__(self):
        super().__init__()
        self._seen: set = set()

    def filter(self, record) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.levelno, record.name, record.getMessage())
        if key in self._seen:
            return False
        self._seen.add(key)
        return True


class PrintableFormatter(logging.Formatter):
    """Log lines with each message passed through :func:`printable` (the console's lines, ``run.log`` and the step
    logs: a path with an escape sequence cannot rewrite the terminal of whoever reads them); a traceback as it is."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))


class WarningCount(logging.Handler):
    """Counts a command's warnings, each once (:class:`RepeatFilter`); keeps their messages (``messages``, which
    the pipeline empties per step to store them with the step's products).  A library's Python warning logged with
    ``extra={"uncounted": True}`` is shown, not counted."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.count = 0
        self.messages: list[str] = []
        self.addFilter(RepeatFilter())

    def emit(self, record) -> None:
        if getattr(record, "uncounted", False):
            return
        self.count += 1
        self.messages.append(record.getMessage())
