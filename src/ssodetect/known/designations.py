"""Minor-planet designations in the MPC's packed forms (numbers in 5 characters, provisional designations in 7).

Used to read orbit files (MPCORB.DAT) and to write the 80-column report format.
"""
from __future__ import annotations

import re
import string

__all__ = ["pack_number", "unpack_number", "pack_provisional", "unpack_provisional"]

_B62 = string.digits + string.ascii_uppercase + string.ascii_lowercase


def pack_number(number: int) -> str:
    """Packed 5-character minor-planet number (``00433``, ``A0345`` for 100345, ``~0000`` for 620000)."""
    number = int(number)
    if number < 0:
        raise ValueError(f"minor-planet number {number} is negative")
    if number < 100000:
        return f"{number:05d}"
    if number < 620000:
        return _B62[number // 10000] + f"{number % 10000:04d}"
    rest = number - 620000
    if rest >= 62**4:
        raise ValueError(f"minor-planet number {number} is too large to pack")
    return "~" + "".join(_B62[(rest // 62**k) % 62] for k in (3, 2, 1, 0))


def unpack_number(packed: str) -> int:
    """Inverse of :func:`pack_number`."""
    packed = packed.strip()
    if packed.startswith("~"):
        return 620000 + sum(_B62.index(c) * 62 ** (3 - k) for k, c in enumerate(packed[1:5]))
    if packed[:1].isalpha():
        return _B62.index(packed[0]) * 10000 + int(packed[1:])
    return int(packed)


def pack_provisional(designation: str) -> str:
    """Packed 7-character provisional designation (``2019 AB12`` -> ``K19A12B``).

    Raises
    ------
    ValueError
        Not of the form ``YYYY LL[n]``.
    """
    m = re.fullmatch(r"(\d{2})(\d{2}) ([A-HJ-Y])([A-HJ-Z])(\d*)", designation.strip())
    if not m:
        raise ValueError(f"{designation!r} is not a minor-planet provisional designation")
    century, year, half, second, count = m.groups()
    n = int(count) if count else 0
    if n >= 620:
        raise ValueError(f"{designation!r}: cycle count {n} cannot be packed")
    cyc = f"{n:02d}" if n < 100 else _B62[n // 10] + str(n % 10)
    return _B62[int(century)] + year + half + cyc + second


def unpack_provisional(packed: str) -> str:
    """Inverse of :func:`pack_provisional` (``K20Q04A`` -> ``2020 QA4``)."""
    p = packed.strip()
    if len(p) != 7 or not p[0].isalpha() or not p[1:3].isdigit():
        raise ValueError(f"{packed!r} is not a packed provisional designation")
    year = _B62.index(p[0]) * 100 + int(p[1:3])
    n = _B62.index(p[4]) * 10 + int(p[5])
    return f"{year} {p[3]}{p[6]}{n if n else ''}"
