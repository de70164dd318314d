"""Master bias, dark and flat frames, and their application to raw images.

Raw frames are integer images straight from the detector.  Each is first
reduced by its overscan (the median of the ``BIASSEC`` columns, row by row) and
trimmed to ``TRIMSEC`` when the header has them.  Masters are sigma-clipped
means over the frames of a kind:

* bias: the frames themselves;
* dark: ``(dark - bias) / exptime``, a current per second, scaled to each
  image's exposure time;
* flat: ``(flat - bias - dark * exptime)``, each normalised by its median, then
  combined and normalised again.

A science frame becomes ``(raw - bias - dark * exptime) / flat``.  Pixels at the
raw saturation level (the ``SATURATE`` keyword or the top of the integer range)
and pixels whose flat is not positive are returned as a mask.

Pixel convention: 0-based ``(ny, nx)`` arrays after trimming; FITS sections are
1-based and inclusive, ``[x1:x2,y1:y2]``.
"""
from __future__ import annotations

import logging
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.stats import sigma_clip

from ssodetect.config import Config
from ssodetect.errors import InputError
from ssodetect.io.frames import scan_file
from ssodetect.io.headers import fits_text, frame_type, merge_headers

__all__ = ["FRAME_TYPES", "MasterFrames", "build_calibration", "build_masters", "hot_pixel_map", "sequence_hot_pixels", "add_hot_pixel_maps", "calibrate_ccd", "frame_type", "parse_section",
           "raw_saturation", "reduce_overscan"]

log = logging.getLogger(__name__)

#: Frame kinds understood from header type keywords.
FRAME_TYPES = ("light", "bias", "dark", "flat")

_SECTION = re.compile(r"^\[\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*\]$")


def parse_section(text: str, shape: tuple[int, int], *, clip: bool = False,
                  reversed_ok: bool = False) -> tuple[slice, slice]:
    """Array slices ``(rows, columns)`` of a FITS section ``[x1:x2,y1:y2]`` (1-based, inclusive).

    ``clip``: a section that starts inside the image but runs past its end (a partial read-out of a
    detector whose full size the section describes, as NEOSSat's) is cut to the image.
    ``reversed_ok``: a section that runs backwards (``x1 > x2``) is taken as the same pixels (an overscan's
    median does not care); otherwise it is refused: in IRAF's convention it flips the data, which a trim that
    only cut would get wrong (every position mirrored) without a word.

    Raises
    ------
    ValueError
        Malformed section or one outside an image of ``shape`` (ny, nx).
    """
    match = _SECTION.match(str(text).strip())
    if not match:
        raise ValueError(f"malformed section {text!r} (expected [x1:x2,y1:y2])")
    x1, x2, y1, y2 = (int(v) for v in match.groups())
    if not reversed_ok and (x1 > x2 or y1 > y2):
        raise ValueError(f"section {text!r} runs backwards (a flipped read-out), which is not supported: "
                         "flip the frame and write the section in increasing order")
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    ny, nx = shape
    if clip and 1 <= x1 <= nx and 1 <= y1 <= ny:
        x2, y2 = min(x2, nx), min(y2, ny)
    if x1 < 1 or y1 < 1 or x2 > nx or y2 > ny:
        raise ValueError(f"section {text!r} lies outside the {nx}x{ny} image")
    return slice(y1 - 1, y2), slice(x1 - 1, x2)


def raw_saturation(header: fits.Header, raw: np.ndarray, keys: list[str]) -> float | None:
    """Raw saturation level [ADU]: a saturation keyword, else the top of an integer image's range."""
    for key in keys:
        if key in header:
            try:
                return float(header[key])
            except (TypeError, ValueError):
                continue
    bitpix = int(header.get("BITPIX", 0))
    if bitpix > 0:
        bzero = float(header.get("BZERO", 0.0))
        bscale = float(header.get("BSCALE", 1.0))
        top = 2 ** (bitpix - 1) - 1
        return top * bscale + bzero
    return None


def reduce_overscan(data: np.ndarray, header: fits.Header, path: str, *, overscan: bool = True,
                    trim: bool = True) -> np.ndarray:
    """Subtract the row-by-row median overscan (``BIASSEC``) and cut to ``TRIMSEC``.

    Sections running past the image's end (partial read-outs) are cut to the image.

    Raises
    ------
    InputError
        A section keyword that cannot be used (names the file).
    """
    out = np.asarray(data, np.float32)
    try:
        if overscan and "BIASSEC" in header:
            rows, cols = _section(header, "BIASSEC", out.shape, path, reversed_ok=True)
            with warnings.catch_warnings():  # (a row of NaN overscan stays NaN; one NaN pixel no longer makes it so)
                warnings.simplefilter("ignore", RuntimeWarning)
                level = np.nanmedian(out[rows, cols], axis=1)
                if rows.stop - rows.start == out.shape[0]:
                    out = out - level[:, None].astype(np.float32)
                else:
                    out = out - np.float32(np.nanmedian(level))
        if trim and "TRIMSEC" in header:
            rows, cols = _section(header, "TRIMSEC", out.shape, path)
            out = out[rows, cols]
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from None
    return np.ascontiguousarray(out)


def _section(header, key: str, shape: tuple[int, int], path, *, reversed_ok: bool = False) -> tuple[slice, slice]:
    """:func:`parse_section` of ``header[key]``, cut to the image when it runs past its end; the cut is said (info:
    a partial read-out of a detector the section describes whole, as NEOSSat's, is no defect, but not silent)."""
    try:
        return parse_section(header[key], shape, reversed_ok=reversed_ok)
    except ValueError:
        rows, cols = parse_section(header[key], shape, clip=True, reversed_ok=reversed_ok)  # (raises when outside)
        log.info("%s: %s %s runs past the %dx%d image: cut to it (a partial read-out)", path, key,
                 str(header[key]).strip(), shape[1], shape[0])
        return rows, cols


def _combine(stack: list[np.ndarray], sigma: float) -> np.ndarray:
    cube = np.stack(stack).astype(np.float32)
    if len(stack) < 3:
        return cube.mean(axis=0)
    with warnings.catch_warnings():  # (NaN pixels, already named per frame, are left out: astropy says so again)
        warnings.filterwarnings("ignore", message="Input data contains invalid values")
        clipped = sigma_clip(cube, sigma=sigma, axis=0, maxiters=3, cenfunc="median", stdfunc="mad_std", masked=True)
    return np.asarray(clipped.mean(axis=0).filled(np.nan), np.float32)


@dataclass
class MasterFrames:
    """Master calibration frames (float32 arrays, shape (ny, nx) after trimming, or None).

    Attributes
    ----------
    bias : ndarray or None
        [ADU].
    dark : ndarray or None
        Dark current [ADU/s].
    flat : ndarray or None
        Normalised flat (median 1).
    counts : dict
        Frames combined per kind.
    sources : dict
        Files combined per kind.
    hot : ndarray of bool or None
        Hot (and cold) pixels found in the light frames themselves (:func:`hot_pixel_map`), given with
        every calibrated frame (``CCDImage.hot``) and treated as hits by the detection; its shape may be
        smaller than a frame's (frames read out with more rows): the map covers the frame's first rows
        and columns.
    """

    bias: np.ndarray | None = None
    dark: np.ndarray | None = None
    flat: np.ndarray | None = None
    counts: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)
    hot: np.ndarray | None = None

    @property
    def empty(self) -> bool:
        return self.bias is None and self.dark is None and self.flat is None and self.hot is None

    def describe(self) -> str:
        parts = [f"{kind} from {self.counts[kind]} frames" for kind in ("bias", "dark", "flat") if self.counts.get(kind)]
        missing = [kind for kind in ("bias", "dark", "flat") if not self.counts.get(kind)]
        text = ", ".join(parts) if parts else "no calibration frames"
        text += f"; no {'/'.join(missing)}: not applied" if missing else ""
        if self.hot is not None:
            text += (f"; {int(self.hot.sum())} hot/cold pixels ({100 * self.hot.mean():.2f} %) found in "
                     f"{self.counts.get('hot', 0)} light frames treated as hits")
        return text

    def apply(self, raw: np.ndarray, exptime: float, path: str = "") -> tuple[np.ndarray, np.ndarray]:
        """Calibrated image [ADU] and a mask of pixels the calibration cannot fix.

        Parameters
        ----------
        raw : ndarray (ny, nx)
            Overscan-reduced, trimmed raw image.
        exptime : float
            Its exposure time [s] (scales the dark).

        Raises
        ------
        InputError
            The image and the masters differ in shape.
        """
        data = np.asarray(raw, np.float32).copy()
        bad = np.zeros(data.shape, bool)
        for name in ("bias", "dark", "flat"):
            master = getattr(self, name)
            if master is not None and master.shape != data.shape:
                raise InputError(f"{path}: image shape {data.shape} differs from the master {name} {master.shape}")
        if self.bias is not None:
            data -= self.bias
        if self.dark is not None:
            data -= self.dark * np.float32(exptime)
        if self.flat is not None:
            good = np.isfinite(self.flat) & (self.flat > 0.05)
            data = np.where(good, data / np.where(good, self.flat, 1.0), np.nan).astype(np.float32)
            bad |= ~good
        return data, bad

    def hot_mask(self, shape: tuple[int, int]) -> np.ndarray | None:
        """:attr:`hot` on an image of ``shape`` (ny, nx) (its first rows and columns; None without a map)."""
        if self.hot is None:
            return None
        out = np.zeros(shape, bool)
        ny, nx = min(self.hot.shape[0], shape[0]), min(self.hot.shape[1], shape[1])
        out[:ny, :nx] = self.hot[:ny, :nx]
        return out

    def write(self, folder, ccd: str | None = None, ccd_keys=("CCDNAME",)) -> list[str]:
        """Write ``master_bias.fits``, ``master_dark.fits``, ``master_flat.fits`` (those that exist) into ``folder``
        (a staging directory, created: :func:`ssodetect.calibrate.outputs.write_calibration` commits it); returns
        their names.  ``ccd`` is written under the first of ``ccd_keys`` its first frame has (else the first of
        them; with no key, the master is written in an extension named ``ccd``), so the masters given back to a run
        calibrate that CCD's lights."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for name, unit in (("bias", "adu"), ("dark", "adu / s"), ("flat", "")):
            master = getattr(self, name)
            if master is None:
                continue
            header = fits.Header()
            sources = self.sources.get(name, [])
            first = fits.getheader(sources[0]) if sources else fits.Header()
            if sources:  # time and exposure of the first frame, so the master reads like any frame
                for key in ("DATE-OBS", "MJD-OBS", "EXPTIME", "INSTRUME", "TELESCOP", "FILTER"):
                    if key in first:
                        header[key] = first[key]
            if ccd is not None and ccd_keys:
                header[next((k for k in ccd_keys if k in first), ccd_keys[0])] = fits_text(ccd, None)
            header["IMAGETYP"] = f"master {name}"
            header["NCOMBINE"] = (self.counts.get(name, 0), "frames combined")
            header["BUNIT"] = unit
            for i, src in enumerate(self.sources.get(name, [])[:99]):
                header[f"SRC{i:02d}"] = str(src)[-68:]
            if ccd is not None and not ccd_keys:  # (CCDs named by EXTNAME alone: the master in a named extension)
                fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(master.astype(np.float32), header,
                                                               name=fits_text(ccd, None))]).writeto(
                    folder / f"master_{name}.fits")
            else:
                fits.PrimaryHDU(master.astype(np.float32), header).writeto(folder / f"master_{name}.fits")
            written.append(f"master_{name}.fits")
        return written


def hot_pixel_map(stack: np.ndarray, *, nsigma: float = 5.0, sharpness: float = 0.7) -> np.ndarray:
    """Pixels that stand out of their neighbours in most frames of a sequence: hot (and cold) pixels.

    The frames' per-pixel median (each frame less its own median level) keeps what stays on the
    detector and loses what the sky's drift moves between frames.  A pixel is flagged where that
    median differs from its 3x3 neighbourhood's median by more than ``nsigma`` times the robust scatter
    of that difference over the image, and where the difference is at least ``sharpness`` times the
    pixel's height above the image's level: a star that stayed put peaks at about half of it (its
    neighbours carry its light), a hot pixel at nearly all of it.

    Subtracting the median pattern instead was tried on NEOSSat's frames (11-13 % of the pixels hot): the
    pixel noise fell from ~240 to ~50 ADU, but the hot pixels that flicker between levels (random
    telegraph signal) then stood out as ~1500 detections per frame; masking leaves ~130.

    Parameters
    ----------
    stack : ndarray (n, ny, nx)
        Overscan-reduced frames of one CCD [ADU], NaN where unknown.
    nsigma : float
        Significance of a flagged pixel.
    sharpness : float
        Smallest share of the pixel's height above the level that its neighbours do not carry.

    Returns
    -------
    ndarray of bool (ny, nx)
    """
    from scipy import ndimage

    levels = np.nanmedian(stack.reshape(len(stack), -1), axis=1).astype(np.float32)
    median = np.nanmedian(stack - levels[:, None, None], axis=0).astype(np.float32)
    median = np.where(np.isfinite(median), median, 0.0).astype(np.float32)
    height = median - float(np.median(median))
    hot = np.zeros(median.shape, bool)
    for last in (False, True):  # hot pixels first; then, with them replaced, the cold ones (not their neighbours)
        base = np.where(hot, ndimage.median_filter(median, size=5, mode="nearest"), median)
        excess = median - ndimage.median_filter(base, size=3, mode="nearest")
        centre = float(np.median(excess))
        scale = 1.4826 * float(np.median(np.abs(excess - centre)))
        if not np.isfinite(scale) or scale <= 0:
            return hot
        flagged = (np.abs(excess - centre) > nsigma * scale) & (np.abs(excess) >= sharpness * np.abs(height))
        hot = hot | flagged if last else flagged & (excess > centre)
    return hot


def sequence_hot_pixels(frames: list[tuple[str, int]], *, overscan: bool = True, trim: bool = True,
                        bias: np.ndarray | None = None, max_frames: int = 9, nsigma: float = 5.0,
                        sharpness: float = 0.7) -> np.ndarray:
    """:func:`hot_pixel_map` of up to ``max_frames`` light frames of one CCD, evenly spread over the sequence.

    Frames are overscan-reduced and trimmed like science frames (and less ``bias`` when given);
    frames of different heights or widths (partial read-outs) are cut to their common first
    rows and columns.

    Returns
    -------
    ndarray of bool (ny, nx)
        The common shape of the frames read.
    """
    pick = np.unique(np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(int))
    images = []
    for k in pick:
        path, hdu = frames[k]
        try:
            with fits.open(path, memmap=False) as hdul:
                header = hdul[hdu].header.copy()
                data = np.asarray(hdul[hdu].data, np.float32)
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: cannot be read for the hot-pixel map ({exc})") from None
        data = reduce_overscan(data, header, path, overscan=overscan, trim=trim)
        if bias is not None and bias.shape == data.shape:
            data = data - bias
        elif bias is not None:
            log.info("%s: shape %s differs from the master bias %s: not subtracted for the hot-pixel map", path,
                     data.shape, bias.shape)
        images.append(data)
    ny, nx = min(d.shape[0] for d in images), min(d.shape[1] for d in images)
    if len({d.shape for d in images}) > 1:
        log.info("hot-pixel map: frames of %d shapes (partial read-outs); the map covers their common first %d rows "
                 "and %d columns", len({d.shape for d in images}), ny, nx)
    stack = np.stack([d[:ny, :nx] for d in images]).astype(np.float32)
    return hot_pixel_map(stack, nsigma=nsigma, sharpness=sharpness)


def add_hot_pixel_maps(masters: dict, lights: dict[str, list[tuple[str, int]]], *, overscan: bool = True,
                       trim: bool = True, min_frames: int = 8, min_fraction: float = 0.01) -> dict:
    """Give each CCD without a dark a hot-pixel map from its own light frames, where it is worth one.

    Parameters
    ----------
    masters : dict
        CCD -> :class:`MasterFrames` from the calibration frames (CCDs that get a map are added).
    lights : dict
        CCD -> ``[(path, hdu), ...]`` of its light frames in time order.
    min_frames : int
        Fewest light frames for a map.
    min_fraction : float
        A map flagging less than this share of the pixels is not used (logged): a sharp star that stayed
        on its pixels all night looks like a hot pixel too, and each frame's sharp-pixel test handles a
        few hot pixels.

    Returns
    -------
    dict
        ``masters``, updated.
    """
    for ccd, files in lights.items():
        master = masters.get(ccd, MasterFrames())
        if master.dark is not None or len(files) < min_frames:
            continue
        hot = sequence_hot_pixels(files, overscan=overscan, trim=trim, bias=master.bias)
        used = min(len(files), 9)
        if hot.mean() < min_fraction:
            log.info("CCD %s: no dark; %d hot/cold pixels (%.3f %%) found in %d of its %d light frames, under "
                     "[calibrate] hot_min_fraction: left to each frame's sharp-pixel test", ccd, int(hot.sum()),
                     100 * hot.mean(), used, len(files))
            continue
        master.hot, master.counts["hot"] = hot, used
        masters[ccd] = master
        log.info("CCD %s: no dark; %d hot/cold pixels (%.2f %%) found in %d of its %d light frames are treated as "
                 "hits%s", ccd, int(hot.sum()), 100 * hot.mean(), used, len(files),
                 "" if master.bias is not None or master.flat is not None else
                 " (its frames are now overscan-reduced and trimmed by their BIASSEC/TRIMSEC)")
    return masters


#: Longest exposure [s] a bias frame may have (readout only; cameras write 0 or a few milliseconds).
MAX_BIAS_EXPTIME = 1.0


def _named_kind(header, keys: list[str]) -> tuple[str, str, str] | None:
    """``(kind, keyword, value)`` of the first type keyword whose value positively names a kind (bias/zero, dark,
    flat, light/object/science, as :func:`~ssodetect.io.headers.frame_type` reads them); None when none does (a
    blank IMAGETYP, 'TWILIGHT', 'SKY': unknown, not light)."""
    for key in keys:
        if key not in header:
            continue
        value = str(header[key]).strip()
        if re.search(r"bias|zero|dark|flat", value, re.I) or re.search(r"\b(light|object|science)\b", value, re.I):
            return frame_type(fits.Header([(key, value)]), [key]), key, value
    return None


def _seconds(value) -> float | None:
    """A header's exposure time as a number [s]; None when it is none."""
    if isinstance(value, (bool, np.bool_)):  # T is not 1 s
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


#: A flat's median level (bias and dark removed) must exceed this many times its pixel-to-pixel noise (a real flat is
#: tens to hundreds of times it, vignetted or not; an empty one about 0).
FLAT_MIN_LEVEL = 3.0


#: A calibration frame with fewer finite pixels than this fraction is refused by default (``[calibrate]
#: max_bad_fraction``: a bias with 45 % NaN had been combined, and 45 % of every light it calibrated was lost without
#: a word); fewer NaN are named in a warning.
MIN_FINITE_FRACTION = 0.99


def build_masters(frames: dict[str, list[tuple[str, int]]], *, overscan: bool = True, trim: bool = True,
                  sigma: float = 3.0, exptime_keys: list[str] | None = None,
                  type_keys: list[str] | None = None, max_bad_fraction: float = 1.0 - MIN_FINITE_FRACTION) -> MasterFrames:
    """Combine calibration frames into masters.

    Parameters
    ----------
    frames : dict
        ``{"bias": [(path, hdu), ...], "dark": [...], "flat": [...]}`` (missing kinds allowed).  A
        master written by :meth:`MasterFrames.write` (``IMAGETYP = 'master <kind>'``) is used as it is.
    overscan, trim : bool
        Use ``BIASSEC`` / ``TRIMSEC`` when present.
    max_bad_fraction : float
        Share of a frame's pixels that may be NaN or infinite (``[calibrate] max_bad_fraction``); more is refused.
    sigma : float
        Clipping threshold of the combination.
    exptime_keys : list of str
        Exposure time keywords (darks and flats).
    type_keys : list of str
        Frame type keywords: a frame whose header names another kind than it is given as is refused.

    Raises
    ------
    InputError
        An unreadable frame, a frame whose type keyword says another kind, a bias exposed longer than
        :data:`MAX_BIAS_EXPTIME`, a dark without exposure time, or frames of different shapes.
    """
    exptime_keys = exptime_keys or ["EXPTIME", "EXPOSURE", "ITIME", "TEXP"]
    type_keys = type_keys or ["IMAGETYP", "OBSTYPE", "FRAMETYP", "IMAGTYPE"]
    masters = MasterFrames()
    masters_given: dict[str, list] = {}  # masters written by MasterFrames.write (IMAGETYP 'master <kind>'): used as they are

    def load(kind):
        images = []
        for path, hdu in frames.get(kind, []):
            try:
                with fits.open(path, memmap=False) as hdul:
                    header = hdul[hdu].header.copy()
                    data = np.asarray(hdul[hdu].data, np.float32)
                    primary = hdul[0].header.copy() if hdu != 0 else None
            except (OSError, ValueError, IndexError, TypeError) as exc:
                raise InputError(f"{path}: cannot read {kind} frame ({exc})") from None
            if data.ndim != 2:
                raise InputError(f"{path}: {kind} frame is not a 2-D image")
            image = reduce_overscan(data, header, path, overscan=overscan, trim=trim)
            finite = float(np.mean(np.isfinite(image))) if image.size else 0.0
            if 1.0 - finite > max_bad_fraction or finite == 0.0:
                # an all-NaN bias made every calibrated pixel NaN, and the run went on with exit 0
                raise InputError(f"{path}: {kind} frame has {100.0 * (1.0 - finite):.1f} % of its pixels NaN or "
                                 f"infinite (at most {100.0 * max_bad_fraction:g} %: [calibrate] max_bad_fraction)")
            if finite < 1.0:
                log.warning("%s: %s frame has %d pixels NaN or infinite (%.2f %%): they stay unknown in every frame "
                            "it calibrates", path, kind, int(np.sum(~np.isfinite(image))), 100.0 * (1.0 - finite))
            if images and image.shape != images[0][1].shape:
                raise InputError(f"{path}: {kind} frame shape {image.shape} differs from {images[0][1].shape}")
            key = next((k for k in exptime_keys if k in header and header[k] is not None
                        and str(header[k]).strip() != ""), None)
            exptime = _seconds(header[key]) if key else None
            if key and exptime is None:
                value = header[key]
                shown_value = ("T" if value else "F") if isinstance(value, (bool, np.bool_)) else repr(value)
                raise InputError(f"{path}: {kind} frame's {key} = {shown_value} is not a number")
            said_by = merge_headers(header, primary)  # (the primary header's cards under the extension's)
            said = _named_kind(header, type_keys) or (_named_kind(primary, type_keys) if primary is not None else None)
            if said is not None and said[0] != kind:
                # a light frame given as the bias was subtracted from every light: sources lost, magnitudes shifted
                raise InputError(f"{path}: given as a {kind} frame, but its {said[1]} = {said[2]!r} says {said[0]}")
            shown = next((k for k in exptime_keys if k in said_by), None)
            length = _seconds(said_by[shown]) if shown else None
            if kind == "bias" and length is not None and length > MAX_BIAS_EXPTIME:
                raise InputError(f"{path}: given as a bias frame, but its {shown} = {length:g} s (a bias has no "
                                 f"exposure; at most {MAX_BIAS_EXPTIME:g} s): a dark or a light frame?")
            if str(header.get("IMAGETYP", "")).strip().lower() == f"master {kind}":
                masters_given.setdefault(kind, []).append((path, image))
                continue
            images.append((path, image, exptime))
        return images

    bias = load("bias")
    if bias:
        masters.bias = _combine([im for _, im, _ in bias], sigma)
    darks = load("dark")
    flats = load("flat")
    for kind, given in masters_given.items():
        if len(given) > 1 or (kind == "bias" and bias) or (kind == "dark" and darks) or (kind == "flat" and flats):
            raise InputError(f"{given[0][0]}: a master {kind} is given together with other {kind} frames")
        setattr(masters, kind, given[0][1])
    # one shape for every frame and master, checked before any is subtracted from another (a 256^2 flat beside
    # 512^2 biases had failed to broadcast: an internal error)
    shaped = [(p, im.shape) for p, im, _ in bias + darks + flats] + [(p, im.shape) for g in masters_given.values()
                                                                      for p, im in g]
    odd = next(((p, sh) for p, sh in shaped if sh != shaped[0][1]), None)
    if odd is not None:
        raise InputError(f"{odd[0]}: calibration frame of shape {odd[1]}, unlike {shaped[0][0]} of shape "
                         f"{shaped[0][1]} (after overscan and trim)")
    if darks:
        stack = []
        for path, image, exptime in darks:
            if not exptime or exptime <= 0:
                raise InputError(f"{path}: dark frame without a positive exposure time")
            stack.append((image - (masters.bias if masters.bias is not None else 0.0)) / np.float32(exptime))
        masters.dark = _combine(stack, sigma)
    if flats:
        stack = []
        for path, image, exptime in flats:
            level = image - (masters.bias if masters.bias is not None else 0.0)
            if masters.dark is not None and exptime:
                level = level - masters.dark * np.float32(exptime)
            median = float(np.nanmedian(level))
            # pixel-to-pixel noise, from neighbours' differences (the illumination pattern, vignetting included, is
            # smooth and drops out)
            step = np.diff(level, axis=1)
            noise = 1.4826 * float(np.nanmedian(np.abs(step - np.nanmedian(step)))) / np.sqrt(2.0) if step.size else 0.0
            if not np.isfinite(median) or median <= 0 or median <= FLAT_MIN_LEVEL * noise:
                # an all-zero (or clipped) frame leaves bias and dark noise around 0: dividing by it makes noise
                raise InputError(f"{path}: flat frame has no positive signal (median {median:.3g} ADU, not "
                                 f"{FLAT_MIN_LEVEL:g} times its pixel noise {noise:.3g} ADU)")
            stack.append(level / np.float32(median))
        flat = _combine(stack, sigma)
        masters.flat = (flat / np.float32(np.nanmedian(flat))).astype(np.float32)
    for kind, images in (("bias", bias), ("dark", darks), ("flat", flats)):
        masters.counts[kind] = len(images) or len(masters_given.get(kind, []))
        masters.sources[kind] = [p for p, _, _ in images] or [p for p, _ in masters_given.get(kind, [])]
    log.info("calibration: %s", masters.describe())
    return masters


def calibrate_ccd(image, masters: MasterFrames, *, overscan: bool = True, trim: bool = True,
                  saturation_keys: list[str] | None = None):
    """A :class:`ssodetect.io.CCDImage` with overscan, bias, dark and flat removed.

    Saturation is judged on the raw values (keyword or integer range) and added to
    ``mask`` and ``saturated``; so are pixels the flat cannot correct.  Trimming
    leaves the header WCS untouched when there is no ``TRIMSEC``; with one, the WCS
    reference pixel is shifted to the trimmed grid.
    """
    from dataclasses import replace

    raw = image.data
    stored = fits.getheader(image.ref.path, image.ref.sci)  # BITPIX/BZERO as stored (the reader's header drops them)
    level = raw_saturation(stored, raw, saturation_keys or ["SATURATE", "SATLEVEL", "DATAMAX"])
    saturated = image.saturated | (raw >= level - 0.5 if level is not None else False)
    data = reduce_overscan(raw, image.header, image.ref.path, overscan=overscan, trim=trim)
    mask = image.mask | saturated
    wcs = image.wcs
    if trim and "TRIMSEC" in image.header:
        rows, cols = parse_section(image.header["TRIMSEC"], raw.shape, clip=True)
        mask, saturated = mask[rows, cols], saturated[rows, cols]
        if wcs is not None:
            wcs = wcs.slice((rows, cols))
    data, bad = masters.apply(data, image.ref.exptime, image.ref.path)
    return replace(image, data=data, mask=mask | bad | ~np.isfinite(data), saturated=saturated, wcs=wcs,
                   rms=None if image.rms is None or image.rms.shape != data.shape else image.rms,
                   hot=masters.hot_mask(data.shape))


#: The CCD name :func:`ssodetect.io.scan_file` gives a single-image file whose header names no CCD.
UNNAMED_CCD = "0"


def _names_a_ccd(path, hdu: int, detector_keys: list[str]) -> bool:
    """Whether the header of a calibration frame names its CCD (a detector keyword; EXTNAME in an extension)."""
    try:
        header = fits.getheader(path, hdu)
    except (OSError, ValueError, IndexError):
        return False
    keys = [k for k in detector_keys if k != "EXTNAME"] + (["EXTNAME"] if hdu > 0 else [])
    return any(str(header.get(k, "")).strip() for k in keys)


def _match_ccds(masters: dict, frames: dict, lights: list, detector_keys: list[str]) -> dict:
    """``masters`` (any values: the calibration frames of each CCD, or their masters) keyed by the light frames'
    CCD names; ``frames`` gives the calibration frames of each CCD (for a file to name).

    Calibration frames whose headers name no CCD (:data:`UNNAMED_CCD`, e.g. masters written by an older
    ``ssodetect calibrate``) belong to the lights' CCD when the lights come from one CCD; with several, which
    CCD they belong to is unknown and they are refused.  Masters of a CCD no light frame comes from are said
    (a warning) and left unused; the lights' CCDs without any calibration frame are named (info).
    """
    light_ccds = sorted({ref.ccd for ref in lights})
    if not light_ccds or not masters:
        return masters
    first, hdu = next(((path, h) for paths in frames.get(UNNAMED_CCD, {}).values() for path, h in paths), (None, 0))
    # ("0" is also a CCD a header may name: frames that name none are told by their header)
    if first is not None and not _names_a_ccd(first, hdu, detector_keys) and (
            UNNAMED_CCD not in light_ccds or len(light_ccds) > 1):
        named = [k for k in detector_keys if k != "EXTNAME"] or ["CCDNAME"]
        if len(light_ccds) > 1:
            raise InputError(f"{first}: this calibration frame names no CCD ({'/'.join(named[:3])}) but the light "
                             f"frames come from CCDs {', '.join(light_ccds)}: which one it belongs to is unknown")
        if light_ccds[0] in masters:
            raise InputError(f"{first}: this calibration frame names no CCD, others name CCD {light_ccds[0]}: "
                             "give one CCD's frames alike")
        log.warning("calibration frames that name no CCD (%s, ...) used for the light frames' CCD %s", first,
                    light_ccds[0])
        masters = {(light_ccds[0] if ccd == UNNAMED_CCD else ccd): m for ccd, m in masters.items()}
    unused = sorted(set(masters) - set(light_ccds))
    if unused:
        log.warning("calibration frames of CCD(s) %s match no light frame's CCD (%s): not used", ", ".join(unused),
                    ", ".join(light_ccds))
    bare = sorted(set(light_ccds) - set(masters))
    if bare:
        log.info("light frames of CCD(s) %s have no bias, dark or flat frames", ", ".join(bare))
    return masters


#: Header keywords of a frame's binning and sub-frame origin, by axis (the first present counts; ``CCDSUM`` holds
#: both binnings, "1 1", and IRAF's ``LTV1``/``LTV2`` the offset of a sub-frame).
READOUT_KEYS = {"binning x": ("XBINNING", "BINX", "CCDXBIN"), "binning y": ("YBINNING", "BINY", "CCDYBIN"),
                "sub-frame origin x": ("XORGSUBF",), "sub-frame origin y": ("YORGSUBF",),
                "sub-frame offset x (LTV1)": ("LTV1",), "sub-frame offset y (LTV2)": ("LTV2",)}


def _readout(path, sci: int) -> dict:
    """The binning and sub-frame origin a frame's header states (:data:`READOUT_KEYS`; absent ones left out), as
    numbers where they read as numbers (``XBINNING = '1'`` is 1)."""
    header = fits.getheader(path, sci)
    found = {}
    for what, keys in READOUT_KEYS.items():
        for key in keys:
            if key in header:
                found[what] = header[key]
                break
    ccdsum = str(header.get("CCDSUM", "")).split()
    if len(ccdsum) == 2:
        found.setdefault("binning x", ccdsum[0])
        found.setdefault("binning y", ccdsum[1])
    out = {}
    for what, value in found.items():
        try:
            out[what] = float(str(value).strip()) if not isinstance(value, bool) else value
        except ValueError:
            out[what] = value
    return out


def _check_readout(frames: dict, lights: list) -> None:
    """Refuse (``InputError``, naming the file) a calibration frame whose header states another binning or sub-frame
    origin than the light frames of its CCD: its pixels are not theirs (campaign 31: a bias binned 2x2, a dark
    read from x = 100, were combined and applied without a word).  Keywords a header does not state are not
    compared."""
    for ccd, kinds in frames.items():
        mine = [ref for ref in lights if ref.ccd == ccd]
        if not mine:
            continue
        want = _readout(mine[0].path, mine[0].sci)
        for kind, items in kinds.items():
            for path, sci in items:
                got = _readout(path, sci)
                for what in set(want) & set(got):
                    if got[what] != want[what]:
                        raise InputError(f"{path}: {kind} frame of CCD {ccd} with {what} {got[what]!r} where the "
                                         f"light frames ({mine[0].path}) have {want[what]!r}: its pixels are not "
                                         "theirs")


def build_calibration(refs: list, config: Config) -> tuple[list, dict]:
    """Light frames of the inputs and, per CCD, the masters built from the calibration frames.

    Calibration frames are those recognised among the inputs by their type keyword plus
    the files listed in ``[calibrate]``.  A CCD without a dark and with at least
    ``[calibrate] hot_min_frames`` light frames also gets a hot-pixel map from its lights
    (:func:`ssodetect.calibrate.add_hot_pixel_maps`) when it flags at least
    ``hot_min_fraction`` of the pixels.  Returns ``(lights, {ccd: MasterFrames})``; the dict is
    empty when calibration is off or there is nothing to calibrate with.
    """
    cc = config.calibrate
    lights = [ref for ref in refs if ref.frame_type == "light"]
    if not cc.enabled:
        return lights, {}
    frames: dict[str, dict[str, list]] = {}
    listed = [(kind, ref) for kind in ("bias", "dark", "flat") for path in getattr(cc, kind)
              for ref in scan_file(Path(path), config.io)]
    seen: set = set()
    ccd_hdu: dict = {}
    for kind, ref in [(ref.frame_type, ref) for ref in refs if ref.frame_type != "light"] + listed:
        key = (str(Path(ref.path).resolve()), ref.sci)
        if key in seen:  # listed in [calibrate] and found among the inputs (or listed twice): combined once
            log.warning("%s: given twice as a calibration frame; used once", ref.path)
            continue
        seen.add(key)
        if ccd_hdu.setdefault((key[0], ref.ccd), ref.sci) != ref.sci:  # (every extension EXTNAME = 'SCI')
            raise InputError(f"{ref.path}: two extensions of CCD {ref.ccd} (their CCD names must differ)")
        frames.setdefault(ref.ccd, {}).setdefault(kind, []).append((ref.path, ref.sci))
    # (named for the lights' CCDs, or refused, before anything is combined)
    frames = _match_ccds(frames, frames, lights, config.io.detector_keys)
    _check_readout(frames, lights)
    masters = {ccd: build_masters(kinds, overscan=cc.overscan, trim=cc.trim, sigma=cc.clip_sigma,
                                  exptime_keys=config.io.exptime_keys, type_keys=config.io.frame_type_keys,
                                  max_bad_fraction=cc.max_bad_fraction)
               for ccd, kinds in frames.items()}
    if cc.hot_pixels:
        by_ccd: dict[str, list] = {}
        for ref in sorted(lights, key=lambda r: r.mjd):
            by_ccd.setdefault(ref.ccd, []).append((ref.path, ref.sci))
        add_hot_pixel_maps(masters, by_ccd, overscan=cc.overscan, trim=cc.trim, min_frames=cc.hot_min_frames,
                           min_fraction=cc.hot_min_fraction)
    return lights, {ccd: m for ccd, m in masters.items() if not m.empty}
