"""Exceptions raised for user-facing problems, and the logging pieces that count warnings and say each once.

Each message is one line that names the offending file (or setting) and what is
wrong with it; the CLI prints it and exits non-zero.
"""
from __future__ import annotations

import logging

__all__ = ["SSODetectError", "InputError", "ConfigError", "RepeatFilter", "WarningCount"]


class SSODetectError(Exception):
    """Base class of every error a user can cause and fix."""


class InputError(SSODetectError):
    """An input file is missing, unreadable, or unsuitable for the run."""


class ConfigError(SSODetectError):
    """The configuration file or a command-line setting is invalid."""


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
