"""The user's secret key and the HMAC signatures made with it (stored step products, the products record).

The key is read from (or created at, mode 0600) ``$SSODETECT_CACHE_KEY`` or
``~/.config/ssodetect/cache.key`` (outside any output directory): a file that someone who can write an
output directory forged or altered does not verify under it.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["cache_key", "cache_key_path", "sign_file", "sign_text", "verify_text"]


def cache_key_path() -> Path:
    """Where the step cache's signing key is kept: ``$SSODETECT_CACHE_KEY`` or ``~/.config/ssodetect/cache.key``."""
    if os.environ.get("SSODETECT_CACHE_KEY"):
        return Path(os.environ["SSODETECT_CACHE_KEY"]).expanduser()
    config_home = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(config_home) / "ssodetect" / "cache.key"


_EPHEMERAL = os.urandom(32)


def cache_key() -> tuple[bytes, bool]:
    """The user's secret key signing stored step products, and whether it persists across runs.

    Read from (or created at, mode 0600) ``$SSODETECT_CACHE_KEY`` or ``~/.config/ssodetect/cache.key``.  A key
    file that other users may read or write, or that another user owns, is not trusted.  When it can be neither
    read nor created, a key that lives only as long as this process is used (and stored products
    can then not be reused by a later run; a warning says so).
    """
    path = cache_key_path()
    if path.exists() and not path.is_file():  # a FIFO or device would block or never end
        log.warning("%s: the cache key is not a regular file; stored step products will not be reused", path)
        return _EPHEMERAL, False
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            key = handle.read(4096)
        if info.st_mode & 0o077 or (hasattr(os, "getuid") and info.st_uid != os.getuid()):
            # a key that others may read or replace signs nothing: they could forge a stored pickle under it
            who = "is not owned by this user" if hasattr(os, "getuid") and info.st_uid != os.getuid() else \
                f"is open to other users (mode {info.st_mode & 0o777:04o}: others may have read it, so delete it " \
                "and a new one is made)"
            log.warning("%s: the cache key %s; stored step products will not be reused", path, who)
            return _EPHEMERAL, False
        if len(key) >= 32:
            return key, True
        log.warning("%s: a cache key must hold at least 32 bytes (delete it and a new one is made); stored step "
                    "products will not be reused", path)
        return _EPHEMERAL, False
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("%s: cannot read the cache key (%s); stored step products will not be reused", path, exc.strerror)
        return _EPHEMERAL, False
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _create_key(path)
        return path.read_bytes(), True
    except FileExistsError:  # another process created it first (or a dangling link sits there: never followed)
        if path.is_symlink() and not path.exists():
            log.warning("%s: the cache key is a link to nothing; stored step products will not be reused", path)
            return _EPHEMERAL, False
        return cache_key()
    except OSError as exc:
        log.warning("%s: cannot create the cache key (%s); stored step products will not be reused", path,
                    exc.strerror)
        return _EPHEMERAL, False


def _create_key(path: Path) -> None:
    """Create the key file at ``path`` whole or not at all: 32 random bytes written to a private temporary file
    beside it, then linked into place (``FileExistsError`` when another process made one first).  A write that
    fails (a full disk) or a process killed midway leaves no empty key behind, which would disable the cache for
    good (campaign 30).  Where hard links are not supported the file is created exclusively and removed again
    when its write fails."""
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(os.urandom(32))
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
            return
        except FileExistsError:
            raise
        except OSError:
            pass  # no hard links here
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(Path(tmp).read_bytes())
        except OSError:
            path.unlink(missing_ok=True)
            raise
    finally:
        Path(tmp).unlink(missing_ok=True)


def sign_file(path: str | Path, context: str, key: bytes, chunk: int = 1 << 20) -> str:
    """HMAC-SHA256 (hex) of ``context`` and a file's bytes under ``key``."""
    mac = hmac.new(key, context.encode() + b"\0", hashlib.sha256)
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            mac.update(block)
    return mac.hexdigest()


def sign_bytes(data: bytes, context: str, key: bytes) -> str:
    """HMAC-SHA256 (hex) of ``context`` and ``data`` under ``key`` (:func:`sign_file` of a file holding ``data``)."""
    return hmac.new(key, context.encode() + b"\0" + data, hashlib.sha256).hexdigest()


def sign_text(text: str, context: str, key: bytes) -> str:
    """HMAC-SHA256 (hex) of ``context`` and ``text`` (UTF-8) under ``key``."""
    return hmac.new(key, context.encode() + b"\0" + text.encode(), hashlib.sha256).hexdigest()


def verify_text(text: str, context: str, key: bytes, signature) -> bool:
    """Whether ``signature`` is :func:`sign_text` of ``text`` and ``context`` under ``key``."""
    return isinstance(signature, str) and hmac.compare_digest(sign_text(text, context, key), signature)
