"""Finding, grouping and reading the images of a run.

Two layouts are understood:

* **Euclid VIS calibrated frame**: one multi-extension FITS file per exposure with,
  per CCD, extensions ``N-M.SCI`` (science), ``N-M.RMS`` (noise, same unit as
  SCI) and ``N-M.FLG`` (flag bits).  Exposure time and start time come from the
  primary header.
* **Plain images**: one image per file (or several unnamed image extensions);
  every keyword comes from the image header, completed by the primary header.

Files are grouped into exposures by their mid-exposure times and into CCDs by
extension name or detector keyword.  Pixel convention everywhere: 0-based,
arrays indexed ``[y, x]``.
"""
from __future__ import annotations

import bz2
import errno
import fnmatch
import gzip
import logging
import math
import os
import re
import stat
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.time import Time
from astropy.utils.exceptions import AstropyUserWarning
from astropy.wcs import WCS

from ssodetect.config import MAX_OBSERVER_DISTANCE_KM, MIN_OBSERVER_DISTANCE_KM, IOConfig
from ssodetect.errors import InputError, reason
from ssodetect.io.headers import (celestial_wcs, conflicting_cards, first_keyword, frame_type, merge_headers,
                                  observation_time, station_code)

__all__ = ["CCDRef", "Exposure", "CCDImage", "common_ccds", "find_inputs", "scan_inputs", "group_exposures", "read_ccd"]

log = logging.getLogger(__name__)

FITS_PATTERNS = ("*.fits", "*.fit", "*.fts", "*.fits.gz", "*.fit.gz", "*.fits.bz2", "*.fit.bz2", "*.fz")
_EUCLID_EXT = re.compile(r"^(?P<ccd>.+)\.(?P<kind>SCI|RMS|FLG)$", re.IGNORECASE)


@dataclass(frozen=True)
class CCDRef:
    """Where one CCD image of one exposure lives (small and picklable).

    Attributes
    ----------
    path : str
        FITS file.
    sci : int
        HDU index of the science image.
    rms, flg : int or None
        HDU indices of the noise and flag images, if any.
    ccd : str
        CCD identifier (``"1-1"`` for Euclid, else the detector keyword or HDU).
    mjd : float
        Mid-exposure time [MJD, UTC].
    exptime : float
        Exposure time [s].
    filter, instrument : str
        Header values used to refuse mixed runs.
    exposure : int
        Index of the exposure in time order (set by :func:`group_exposures`).
    frame_type : str
        light, bias, dark or flat (from the header's type keyword).
    observer : tuple of float or None
        Geocentric ICRF position (x, y, z) [km] of a space-based observatory at mid-exposure, from
        the header keywords ``io.observer_position_keys`` (None for ground-based frames).
    telescope, station : str
        ``TELESCOP`` and the MPC observatory code of the header (:func:`~ssodetect.io.headers.station_code`);
        empty when the header has none.  A run's light frames must agree on them.
    """

    path: str
    sci: int
    rms: int | None
    flg: int | None
    ccd: str
    mjd: float
    exptime: float
    filter: str
    instrument: str
    time_source: str
    exposure: int = -1
    frame_type: str = "light"
    observer: tuple | None = None
    telescope: str = ""
    station: str = ""


@dataclass
class Exposure:
    """One exposure: all CCDs taken at the same time."""

    index: int
    mid_time: Time
    exptime: float
    ccds: list[CCDRef] = field(default_factory=list)

    @property
    def files(self) -> list[str]:
        return sorted({ref.path for ref in self.ccds})


@dataclass
class CCDImage:
    """Pixels and metadata of one CCD of one exposure.

    Attributes
    ----------
    data : ndarray, shape (ny, nx), float32
        Science image [ADU]; masked pixels are kept but flagged in ``mask``.
    rms : ndarray (ny, nx) float32 or None
        Per-pixel noise [ADU] when the file provides it.
    mask : ndarray (ny, nx) bool
        True where the pixel is unusable (NaN, flagged, saturated, non-positive RMS).
    saturated : ndarray (ny, nx) bool
        True where the pixel is saturated (subset of ``mask``).
    hot : ndarray (ny, nx) bool or None
        Hot pixels found in the sequence's frames (:func:`ssodetect.calibrate.hot_pixel_map`), not in
        ``mask``: the detection treats them as hits.
    wcs : astropy.wcs.WCS or None
        Celestial WCS (None when the header has no usable one; see ``wcs_problem``).
    """

    ref: CCDRef
    data: np.ndarray
    rms: np.ndarray | None
    mask: np.ndarray
    saturated: np.ndarray
    header: fits.Header
    wcs: WCS | None
    wcs_problem: str
    gain: float
    zeropoint: float
    zeropoint_source: str
    saturation: float | None
    hot: np.ndarray | None = None


def _fits_in(folder: Path) -> list[Path]:
    """The entries of ``folder`` named like FITS frames (:data:`FITS_PATTERNS`, in any letter case: ``A.FITS`` too),
    hidden names aside, sorted."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    return [folder / name for name in names if not name.startswith(".")
            and any(fnmatch.fnmatchcase(name.lower(), pattern) for pattern in FITS_PATTERNS)]


def find_inputs(inputs) -> list[Path]:
    """Expand files and directories into a sorted list of FITS paths.

    Raises
    ------
    InputError
        A path does not exist, or a directory holds no FITS file.
    """
    paths: list[Path] = []
    for item in inputs:
        if not str(item).strip():  # Path("") is the working directory: never what an empty argument meant
            raise InputError(f"{str(item)!r}: an empty input path")
        item = Path(item)
        if item.is_dir():
            found = _fits_in(item)
            if not found:
                raise InputError(f"{item}: directory holds no FITS file ({', '.join(FITS_PATTERNS)}, in any case)")
            paths.extend(found)
            below = [sub.name for sub in sorted(item.iterdir()) if sub.is_dir() and not sub.name.startswith(".")
                     and _fits_in(sub)]
            if below:
                log.info("%s: %d subfolder(s) with FITS files not searched (%s%s): give them as inputs to use them",
                         item, len(below), ", ".join(below[:3]), ", ..." if len(below) > 3 else "")
        elif item.exists() or item.is_symlink():
            paths.append(item)
        else:
            raise InputError(f"{item}: no such file or directory")
    for path in paths:  # named as the user named them (a link, not its target)
        if path.is_symlink() and not path.exists():
            try:
                path.resolve(strict=True)
            except RuntimeError:  # (Python < 3.13)
                raise InputError(f"{path}: a loop of symbolic links (through {os.readlink(path)})") from None
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise InputError(f"{path}: a loop of symbolic links (through {os.readlink(path)})") from None
            raise InputError(f"{path}: a link to {os.readlink(path)}, which does not exist")
        if not path.is_file():
            raise InputError(f"{path}: not a regular file (a directory named like a frame, a pipe or a device)")
    first: dict = {}  # the file's identity -> (its path resolved, the name it was first given by)
    twice: list[tuple[Path, Path]] = []
    for path in paths:
        real = path.resolve()
        try:  # a hard link is the same file under another name too
            status = real.stat()
            identity = (status.st_dev, status.st_ino)
        except OSError:
            identity = real
        if identity in first:
            twice.append((path, first[identity][1]))
        else:
            first[identity] = (real, path)
    if twice:  # (the same file given twice, or under another name, is read once: said, not silently)
        log.info("%d input path(s) name a file already given, each read once: %s%s", len(twice),
                 "; ".join(f"{a} (as {b})" if str(a) != str(b) else str(a) for a, b in twice[:3]),
                 "; ..." if len(twice) > 3 else "")
    return sorted(real for real, _ in first.values())


def _check_complete(path: Path, hdul: fits.HDUList) -> None:
    """Raise if an uncompressed file is shorter than its headers promise."""
    if path.suffix.lower() in (".gz", ".fz", ".bz2"):
        return
    with open(path, "rb") as handle:
        if handle.read(3) in (b"\x1f\x8b\x08", b"BZh"):
            return  # compressed under a plain name (astropy reads it by its magic bytes): sizes are not comparable
    size = path.stat().st_size
    for i, hdu in enumerate(hdul):
        info = hdu.fileinfo()
        if info is None:
            continue
        end = info["datLoc"] + info["datSpan"]
        if end > size:
            raise InputError(f"{path}: truncated FITS file (HDU {i} needs {end} bytes, file has {size})")


#: Bytes after a file's last HDU beyond which it is refused before astropy reads them (it holds them in memory,
#: about twice over, looking for another HDU: a frame with 50 GB of trailing zeros took 14 GB and counting).
#: Counted in the decompressed stream of a gzip file too (a 50 MB ``.gz`` can hold 50 GB of zeros).
MAX_TRAILING_BYTES = 1 << 24

#: Pixels one HDU may declare (a 23k x 23k image; a Euclid CCD has 17 million). Astropy allocates what a header
#: declares once the data are there, and a gzip or tile-compressed file holds a declared 10^10 zeros in a few MB.
MAX_HDU_PIXELS = 1 << 29


def _declared(cards: dict, prefix: str) -> int:
    """Product of the ``{prefix}NAXISn`` values of a header's cards (0 for no axes); -1 when one is negative (a
    damaged header: see :func:`_hdu_extent`)."""
    naxis = int(cards.get(f"{prefix}NAXIS", "0"))
    if naxis < 0 or naxis > 999:
        return -1
    n = 1 if naxis else 0
    for axis in range(1, naxis + 1):
        size = int(cards.get(f"{prefix}NAXIS{axis}", "0"))
        if size < 0:
            return -1
        n *= size
    return n


#: The bytes a FITS header may hold (printable ASCII).
_PRINTABLE = bytes(range(32, 127))


def _hdu_extent(path: Path, handle, size: int | None) -> int | None:
    """Bytes the HDUs of a FITS stream occupy, from their headers alone (2880-byte blocks).

    ``handle`` is read forward only (a gzip stream seeks forward by decompressing, without holding what it skips);
    ``size`` is the stream's length, None where unknown. Returns None where the headers cannot be walked (left to
    astropy's own checks).

    Raises
    ------
    InputError
        An HDU declares more than :data:`MAX_HDU_PIXELS` pixels (or compressed-image pixels).
    """
    end = 0
    index = 0
    while size is None or end < size:
        handle.seek(end)
        cards: dict = {}
        blocks = 0
        while True:
            block = handle.read(2880)
            blocks += 1
            if blocks == 1:
                opens = block.startswith(b"SIMPLE  =" if end == 0 else b"XTENSION=")
            if opens and blocks > 1 and len(block) == 2880 and block.translate(None, _PRINTABLE):
                # a header is printable ASCII: this one ran into its data (or the file's end) with no END card
                raise InputError(f"{path}: HDU {index}'s header has no END card (it runs into binary data): damaged")
            if len(block) < 2880 or blocks > 1000:
                if blocks > 1 and opens:  # a header that opens as one and never ends (its END card lost)
                    raise InputError(f"{path}: HDU {index}'s header has no END card (in {blocks - 1} blocks of "
                                     "2880 bytes): damaged")
                return None if end == 0 else end
            for k in range(0, 2880, 80):
                card = block[k:k + 80].decode("ascii", "replace")
                key = card[:8].strip()
                if key == "END":
                    break
                if card[8:10] == "= " and key not in cards:
                    cards[key] = card[10:].split("/")[0].strip()
            else:
                if end > 0 and blocks == 1 and not (block.startswith(b"XTENSION") or block.strip(b" ")):
                    return end  # not a header: what follows the last HDU
                continue
            break
        if end > 0 and "XTENSION" not in cards:
            return end
        try:
            bitpix = int(cards.get("BITPIX", "8"))
            if bitpix not in (8, 16, 32, 64, -32, -64):
                raise InputError(f"{path}: HDU {index} has BITPIX = {bitpix}, not a FITS value (8, 16, 32, 64, -32, -64)")
            bitpix = abs(bitpix)
            n = _declared(cards, "")
            zn = _declared(cards, "Z") if "ZNAXIS" in cards else 0
            if n < 0 or zn < 0 or int(cards.get("GCOUNT", "1")) < 0 or int(cards.get("PCOUNT", "0")) < 0:
                # (a negative size moved the walk backwards: it never ended)
                raise InputError(f"{path}: HDU {index} declares a negative size (NAXIS, NAXISn, PCOUNT or GCOUNT "
                                 "below 0): damaged header")
            pixels = max(n if "ZNAXIS" not in cards else 0, zn)
            n = int(cards.get("GCOUNT", "1")) * (int(cards.get("PCOUNT", "0")) + n)
        except ValueError:
            return None
        if pixels > MAX_HDU_PIXELS:
            raise InputError(f"{path}: HDU {index} declares {pixels} pixels, more than the {MAX_HDU_PIXELS} one "
                             "image may have here (a damaged header or a decompression bomb)")
        if "ZNAXIS" in cards:  # a tile-compressed image: its tiles must be at least a pixel on each axis
            for axis in range(1, int(cards.get("ZNAXIS", "0") or 0) + 1):
                tile = cards.get(f"ZTILE{axis}")
                try:
                    bad = tile is not None and int(tile) < 1
                except ValueError:
                    bad = True
                if bad:
                    raise InputError(f"{path}: HDU {index} has ZTILE{axis} = {tile}: a compressed image's tiles are "
                                     "at least 1 pixel across (damaged header)")
        end += blocks * 2880 + -(-(n * bitpix // 8) // 2880) * 2880
        index += 1
    return end


def _compression(path: Path) -> str:
    """'gzip' or 'bzip2' when a file is so compressed, by its magic bytes (whatever its name); '' otherwise."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(3)
    except OSError:
        return ""
    return "gzip" if magic[:2] == b"\x1f\x8b" else "bzip2" if magic == b"BZh" else ""


def _check_gzip(path: Path, chunk: int = 1 << 24) -> str:
    """Raise if a gzip- or bzip2-compressed file fails its check, ends early (astropy may stop reading before the
    check), is compressed twice, or decompresses to more than :data:`MAX_TRAILING_BYTES` after its last HDU; read as
    a stream, in bounded memory.  Returns what lies after the last HDU in the decompressed stream when anything does
    (for the message when astropy then refuses the file), else an empty string."""
    kind = _compression(path)
    if not kind:
        for suffix, name in ((".gz", "gzip"), (".bz2", "bzip2")):
            if path.suffix.lower() == suffix:
                raise InputError(f"{path}: damaged {name} file (named {suffix}, but not {name}-compressed)")
        return ""
    named = {".gz": "gzip", ".bz2": "bzip2"}.get(path.suffix.lower())
    if named and named != kind:  # astropy decompresses by the name: it would read nothing
        raise InputError(f"{path}: named {path.suffix} ({named}), but its content is {kind}-compressed; rename it "
                         f"{'.gz' if kind == 'gzip' else '.bz2'}")
    opener = gzip.open if kind == "gzip" else bz2.open
    trailing = 0
    try:
        with opener(path, "rb") as handle:
            magic = handle.read(3)
            inner = "gzip" if magic[:2] == b"\x1f\x8b" else "bzip2" if magic == b"BZh" else ""
            if inner:
                raise InputError(f"{path}: {kind}-compressed {inner} data (compressed twice): decompress it once "
                                 "more first")
            extent = _hdu_extent(path, handle, None)
            trailing = handle.tell() - extent if extent is not None else 0
            while block := handle.read(chunk):
                if extent is None:
                    continue
                trailing += len(block)
                if trailing > MAX_TRAILING_BYTES:
                    raise InputError(f"{path}: decompresses to more than {MAX_TRAILING_BYTES} bytes after its last "
                                     f"HDU ({extent} bytes of FITS): not a FITS file as written (padded, damaged "
                                     "or a decompression bomb)")
    except (OSError, EOFError, zlib.error, ValueError) as exc:  # (bz2: OSError "Invalid data stream")
        raise InputError(f"{path}: damaged {kind} file ({reason(exc)})") from None
    return f"{trailing} bytes after its last HDU ({extent} bytes of FITS, decompressed)" if trailing > 0 else ""


def _check_cards(path: Path, hdul: fits.HDUList) -> None:
    """Raise, naming the card, if a header card of an image HDU cannot be parsed (e.g. ``EXPTIME = NaN``)."""
    for i, hdu in enumerate(hdul):
        if i > 0 and not hdu.is_image:
            continue
        for card in hdu.header.cards:
            raw = str(getattr(card, "_image", "") or "")[10:40].split("/")[0].strip()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", fits.verify.VerifyWarning)
                    value = card.value
            except (fits.VerifyError, ValueError):
                raise InputError(f"{path}: HDU {i} header card {card.keyword or '?'} has a value FITS cannot parse "
                                 f"({raw!r}); fix or remove the card") from None
            if isinstance(value, float) and not math.isfinite(value):  # 1E400 reads as infinity
                raise InputError(f"{path}: HDU {i} header card {card.keyword or '?'} = {raw} is not a finite "
                                 "number; fix or remove the card")


def _check_trailing(path: Path) -> str:
    """Refuse an uncompressed file with more than :data:`MAX_TRAILING_BYTES` after its last HDU, or an HDU that
    declares more than :data:`MAX_HDU_PIXELS` pixels (tile-compressed images included); returns what lies after the
    last HDU when anything does (for the message when astropy then refuses the file), else an empty string."""
    if _compression(path) or path.suffix.lower() == ".bz2":
        return ""  # compressed: checked as a stream by _check_gzip
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            extent = _hdu_extent(path, handle, size)
    except OSError:
        return ""
    if extent is not None and size - extent > MAX_TRAILING_BYTES:
        raise InputError(f"{path}: {size - extent} bytes after its last HDU ({extent} bytes of FITS): not a FITS "
                         "file as written (padded or damaged)")
    if extent is not None and size > extent:
        return f"{size - extent} bytes after its last HDU ({extent} bytes of FITS)"
    return ""


#: What is wrong with a path that holds a NUL byte.
NUL_IN_NAME = "no file can have this name (it holds a NUL byte)"


def check_path_names(paths) -> None:
    """Refuse a path holding a NUL byte (no file can have that name; Python's own error names no path).

    Raises
    ------
    InputError
        Naming the path (its NUL shown as an escape).
    """
    for path in paths:
        if path is not None and "\x00" in str(path):
            raise InputError(f"{path}: {NUL_IN_NAME}")


def check_regular_file(path, role: str = "FITS") -> None:
    """Refuse, before opening it, a path that exists as a pipe, a device or a directory (a pipe would block for
    ever, ``/dev/zero`` reads without end), or that cannot be looked at; a missing one is reported where it is
    read."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise InputError(f"{path}: cannot read the {role} file ({exc.strerror or exc})") from None
    except ValueError:  # a NUL byte in the path (campaign 33: Python's "embedded null byte", an internal error)
        raise InputError(f"{path}: {NUL_IN_NAME}") from None
    if not stat.S_ISREG(mode):
        raise InputError(f"{path}: not a regular file (a pipe, device or directory is not a {role} file)")


def _open(path: Path) -> fits.HDUList:
    check_regular_file(path)
    trailing = _check_gzip(path) or _check_trailing(path)
    problem = ""
    with warnings.catch_warnings():
        # astropy leaves the file open when it raises (NAXIS = 999): closed here, when its traceback goes
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", AstropyUserWarning)
                hdul = fits.open(path, memmap=False, lazy_load_hdus=False)
        except (OSError, ValueError, IndexError, TypeError, KeyError) as exc:  # KeyError: NAXIS = 999, no NAXIS3
            problem = reason(exc)
    if problem and trailing:  # astropy read the bytes after the last HDU as another header
        raise InputError(f"{path}: {trailing}: not a FITS file as written (padded or damaged)")
    if problem:
        raise InputError(f"{path}: not a readable FITS file ({problem})")
    if not hdul or not isinstance(hdul[0], (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
        hdul.close()  # e.g. SIMPLE = F: astropy reads it as a non-standard HDU it cannot take apart
        raise InputError(f"{path}: not a standard FITS file (its primary header is not a standard one: SIMPLE = F?)")
    problems = [str(w.message) for w in caught if issubclass(w.category, AstropyUserWarning)]
    if problems and trailing:
        hdul.close()
        raise InputError(f"{path}: {trailing}: not a FITS file as written (padded or damaged)")
    if problems:
        hdul.close()
        kind = "truncated FITS file" if any("truncated" in p for p in problems) else "damaged FITS file"
        raise InputError(f"{path}: {kind} ({problems[0]})")
    return hdul


def _text(value) -> str:
    return "" if value is None else str(value).strip()


def scan_file(path: Path, config: IOConfig, *, warn: bool = True) -> list[CCDRef]:
    """List the CCD images in one FITS file with their times (``warn``: log its time keywords' problems).

    Raises
    ------
    InputError
        Unreadable or truncated file, no image, or no usable observation time.
    """
    hdul = _open(path)
    try:
        _check_complete(path, hdul)
        _check_cards(path, hdul)
        primary = hdul[0].header
        named: dict[str, dict[str, int]] = {}
        for i, hdu in enumerate(hdul):
            match = _EUCLID_EXT.match(_text(hdu.header.get("EXTNAME")))
            if match:
                if not hdu.is_image:
                    raise InputError(f"{path}: HDU {i} ({_text(hdu.header.get('EXTNAME'))}) is not an image "
                                     f"(XTENSION = {_text(hdu.header.get('XTENSION'))!r})")
                kinds = named.setdefault(match.group("ccd"), {})
                kind = match.group("kind").upper()
                if kind in kinds:  # the last one would win silently (a stray copy read instead of the image)
                    raise InputError(f"{path}: HDUs {kinds[kind]} and {i} are both named "
                                     f"{_text(hdu.header.get('EXTNAME'))!r}: which one is the CCD's is ambiguous")
                kinds[kind] = i
        refs: list[CCDRef] = []
        if named:
            layout = [(ccd, kinds["SCI"], kinds.get("RMS"), kinds.get("FLG")) for ccd, kinds in named.items() if "SCI" in kinds]
            lacking = sorted(ccd for ccd, kinds in named.items() if "SCI" not in kinds)
            if lacking and not layout:
                raise InputError(f"{path}: no SCI image extension (only {', '.join(sorted(named[lacking[0]]))} of "
                                 f"CCD {lacking[0]})")
            if lacking and warn:
                log.warning("%s: CCD(s) %s have no SCI image extension (only their noise or flag maps): left out", path,
                            ", ".join(lacking))
        else:
            images = [
                i for i, hdu in enumerate(hdul)
                if hdu.is_image and hdu.header.get("NAXIS", 0) == 2 and hdu.header.get("NAXIS1", 0) > 0
            ]
            if not images:
                raise InputError(f"{path}: no 2-D image in the file")
            layout = []
            for i in images:
                header = hdul[i].header
                ccd = _text(first_keyword(header, [k for k in config.detector_keys if k != "EXTNAME"]))
                if not ccd and i > 0:
                    ccd = _text(header.get("EXTNAME"))
                if not ccd:
                    ccd = f"hdu{i}" if len(images) > 1 else "0"
                layout.append((ccd, i, None, None))
        noted: set = set()
        for ccd, sci, rms, flg in layout:
            header = hdul[sci].header
            try:
                obs = observation_time(header, config, fallback=primary if sci != 0 else None)
            except ValueError as exc:
                raise InputError(f"{path}: {exc}") from None
            for note in obs.notes if warn else ():
                if note not in noted:  # once per file, not per CCD
                    noted.add(note)
                    log.warning("%s: %s (the time comes from %s)", path, note, obs.source)
            for hdr, where in ((header, "" if sci == 0 else f" (HDU {sci})"), (primary if sci != 0 else None, "")):
                for note in conflicting_cards(hdr, config) if warn and hdr is not None else ():
                    if note + where not in noted:  # (campaign 34: the first card was read without a word)
                        noted.add(note + where)
                        log.warning("%s%s: %s", path, where, note)
            bad_gain = _unusable_gain(header, primary if sci != 0 else None, config)
            if warn and bad_gain and bad_gain not in noted:
                noted.add(bad_gain)
                log.warning("%s: %s; the default gain (%g e-/ADU, [io] default_gain) is used", path, bad_gain,
                            config.default_gain)
            problems = _unusable_calibration(header, primary if sci != 0 else None, config, obs.exptime)
            for problem in problems if warn else ():
                if problem not in noted:
                    noted.add(problem)
                    log.warning("%s: %s", path, problem)
            refs.append(
                CCDRef(
                    path=str(path),
                    sci=sci,
                    rms=rms,
                    flg=flg,
                    ccd=str(ccd),
                    mjd=float(obs.mid.mjd),
                    exptime=obs.exptime,
                    filter=_text(first_keyword(header, config.filter_keys, first_keyword(primary, config.filter_keys))),
                    instrument=_text(
                        first_keyword(header, config.instrument_keys, first_keyword(primary, config.instrument_keys))
                    ),
                    time_source=obs.source,
                    frame_type=frame_type(header if any(k in header for k in config.frame_type_keys) else primary,
                                          config.frame_type_keys),
                    observer=_observer_position(path, header, primary, config.observer_position_keys),
                    telescope=_text(header.get("TELESCOP", primary.get("TELESCOP", ""))),
                    station=station_code(header) or station_code(primary) or "",
                )
            )
        return refs
    finally:
        hdul.close()


#: Zero points [mag] a header may give (for 1 ADU/s, or for the exposure's counts): outside, the keyword is damaged
#: (``MAGZERO = 1e30`` made every magnitude of an exposure vanish and every reference star "saturated").
ZEROPOINT_RANGE = (5.0, 50.0)
#: Saturation levels from a header must lie below this [ADU] (a float32 image holds no larger value; 1e300 overflowed).
MAX_SATURATION = 1e30


def _number(value) -> float | None:
    """A header value as a finite number; None for none, a logical (T would read as 1), text that is no number or
    a value that is not finite (read as :func:`_first_unusable` judges it)."""
    if value is None or isinstance(value, (bool, np.bool_)):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _first_unusable(merged, keys, usable, what: str) -> str:
    """Why the first of ``keys`` present in ``merged`` is unusable (not a number, or ``usable(number)`` false: "is
    not ``what``"); empty when it is usable or none is present."""
    for key in keys:
        value = first_keyword(merged, [key])
        if value is None:
            continue
        if isinstance(value, (bool, np.bool_)):  # (T would read as 1)
            return f"{key} = {'T' if value else 'F'} is not a number"
        try:
            number = float(value)
        except (TypeError, ValueError):
            return f"{key} = {value!r} is not a number"
        return "" if np.isfinite(number) and usable(number) else f"{key} = {value!r} is not {what}"
    return ""


#: The largest gain [e-/ADU] taken from a header; a larger one (or none, or one not above 0) gives
#: ``[io] default_gain`` instead, with a warning.
MAX_GAIN = 1000.0


def _unusable_gain(header, primary, config: IOConfig) -> str:
    """Why the gain keyword of a CCD's header (merged with its primary header, as :func:`read_ccd` reads it) is
    unusable (non-numeric, infinite, not above 0 or above :data:`MAX_GAIN`: :func:`read_ccd` then takes
    ``config.default_gain``); empty when it is usable or absent."""
    merged = merge_headers(header, primary) if primary is not None else header
    return _first_unusable(merged, config.gain_keys, lambda g: 0 < g <= MAX_GAIN,
                           f"a gain (above 0, at most {MAX_GAIN:g} e-/ADU)")


def _unusable_calibration(header, primary, config: IOConfig, exptime: float) -> list[str]:
    """Why the zero-point and saturation keywords of a CCD's header are unusable, with what :func:`read_ccd` does
    instead (one line each; empty when usable or absent).  ``exptime`` [s] turns an exposure's zero point into one
    per second, as :func:`read_ccd` does."""
    merged = merge_headers(header, primary) if primary is not None else header
    lo, hi = ZEROPOINT_RANGE
    problems = []
    zp = _first_unusable(merged, config.zeropoint_keys, lambda z: lo <= z <= hi, f"a zero point ({lo:g}-{hi:g} mag)")
    if not zp and first_keyword(merged, config.zeropoint_keys) is None and exptime > 0:
        shift = 2.5 * math.log10(exptime)
        zp = _first_unusable(merged, config.zeropoint_total_keys, lambda z: lo <= z - shift <= hi,
                             f"an exposure's zero point ({lo + shift:.4g}-{hi + shift:.4g} mag for {exptime:g} s)")
    if zp:
        problems.append(f"{zp}; the default zero point ({config.default_zeropoint:g}, [io] default_zeropoint) is used")
    sat = _first_unusable(merged, config.saturation_keys, lambda v: 0 < v < MAX_SATURATION,
                          f"a saturation level (above 0, below {MAX_SATURATION:g})")
    if sat:
        problems.append(f"{sat}; saturation is not masked from it")
    return problems


def scan_inputs(paths, config: IOConfig, *, warn: bool = True) -> list[CCDRef]:
    """Scan every file; refuse runs mixing filters (unless ``config.allow_mixed_filters``; ``warn``: log it) or
    instruments.

    Raises
    ------
    InputError
        From :func:`scan_file`, or when a file's filter/instrument differs from
        the first file's.
    """
    refs: list[CCDRef] = []
    for path in paths:
        refs.extend(scan_file(Path(path), config, warn=warn))
    if not refs:
        raise InputError("no image found in the inputs")
    lights = [ref for ref in refs if ref.frame_type in ("light", "flat")]
    first = lights[0] if lights else refs[0]
    for ref in lights[1:]:
        if ref.filter != first.filter:
            if config.allow_mixed_filters:
                if warn:
                    log.warning("filters %s mixed in one run ([io] allow_mixed_filters): sources are linked across "
                                "them; magnitudes are not reported to ADES/MPC",
                                ", ".join(sorted({repr(r.filter) for r in lights})))
                break
            raise InputError(
                f"{ref.path}: filter {ref.filter!r} differs from {first.filter!r} of {first.path}; one filter per run "
                "(or --allow-mixed-filters)"
            )
    untimed = sorted({ref.path for ref in lights if not ref.exptime > 0})
    if untimed and warn:
        more = f" and {len(untimed) - 1} more" if len(untimed) > 1 else ""
        log.warning("%s%s: no exposure time (%s): taken as 0 s, so the header time is used as the mid-exposure "
                    "time and trails give no rate", untimed[0], more, ", ".join(config.exptime_keys))
    for ref in refs:
        if ref.instrument != first.instrument:
            raise InputError(
                f"{ref.path}: instrument {ref.instrument!r} differs from {first.instrument!r} of {first.path}; "
                "one instrument per run"
            )
    _one_observer(lights, config)
    return refs


def _one_observer(lights: list, config: IOConfig) -> None:
    """Refuse light frames of one run taken by different observers: the reports carry one observatory code,
    telescope and (for a spacecraft) a position per exposure, so frames of another telescope or station would be
    reported under the first one's (frames with MPCCODE I41 and 500 were all reported as I41), and a position on
    some frames only mixes ground and space records of one object."""
    named = [ref for ref in lights if ref.telescope]  # (a frame without TELESCOP says nothing)
    for ref in named[1:]:
        if ref.telescope.casefold() != named[0].telescope.casefold():  # ('NEOSSat' and 'NEOSSAT' are one)
            raise InputError(f"{ref.path}: telescope {ref.telescope!r} (TELESCOP) differs from "
                             f"{named[0].telescope!r} of {named[0].path}; one telescope per run")
    coded = [ref for ref in lights if ref.station]
    for ref in coded[1:]:
        if ref.station != coded[0].station:
            raise InputError(f"{ref.path}: observatory code {ref.station} differs from {coded[0].station} of "
                             f"{coded[0].path}; one observatory per run")
    placed = [ref for ref in lights if ref.observer is not None]
    if placed and len(placed) < len(lights):
        bare = next(ref for ref in lights if ref.observer is None)
        k = config.observer_position_keys
        keys = ", ".join("/".join(k[i:i + 3]) for i in range(0, len(k), 3))
        raise InputError(f"{bare.path}: no observer position ({keys}) while {placed[0].path} has one; a run's frames "
                         "are all from one spacecraft (each with its position) or all from the ground")
    # one spacecraft's path: no faster than MAX_OBSERVER_SPEED_KMS between frames (positions in metres on every
    # frame, 7.15e6 "km" for a low orbit, had been reported in ADES as kilometres)
    path = sorted(placed, key=lambda ref: ref.mjd)
    for a, b in zip(path, path[1:]):
        dt = abs(b.mjd - a.mjd) * 86400.0
        step = math.dist(a.observer, b.observer)
        if step > MAX_OBSERVER_SPEED_KMS * max(dt, 1.0):
            raise InputError(f"{b.path}: its observer position lies {step:.4g} km from that of {a.path}, {dt:.0f} s "
                             f"earlier ({step / max(dt, 1.0):.3g} km/s; a spacecraft moves at most "
                             f"{MAX_OBSERVER_SPEED_KMS:g} km/s): positions in another unit than km?")


#: Fastest a spacecraft's geocentric position may move between a run's frames [km/s] (a low orbit: 7.5; an orbit
#: about the Sun seen from the Earth: tens).
MAX_OBSERVER_SPEED_KMS = 100.0




def _observer_position(path, header, primary, keys) -> tuple | None:
    """Spacecraft position [km] from the first triplet of ``keys`` present (extension first, then primary)."""
    for k in range(0, len(keys) - 2, 3):
        triplet = keys[k:k + 3]
        values = [header.get(key, primary.get(key)) for key in triplet]
        if all(v is None for v in values):
            continue
        missing = [key for key, v in zip(triplet, values) if v is None]
        if missing:
            raise InputError(f"{path}: observer position keyword(s) {', '.join(missing)} missing beside "
                             f"{', '.join(k for k in triplet if k not in missing)} (a position needs x, y and z, km)")
        try:
            if any(isinstance(v, bool) for v in values):  # (T/F were read as 1 and 0 km)
                raise ValueError
            position = tuple(float(v) for v in values)
        except (TypeError, ValueError):
            raise InputError(f"{path}: observer position keywords {', '.join(triplet)} must all be numbers (km)") from None
        if not all(np.isfinite(position)):
            raise InputError(f"{path}: observer position keywords {', '.join(triplet)} are not finite")
        if math.hypot(*position) < MIN_OBSERVER_DISTANCE_KM:
            raise InputError(f"{path}: observer position keywords {', '.join(triplet)} put the observer "
                             f"{math.hypot(*position):.4g} km from the Earth's centre, inside the Earth (a spacecraft's "
                             f"geocentric position in km is at least {MIN_OBSERVER_DISTANCE_KM:g} km)")
        if math.hypot(*position) > MAX_OBSERVER_DISTANCE_KM:
            raise InputError(f"{path}: observer position keywords {', '.join(triplet)} put the observer "
                             f"{math.hypot(*position):.3g} km from the Earth's centre (more than "
                             f"{MAX_OBSERVER_DISTANCE_KM:.0e} km: not a geocentric position in km)")
        return position
    return None


def group_exposures(refs: list[CCDRef], config: IOConfig, *, min_exposures: int = 3) -> list[Exposure]:
    """Group CCD images into exposures by mid-exposure time.

    Parameters
    ----------
    refs : list of CCDRef
    config : IOConfig
        ``exposure_grouping_s`` sets how close in time images of one exposure are.
    min_exposures : int
        Fewer exposures than this is an error (linking needs at least 3).

    Returns
    -------
    list of Exposure
        In time order; each ``CCDRef.exposure`` is set to its exposure index.
    """
    ordered = sorted(refs, key=lambda r: (r.mjd, r.path, r.ccd))
    groups: list[list[CCDRef]] = []
    for ref in ordered:
        if groups and (ref.mjd - groups[-1][0].mjd) * 86400.0 <= config.exposure_grouping_s:
            groups[-1].append(ref)
        else:
            groups.append([ref])
    exposures: list[Exposure] = []
    for index, group in enumerate(groups):
        seen: dict[str, CCDRef] = {}
        updated = []
        for ref in group:
            if ref.ccd in seen:
                raise InputError(
                    f"{ref.path}: CCD {ref.ccd!r} at MJD {ref.mjd:.6f} duplicates {seen[ref.ccd].path} (files within "
                    f"[io] exposure_grouping_s = {config.exposure_grouping_s:g} s of each other are one exposure)"
                )
            seen[ref.ccd] = ref
            updated.append(CCDRef(**{**ref.__dict__, "exposure": index}))
        mjd = float(np.mean([r.mjd for r in group]))
        exposures.append(
            Exposure(
                index=index,
                mid_time=Time(mjd, format="mjd", scale="utc"),
                exptime=float(np.median([r.exptime for r in group])),
                ccds=updated,
            )
        )
    if len(exposures) < min_exposures:
        files = ", ".join(sorted({Path(r.path).name for r in refs}))
        raise InputError(
            f"{files}: only {len(exposures)} exposure(s) found (distinct times); linking needs at least {min_exposures}"
        )
    return exposures


def common_ccds(exposures: list[Exposure]) -> list[str]:
    """The CCDs present in every exposure, sorted."""
    return sorted({r.ccd for r in exposures[0].ccds if all(any(q.ccd == r.ccd for q in e.ccds) for e in exposures)})


#: Noise map values [ADU] at and above which a pixel is unusable (its square nears float32's largest number).
MAX_RMS = 1e15


try:  # what astropy raises for a damaged tile-compressed (.fz) image; not part of its public names
    from astropy.io.fits.hdu.compressed._compression import CfitsioException as _DecompressionError
except ImportError:  # pragma: no cover - another astropy layout: its errors are OSError or ValueError there
    _DecompressionError = OSError


def read_ccd(ref: CCDRef, config: IOConfig) -> CCDImage:
    """Read the pixels and metadata of one CCD image.

    Raises
    ------
    InputError
        The image data cannot be read (e.g. a truncated compressed file).
    """
    path = Path(ref.path)
    try:
        with fits.open(path, memmap=False) as hdul:
            primary = hdul[0].header
            header = hdul[ref.sci].header.copy()
            data = np.asarray(hdul[ref.sci].data, dtype=np.float32)
            rms = np.asarray(hdul[ref.rms].data, dtype=np.float32) if ref.rms is not None else None
            flags = np.asarray(hdul[ref.flg].data) if ref.flg is not None else None
    except (OSError, ValueError, TypeError, EOFError, KeyError, IndexError, _DecompressionError) as exc:
        # (IndexError: a tile-compressed image whose ZNAXISn disagree with its tiles)
        raise InputError(f"{path}: cannot read CCD {ref.ccd} ({reason(exc)})") from None
    if data.ndim != 2:
        raise InputError(f"{path}: CCD {ref.ccd} is not a 2-D image (shape {data.shape})")
    merged = merge_headers(header, primary if ref.sci != 0 else None)
    mask = ~np.isfinite(data)
    if rms is not None:
        if rms.shape != data.shape:
            raise InputError(f"{path}: RMS of CCD {ref.ccd} has shape {rms.shape}, SCI has {data.shape}")
        # (a noise of 1e30 overflows float32 when squared into a variance: no usable measurement there)
        mask |= ~np.isfinite(rms) | (rms <= 0) | (rms >= MAX_RMS)
    if flags is not None:
        if flags.shape != data.shape:
            raise InputError(f"{path}: FLG of CCD {ref.ccd} has shape {flags.shape}, SCI has {data.shape}")
        if not np.issubdtype(flags.dtype, np.integer):  # a float flag map: a value that is no whole number masks
            finite = np.isfinite(flags)
            odd = ~finite | (np.abs(np.where(finite, flags, 0.0)) >= 2.0**62)
            if odd.any():
                log.warning("%s: FLG of CCD %s holds %d non-finite or out-of-range values: those pixels are masked",
                            path, ref.ccd, int(odd.sum()))
                mask |= odd
            flags = np.where(odd, 0, flags).astype(np.int64)
        mask |= (flags.astype(np.int64) & config.flag_mask) != 0
    saturation = _number(first_keyword(merged, config.saturation_keys))
    if saturation is not None and not 0 < saturation < MAX_SATURATION:
        saturation = None  # (named by scan_file: SATURATE = -1 had masked every pixel)
    saturated = np.zeros(data.shape, bool)
    if saturation is not None:
        with np.errstate(invalid="ignore"):
            saturated = data >= saturation
        mask |= saturated
    gain = _number(first_keyword(merged, config.gain_keys))
    if gain is None or not 0 < gain <= MAX_GAIN:
        gain = config.default_gain
    zeropoint, zp_source = config.default_zeropoint, "default"
    given = first_keyword(merged, config.zeropoint_keys)
    zp = _number(given)
    total = _number(first_keyword(merged, config.zeropoint_total_keys))  # for the exposure's counts, not per second
    if zp is not None:
        zeropoint, zp_source = zp, "header"
    elif given is None and total is not None and ref.exptime > 0:  # (an unusable zero point: the default, named)
        zeropoint, zp_source = total - 2.5 * np.log10(ref.exptime), "header"
    if not (np.isfinite(zeropoint) and ZEROPOINT_RANGE[0] <= zeropoint <= ZEROPOINT_RANGE[1]):
        zeropoint, zp_source = config.default_zeropoint, "default"  # (named by scan_file)
    wcs, problem = celestial_wcs(merged, shape=data.shape)
    return CCDImage(
        ref=ref,
        data=data,
        rms=rms,
        mask=mask,
        saturated=saturated,
        header=merged,
        wcs=wcs,
        wcs_problem=problem,
        gain=gain,
        zeropoint=zeropoint,
        zeropoint_source=zp_source,
        saturation=saturation,
    )


#: Exposures farther apart than this [days] are named in a warning: linking assumes straight, uniform motion,
#: which holds over a night or two, not over weeks.
MAX_SEQUENCE_GAP_DAYS = 2.0
#: Consecutive exposures overlapping by more than this [s] (one camera cannot) are reported: EXPTIME or the
#: time keyword is wrong.
MAX_EXPOSURE_OVERLAP_S = 1.0


def sequence_problems(exposures: list[Exposure]) -> list[str]:
    """What in the exposures' times would keep movers from being linked, one line each (empty when nothing).

    * CCDs in fewer than 3 exposures while others are in more (a file laid out unlike the others);
    * consecutive exposures more than :data:`MAX_SEQUENCE_GAP_DAYS` apart;
    * consecutive exposures overlapping in time by more than :data:`MAX_EXPOSURE_OVERLAP_S` (EXPTIME too long or
      wrong times);
    * the exposures' time order differs from the order of their files' names (a sign of wrong DATE-OBS
      values, reported by the caller only when nothing was linked).
    """
    problems = []
    seen: dict = {}
    for e in exposures:
        for r in e.ccds:
            seen.setdefault(r.ccd, []).append(r)
    if len(exposures) >= 3:
        lonely = sorted(ccd for ccd, refs in seen.items() if len(refs) < 3)
        if lonely and len(lonely) < len(seen):  # (CCDs named per file alike everywhere: nothing odd)
            files = sorted({Path(r.path).name for ccd in lonely for r in seen[ccd]})
            problems.append(f"CCD(s) {', '.join(lonely[:5])}{' ...' if len(lonely) > 5 else ''} of "
                            f"{', '.join(files[:3])}{' ...' if len(files) > 3 else ''} are in fewer than 3 of the "
                            f"{len(exposures)} exposures: their detections cannot be linked (a file whose extensions "
                            "are not named as the others' are: EXTNAME/DETECTOR?)")
    for a, b in zip(exposures, exposures[1:]):
        gap = float(b.mid_time.mjd - a.mid_time.mjd)
        overlap = 0.5 * (a.exptime + b.exptime) - gap * 86400.0
        if overlap > MAX_EXPOSURE_OVERLAP_S:
            problems.append(f"exposures {a.index} ({Path(a.ccds[0].path).name}, {a.exptime:g} s) and {b.index} "
                            f"({Path(b.ccds[0].path).name}, {b.exptime:g} s) overlap by {overlap:.4g} s: their mid-times "
                            f"are {gap * 86400.0:.4g} s apart; check EXPTIME and DATE-OBS (trail lengths and rates "
                            "are computed from them)")
        if gap > MAX_SEQUENCE_GAP_DAYS:
            problems.append(f"exposures {a.index} ({Path(a.ccds[0].path).name}) and {b.index} "
                            f"({Path(b.ccds[0].path).name}) are {gap:.1f} days apart: linking assumes straight, "
                            "uniform motion over the sequence (hours to a night or two)")
    return problems


def time_order_differs(exposures: list[Exposure]) -> str:
    """A line naming the files in time order when that differs from their names' order (else empty)."""
    names = [Path(e.ccds[0].path).name for e in exposures]
    if len(set(names)) == len(names) and names != sorted(names):
        return f"the files' times order them {', '.join(names)}, unlike their names: check DATE-OBS/MJD-OBS"
    return ""


def header_centres(refs: list[CCDRef]) -> tuple[np.ndarray, np.ndarray, float] | None:
    """Sky centres [deg] of the CCD images by their header WCSs and the largest half-diagonal [deg]; None when
    any image has no usable header WCS (then nothing says where the field is)."""
    ra, dec, half = [], [], 0.0
    for ref in refs:
        try:
            with fits.open(ref.path, memmap=False) as hdul:
                header = hdul[0].header.copy() if ref.sci != 0 else fits.Header()
                header.update(hdul[ref.sci].header)
        except (OSError, ValueError):
            return None
        shape = (int(header.get("NAXIS2", 0)), int(header.get("NAXIS1", 0)))
        wcs, _ = celestial_wcs(header, shape=shape)
        if wcs is None or min(shape) <= 0:
            return None
        x = np.array([0.5 * (shape[1] - 1), 0.0])
        y = np.array([0.5 * (shape[0] - 1), 0.0])
        r, d = wcs.all_pix2world(x, y, 0)
        if not np.all(np.isfinite([*r, *d])):
            return None
        ra.append(float(r[0]))
        dec.append(float(d[0]))
        c1, c2 = np.radians([d[0], d[1]])
        cos = math.sin(c1) * math.sin(c2) + math.cos(c1) * math.cos(c2) * math.cos(math.radians(r[0] - r[1]))
        half = max(half, math.degrees(math.acos(min(1.0, max(-1.0, cos)))))
    return (np.array(ra), np.array(dec), half) if ra else None
