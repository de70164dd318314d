"""Exceptions raised for user-facing problems, and the filter that says each warning once.

Each message is one line that names the offending file (or setting) and what is
wrong with it; the CLI prints it and exits non-zero.
"""
from __future__ import annotations

import logging

__all__ = ["SSODetectError", "InputError", "ConfigError", "RepeatFilter"]


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
