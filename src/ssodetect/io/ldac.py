"""SExtractor/SCAMP ``FITS_LDAC`` catalogues.

An LDAC file holds, per image, a pair of binary-table HDUs: ``LDAC_IMHEAD``
(one cell, column ``Field Header Card``, with the image header as 80-character
cards) followed by ``LDAC_OBJECTS`` (the sources).  SCAMP reads its reference
catalogues and its input catalogues in this format.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from ssodetect.errors import InputError
from ssodetect.io.outputs import atomic_write_bytes

__all__ = ["read_ldac", "write_ldac", "ldac_hdus"]


def ldac_hdus(table: Table, header: fits.Header | None = None) -> list[fits.BinTableHDU]:
    """The ``LDAC_IMHEAD`` + ``LDAC_OBJECTS`` HDU pair for one image's catalogue."""
    header = header if header is not None else fits.Header()
    # SCAMP 2.10 crashes (segfault) on an image header cell whose END card is its last card; a second END
    # avoids it (every reader stops at the first)
    cards = "".join(str(card).ljust(80)[:80] for card in header.cards) + "END".ljust(80) * (2 if len(header) else 1)
    imhead = fits.BinTableHDU.from_columns(
        [fits.Column(name="Field Header Card", format=f"{len(cards)}A", array=np.array([cards]))], name="LDAC_IMHEAD"
    )
    imhead.header["TDIM1"] = f"(80, {len(cards) // 80})"
    objects = fits.BinTableHDU(table, name="LDAC_OBJECTS")
    return [imhead, objects]


def write_ldac(path: str | Path, tables: list[tuple[Table, fits.Header | None]]) -> Path:
    """Write one or more (table, image header) pairs as an LDAC file, atomically."""
    hdus = [fits.PrimaryHDU()]
    for table, header in tables:
        hdus.extend(ldac_hdus(table, header))
    buffer = io.BytesIO()
    fits.HDUList(hdus).writeto(buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def read_ldac(path: str | Path) -> list[tuple[fits.Header, Table]]:
    """Read every (image header, object table) pair of an LDAC file.

    Raises
    ------
    InputError
        Not a FITS file, or no ``LDAC_OBJECTS`` table in it.
    """
    path = Path(path)
    try:
        with fits.open(path, memmap=False) as hdul:
            out = []
            header = fits.Header()
            for hdu in hdul[1:]:
                name = str(hdu.header.get("EXTNAME", "")).upper()
                if name == "LDAC_IMHEAD":
                    raw = hdu.data[0][0]
                    text = raw if isinstance(raw, str) else "".join(np.asarray(raw).astype(str).ravel())
                    header = fits.Header.fromstring(text)
                elif name == "LDAC_OBJECTS":
                    out.append((header, Table(hdu.data)))
                    header = fits.Header()
    except FileNotFoundError:
        raise InputError(f"{path}: LDAC catalogue not found") from None
    except OSError as exc:
        raise InputError(f"{path}: not a readable FITS LDAC catalogue ({exc})") from None
    if not out:
        raise InputError(f"{path}: no LDAC_OBJECTS table (not an LDAC catalogue)")
    return out
