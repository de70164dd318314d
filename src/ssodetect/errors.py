"""Exceptions raised for user-facing problems.

Each message is one line that names the offending file (or setting) and what is
wrong with it; the CLI prints it and exits non-zero.
"""
from __future__ import annotations

__all__ = ["SSODetectError", "InputError", "ConfigError"]


class SSODetectError(Exception):
    """Base class of every error a user can cause and fix."""


class InputError(SSODetectError):
    """An input file is missing, unreadable, or unsuitable for the run."""


class ConfigError(SSODetectError):
    """The configuration file or a command-line setting is invalid."""
