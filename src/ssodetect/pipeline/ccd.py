"""The per-CCD step: read, (clean), background, extract, measure, project to the sky.

:func:`process_ccd` is what executors run; it takes a small picklable
:class:`~ssodetect.io.CCDRef`, reads the pixels itself (so Dask workers load
their own data) and returns a detection table with sky coordinates plus a dict
of per-CCD diagnostics.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
from astropy.table import Table
from scipy.ndimage import binary_dilation

from ssodetect.calibrate import MasterFrames, calibrate_ccd
from ssodetect.columns import describe, empty_table
from ssodetect.config import Config
from ssodetect.detect import empty_detections, estimate_background, extract_sources, heavy_tail_correction
from ssodetect.detect.cosmics import sharp_pixel_mask
from ssodetect.detect.extract import FWHM_TO_SIGMA, correlated_noise_note
from ssodetect.errors import InputError
from ssodetect.io import CCDRef, read_ccd
from ssodetect.io.frames import MAX_RMS
from ssodetect.io.headers import fits_text, tracking_rate, world_to_pixels
from ssodetect.io.outputs import safe_name
from ssodetect.streaks import edge_cut, refine_trails, trail_on_sky
from ssodetect.streaks.field import field_motion, star_trail, tracked_star_trail, tracking_disagreement

__all__ = ["CCD_COLUMNS", "place_on_ccds", "process_ccd", "empty_ccd_table", "set_sky_positions", "calibrated_image", "subtracted_image",
           "cleaned_pixels"]

log = logging.getLogger(__name__)

#: sep's flags for an object footprint (OBJ_TRUNC) and a photometric aperture (APER_TRUNC) truncated by
#: the image boundary.
OBJ_TRUNC = 2
APER_TRUNC = 16

#: Columns added to the detection table by the step.
CCD_COLUMNS = [
    ("exposure", "i8", "", "exposure index"),
    ("ccd", "U32", "", "CCD identifier"),
    ("file", "U256", "", "FITS file"),
    ("mjd", "f8", "d", "mid-exposure time, MJD UTC"),
    ("exptime", "f8", "s", "exposure time"),
    ("ra", "f8", "deg", "right ascension through the WCS"),
    ("dec", "f8", "deg", "declination through the WCS"),
    ("wcs", "U8", "", "source of the sky position: header | fit (refined against the reference catalogue) | "
                      "frame (registered onto another exposure of the CCD, through its WCS) | relative (frames "
                      "registered to each other, not astrometry) | user | none"),
    ("pixel_scale", "f8", "arcsec / pix", "pixel scale of the WCS"),
    ("edge_cut", "bool", "", "the source's footprint or photometric aperture is truncated by the detector edge "
                             "(centroid and flux biased), and it is neither a point source measured by a PSF fit with "
                             "its centre on a detector pixel and most of its core information on the detector "
                             "(edge_fit) or centred more than 3 FWHM + 1 px inside, nor a trail whose ends clear the "
                             "edge (streaks.edge_clear)"),
    ("trail_arcsec", "f8", "arcsec", "trail length on the sky"),
    ("trail_pa", "f8", "deg", "position angle of the trail axis, N through E, 0-180"),
    ("trail_arcsec_err", "f8", "arcsec", "1-sigma error of the trail length (NaN when the trail was not fitted)"),
    ("trail_pa_err", "f8", "deg", "1-sigma error of the trail axis (NaN when the trail was not fitted)"),
    ("cut_pa", "f8", "deg", "position angle (N through E, 0-360) from the trail centre towards its end cut by the "
                            "detector edge; NaN when neither or both ends are cut"),
    ("ra_err", "f8", "arcsec", "uncertainty in RA*cos(dec)"),
    ("dec_err", "f8", "arcsec", "uncertainty in Dec"),
    ("sky_err_shared", "f8", "arcsec", "part of ra_err and dec_err that every exposure of the CCD with the same WCS "
                                       "method shares (the optical distortion a corrected header lacks, the same at "
                                       "the same pixel): it cancels between them"),
    ("mag", "f8", "mag", "magnitude from the zero point"),
    ("mag_err", "f8", "mag", "magnitude uncertainty"),
    ("stars_trailed", "bool", "", "the stars of this CCD exposure are trailed (streaks.field.star_trail, or "
                                  "[astrometry] trailed_stars): a trail is no sign of motion there"),
    ("own_length", "f8", "pix", "the source's own motion during the exposure: its trail (length), less the stars' "
                                "trail on an exposure whose stars are trailed alike (streaks.field.own_motion); "
                                "trail_arcsec and trail_pa are this motion on the sky"),
    ("own_theta", "f8", "rad", "the direction of that motion, from +x towards +y"),
    ("drift_length", "f8", "pix", "length of the stars' trail on an exposure whose stars are trailed alike (0 "
                                  "elsewhere)"),
]


def place_on_ccds(ra: float, dec: float, ccds: list, wcs_of, shape_of, first: str | None = None, *,
                  margin: float = 0.0) -> tuple[str, float, float] | None:
    """``(ccd, x, y)`` of a sky position on the first CCD of an exposure whose image holds it at least ``margin`` px
    inside its edge (``first`` tried before the others); None when on none.

    Parameters
    ----------
    ra, dec : float
        [deg].
    ccds : list of str
        The exposure's CCDs.
    wcs_of, shape_of : callable
        ``ccd -> WCS`` (None without one) and ``ccd -> (ny, nx)`` (None or empty when unknown).
    """
    for ccd in ([first] if first in ccds else []) + [c for c in ccds if c != first]:
        w, shape = wcs_of(ccd), shape_of(ccd)
        if w is None or not shape:
            continue
        x, y = (float(np.asarray(v).ravel()[0]) for v in world_to_pixels(w, np.atleast_1d(ra), np.atleast_1d(dec)))
        ny, nx = shape
        if margin <= x < nx - margin and margin <= y < ny - margin:
            return ccd, x, y
    return None


def set_sky_positions(table: Table, wcs, label: str) -> None:
    """Fill ``ra, dec, trail_arcsec(_err), trail_pa(_err), cut_pa, wcs, pixel_scale, ra_err, dec_err`` through ``wcs``.

    ``label`` names the WCS's origin (header | fit | relative); with ``wcs`` None the
    sky columns are NaN and ``wcs`` is "none".
    """
    n = len(table)
    if n and wcs is not None:
        ra, dec = wcs.all_pix2world(np.asarray(table["x"], float), np.asarray(table["y"], float), 0)
        scale = float(np.sqrt(np.abs(np.linalg.det(wcs.celestial.pixel_scale_matrix))) * 3600.0)
        # (the trail on the sky is the source's own motion: on a trailed exposure its trail less the drift)
        own = "own_length" in table.colnames
        table["trail_arcsec"], table["trail_pa"] = trail_on_sky(
            wcs, table["x"], table["y"], table["own_length" if own else "length"], table["own_theta" if own else "theta"])
        table["cut_pa"] = cut_direction(wcs, table)
        nan = np.full(n, np.nan)
        table["trail_arcsec_err"] = np.asarray(table["length_err"] if "length_err" in table.colnames else nan, float) * scale
        table["trail_pa_err"] = np.degrees(np.asarray(table["theta_err"] if "theta_err" in table.colnames else nan, float))
    else:
        ra = dec = np.full(n, np.nan)
        scale = float("nan") if n else 0.0
        table["trail_arcsec"] = table["trail_pa"] = table["cut_pa"] = np.full(n, np.nan)
        table["trail_arcsec_err"] = table["trail_pa_err"] = np.full(n, np.nan)
        label = "none"
    table["ra"] = ra
    table["dec"] = dec
    table["wcs"] = np.full(n, label, dtype="U8")
    table["pixel_scale"] = np.full(n, scale)
    table["ra_err"] = np.asarray(table["x_err"]) * scale
    table["dec_err"] = np.asarray(table["y_err"]) * scale
    table["sky_err_shared"] = np.zeros(n)


def cut_direction(wcs, table: Table) -> np.ndarray:
    """Position angle [deg, N through E, 0-360] from each trail's centre towards its cut end (NaN if none or both)."""
    cut = np.asarray(table["cut"], int)
    sign = np.where(np.abs(cut) == 1, cut, 0).astype(float)
    out = np.full(len(table), np.nan)
    rows = np.nonzero(sign != 0)[0]
    if rows.size:
        x, y = np.asarray(table["x"], float)[rows], np.asarray(table["y"], float)[rows]
        theta = np.asarray(table["theta"], float)[rows]
        step = sign[rows] * np.maximum(0.5 * np.asarray(table["length"], float)[rows], 1.0)
        ra1, dec1 = wcs.all_pix2world(x, y, 0)
        ra2, dec2 = wcs.all_pix2world(x + step * np.cos(theta), y + step * np.sin(theta), 0)
        dra = ((ra2 - ra1 + 180.0) % 360.0 - 180.0) * np.cos(np.radians(dec1))
        out[rows] = np.degrees(np.arctan2(dra, dec2 - dec1)) % 360.0
    return out


def empty_ccd_table() -> Table:
    """Detection table of the step with every column and no rows."""
    return empty_table(CCD_COLUMNS, empty_detections())


def lacosmic_mask(data, mask, gain, rms, config):
    """L.A.Cosmic (astroscrappy, the [clean] extra) cosmic-ray mask of ``data`` (ny, nx) [ADU]."""
    import astroscrappy

    readnoise = float(np.nanmedian(rms)) * gain if rms is not None else 5.0
    crmask, _ = astroscrappy.detect_cosmics(
        data, inmask=mask, gain=gain, readnoise=readnoise, sigclip=config.sigclip, objlim=config.objlim, verbose=False
    )
    return crmask


def _background(image, mask: np.ndarray, config: Config) -> tuple[np.ndarray, np.ndarray, float, dict]:
    """Background and RMS of a CCD image (hot pixels found in the sequence left out), corrected for a
    detector whose warm pixels skew its noise (:func:`ssodetect.detect.heavy_tail_correction`) when it
    has a hot-pixel map; the dict records the correction."""
    hot = image.hot
    background, rms, global_rms = estimate_background(image.data, mask=mask if hot is None else mask | hot,
                                                      box=config.detect.background_box,
                                                      filter_size=config.detect.background_filter)
    if hot is None or not hot.any():
        return background, rms, global_rms, {}
    background, rms, level, scale = heavy_tail_correction(image.data, background, rms, mask | hot,
                                                          sigma=config.detect.psf_fallback_sigma)
    return background, rms, global_rms * scale, {"background_level_added": round(level, 3),
                                                 "noise_scale": round(scale, 3)}


#: Smallest side [px] of a CCD image searched for sources (a PSF and its background need room).
MIN_CCD_SIDE = 16


def _why_unusable(image) -> str:
    """Why no pixel of a CCD image is usable (every pixel NaN or masked), naming the cause where one explains it."""
    if not np.isfinite(image.data).any():
        return "all its pixels are NaN"
    if image.rms is not None and not ((image.rms > 0) & (image.rms < MAX_RMS)).any():
        return (f"its RMS map holds no usable noise (every value is not above 0, not finite or at least {MAX_RMS:g}): "
                "all pixels masked")
    if image.saturated is not None and image.saturated.all():
        return "every pixel is at or above its saturation level: all masked"
    return "all its pixels are NaN or masked (FLG map, saturation, RMS map)"


def _tracking(image, ref: CCDRef, config: Config, trail, psf_sigma: float) -> dict | None:
    """A header's non-sidereal tracking rate (``[io] tracking_rate_keys``) against the stars' measured trail: the
    trail it implies, whether they agree, the contradiction (``disagreement``) and the rate's ``problems`` (a value
    that is no number), which the astrometry step says once for the run.  The measured trail is what the run
    uses.  None without a rate in the header."""
    problems: list[str] = []
    rate = tracking_rate(image.header, config.io.tracking_rate_keys, config.io.tracking_rate_unit, problems)
    if rate is None:
        return {"keys": None, "problems": problems, "agrees": None} if problems else None
    out = {"keys": rate[2], "ra_rate": rate[0], "dec_rate": rate[1], "length": float("nan"), "angle": float("nan"),
           "agrees": None, "disagreement": "", "problems": problems}
    if image.wcs is None or not ref.exptime > 0:
        log.debug("%s: CCD %s: the header's tracking rate %s not compared with the star trails (no WCS or exposure "
                  "time)", ref.path, ref.ccd, rate[2])
        return out
    ny, nx = image.data.shape
    out["length"], out["angle"] = tracked_star_trail(rate[0], rate[1], ref.exptime, image.wcs.celestial,
                                                     0.5 * (nx - 1), 0.5 * (ny - 1))
    if not (math.isfinite(out["length"]) and math.isfinite(out["angle"])):
        return out  # (a WCS that cannot place the rate: not compared)
    why = tracking_disagreement(trail, out["length"], out["angle"], psf_sigma / FWHM_TO_SIGMA)
    out["agrees"] = why is None
    if why is not None:  # (said once for the run: pipeline.astrometry.warn_tracking)
        out["disagreement"] = (f"the header's tracking rate {rate[2]} = ({rate[0]:.4g}, {rate[1]:.4g})\"/h implies "
                               f"{why}")
    log.debug("%s: CCD %s: the header's tracking rate %s %s", ref.path, ref.ccd, rate[2],
              "agrees with the stars' trails" if why is None else "contradicts them")
    return out


def process_ccd(ref: CCDRef, config: Config, *, require_wcs: bool = True,
                calibration: MasterFrames | None = None, keep: Path | None = None) -> tuple[Table, dict]:
    """Detect and measure the sources of one CCD image.

    Parameters
    ----------
    ref : CCDRef
        Which file/extension to read.
    config : Config
    require_wcs : bool
        Refuse a CCD without a usable header WCS.  False when a later step can
        solve it blind or register it; its sky coordinates are then NaN.
    calibration : MasterFrames, optional
        Masters for a raw frame (overscan, bias, dark, flat; raw saturation masked).
    keep : Path, optional
        Directory for the intermediate products (:func:`write_intermediate`).

    Returns
    -------
    detections : Table
        One row per detection: :data:`ssodetect.detect.DETECTION_COLUMNS` plus
        :data:`CCD_COLUMNS`; cosmic-ray / hot-pixel hits (kind ``sharp``) are
        left out (counted in ``info["n_sharp"]``).  Empty (with every column) for a CCD that is all
        NaN, all masked or constant (e.g. an all-zero read-out), which is skipped with a warning.
    info : dict
        Diagnostics: timings [s], PSF sigma, counts, ``skipped`` reason, image
        ``shape`` (ny, nx), ``wcs_header`` (the header WCS as FITS cards, empty
        when unusable) and ``wcs_problem``.

    Raises
    ------
    InputError
        Unreadable pixels, or no usable WCS.
    """
    t_start = time.perf_counter()
    info: dict = {"file": ref.path, "ccd": ref.ccd, "exposure": ref.exposure}
    image = read_ccd(ref, config.io)
    if calibration is not None:
        cc = config.calibrate
        image = calibrate_ccd(image, calibration, overscan=cc.overscan, trim=cc.trim,
                              saturation_keys=config.io.saturation_keys)
        info["calibrated"] = calibration.describe()
    info["t_read"] = time.perf_counter() - t_start
    good = ~image.mask
    if not good.any() or not np.isfinite(image.data[good]).any():
        why = _why_unusable(image)
        log.warning("%s: CCD %s: %s; skipped", ref.path, ref.ccd, why)
        info["skipped"] = why
        return empty_ccd_table(), info
    if min(image.data.shape) < MIN_CCD_SIDE:  # (1x512 and 3x3 frames gave 0 detections without a word: campaign 31)
        why = (f"{image.data.shape[0]}x{image.data.shape[1]} px, too small to find sources in (at least "
               f"{MIN_CCD_SIDE} px a side)")
        log.warning("%s: CCD %s: %s; skipped", ref.path, ref.ccd, why)
        info["skipped"] = why
        return empty_ccd_table(), info
    values = image.data[good]
    if float(np.nanmin(values)) == float(np.nanmax(values)):  # an empty read-out (all 0) holds no sky
        log.warning("%s: CCD %s has the same value (%g) in every unmasked pixel; skipped", ref.path, ref.ccd,
                    float(values[0]))
        info["skipped"] = f"constant ({float(values[0]):g})"
        return empty_ccd_table(), info
    info["shape"] = [int(v) for v in image.data.shape]
    info["wcs_header"] = image.wcs.to_header_string(relax=True) if image.wcs is not None else ""
    info["wcs_problem"] = image.wcs_problem
    if image.wcs is None and require_wcs:
        raise InputError(f"{ref.path}: CCD {ref.ccd} has no usable WCS ({image.wcs_problem})")
    mask = image.mask.copy()
    if config.clean.astroscrappy:
        t0 = time.perf_counter()
        mask |= lacosmic_mask(image.data, mask, image.gain, image.rms, config.clean)
        info["t_clean"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    hot = image.hot  # hot pixels found in the sequence: hits, not the detector mask
    background, bkg_rms, global_rms, correction = _background(image, mask, config)
    info.update(correction)
    error = image.rms if image.rms is not None else bkg_rms
    info["t_background"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    psf_sigma = None
    if config.detect.psf_fwhm > 0:
        psf_sigma = config.detect.psf_fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    subtracted = image.data - background
    detections, extract_info = extract_sources(
        subtracted, mask=mask, error=error, gain=image.gain, config=config.detect, psf_sigma=psf_sigma,
        return_hits=True, known_hits=hot,
    )
    hits = extract_info.pop("sharp_pixels", None)
    info.update(extract_info)
    note = correlated_noise_note(extract_info)
    if note:
        log.info("%s: CCD %s: %s", ref.path, ref.ccd, note)
    info["t_extract"] = time.perf_counter() - t0
    if config.streaks.enabled and len(detections):
        t0 = time.perf_counter()
        detections, streak_info = refine_trails(
            detections, subtracted, np.asarray(error, np.float32) ** 2,
            mask if hits is None else mask | hits, image.saturated,
            extract_info["psf_sigma"], min_length=config.streaks.min_length, max_length=config.streaks.max_length,
            max_gap=config.streaks.max_gap,
        )
        info.update(streak_info)
        info["t_streaks"] = time.perf_counter() - t0
    info["background_rms"] = global_rms
    info["zeropoint"] = image.zeropoint
    info["zeropoint_source"] = image.zeropoint_source
    n = len(detections)
    table = detections
    table["exposure"] = np.full(n, ref.exposure, dtype=np.int64)
    # as wide as the values (fixed U256 paths made up 70 % of a field's gathered detection table)
    table["ccd"] = np.full(n, ref.ccd)
    table["file"] = np.full(n, ref.path)
    table["mjd"] = np.full(n, ref.mjd)
    table["exptime"] = np.full(n, ref.exptime)
    mode = config.astrometry.trailed_stars
    trail = star_trail(table, config.astrometry.min_snr, float(extract_info["psf_sigma"]) / FWHM_TO_SIGMA)
    info["star_trail"] = {**trail.as_dict(), "used": trail.trailed if mode == "auto" else bool(mode), "mode": str(mode)}
    if trail.trailed and mode == "auto":
        log.debug("%s CCD %s: stars trailed %.1f px at %.0f deg (%d of %d bright compact sources)", ref.path, ref.ccd,
                  trail.length, trail.angle, trail.n_agree, trail.n_bright)
    info["star_trail"]["tracking"] = _tracking(image, ref, config, trail, float(extract_info["psf_sigma"]))
    table["stars_trailed"] = np.full(n, bool(info["star_trail"]["used"]))
    # trails less the drift where the stars are trailed: what the sources moved themselves
    motion = field_motion(table["kind"], table["length"], table["theta"], table["snr"],
                          np.asarray(table["b"], float) / FWHM_TO_SIGMA, trail, bool(info["star_trail"]["used"]))
    for name in ("own_length", "own_theta", "drift_length"):
        table[name] = motion[name]
    info["star_trail"]["n_still"] = motion["n_still"]
    set_sky_positions(table, image.wcs, "header" if image.wcs is not None else "none")
    truncated = (np.asarray(table["sep_flag"]) & (OBJ_TRUNC | APER_TRUNC)) != 0
    table["edge_cut"], info["n_edge_kept"] = edge_cut(
        image.data.shape, truncated, table["edge_fit"], table["kind"], table["x"], table["y"], table["length"],
        table["theta"], float(extract_info["psf_sigma"]))
    info["n_edge_cut"] = int(np.sum(table["edge_cut"]))
    flux = np.asarray(table["flux"], float)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(flux > 0, image.zeropoint - 2.5 * np.log10(flux / max(ref.exptime, 1e-9)), np.nan)
        mag_err = np.where(flux > 0, 1.0857 * np.asarray(table["flux_err"]) / flux, np.nan)
    table["mag"] = mag
    table["mag_err"] = mag_err
    describe(table, CCD_COLUMNS)
    info["pixel_scale"] = float(table["pixel_scale"][0]) if n else float("nan")
    if keep is not None:
        write_intermediate(Path(keep), ref, subtracted, mask, hits, table, image.wcs, config)
    # cosmic-ray and hot-pixel hits (kind "sharp", ~3/4 of a Euclid CCD's detections) take no part in any later
    # step: dropped here, counted in info["n_sharp"], so a field's gathered table stays ~4x smaller
    table = table[np.asarray(table["kind"]) != "sharp"]
    n = len(table)
    info["n_detections"] = n
    info["t_total"] = time.perf_counter() - t_start
    log.debug("%s CCD %s: %d detections in %.2f s", ref.path, ref.ccd, n, info["t_total"])
    return table, info


#: SExtractor names of the LDAC catalogue columns: (ours, theirs, scale); pixel positions 1-based.
LDAC_COLUMNS = [
    ("x", "XWIN_IMAGE", 1.0), ("y", "YWIN_IMAGE", 1.0), ("ra", "ALPHAWIN_J2000", 1.0), ("dec", "DELTAWIN_J2000", 1.0),
    ("flux", "FLUX_AUTO", 1.0), ("flux_err", "FLUXERR_AUTO", 1.0), ("mag", "MAG_AUTO", 1.0),
    ("mag_err", "MAGERR_AUTO", 1.0), ("a", "A_IMAGE", 1.0), ("b", "B_IMAGE", 1.0),
    ("theta", "THETA_IMAGE", 180.0 / math.pi), ("snr", "SNR_WIN", 1.0),
]


def ldac_catalogue(table: Table) -> Table:
    """A detection table in SExtractor's names and conventions (the ``LDAC_OBJECTS`` of a FITS_LDAC file).

    Positions 1-based; ``ERRAWIN_IMAGE``/``ERRBWIN_IMAGE`` the larger/smaller of the x/y errors with
    ``ERRTHETAWIN_IMAGE`` along the axis of the larger; ``FLAGS`` in SExtractor's bits (2 blended, 8
    truncated, 16 aperture truncated); ``IMAFLAGS_ISO`` 1 for anything but a PSF-like point source (SCAMP
    ``-IMAFLAGS_MASK 1`` keeps the point sources); ``CLASS`` our kind.
    """
    out = Table()
    out["NUMBER"] = np.arange(1, len(table) + 1, dtype=np.int32)
    for ours, theirs, scale in LDAC_COLUMNS:
        values = np.asarray(table[ours], float) * scale
        out[theirs] = values + 1.0 if theirs in ("XWIN_IMAGE", "YWIN_IMAGE") else values
    x_err, y_err = np.asarray(table["x_err"], float), np.asarray(table["y_err"], float)
    out["ERRAWIN_IMAGE"] = np.maximum(x_err, y_err)
    out["ERRBWIN_IMAGE"] = np.minimum(x_err, y_err)
    out["ERRTHETAWIN_IMAGE"] = np.where(x_err >= y_err, 0.0, 90.0)
    sep_flag = np.asarray(table["sep_flag"], np.int64)
    out["FLAGS"] = (2 * ((sep_flag & 1) != 0) + 8 * ((sep_flag & 2) != 0) + 16 * ((sep_flag & 16) != 0)).astype(np.int16)
    out["IMAFLAGS_ISO"] = (np.asarray(table["kind"]) != "point").astype(np.int32)
    out["ELONGATION"] = np.asarray(table["a"], float) / np.maximum(np.asarray(table["b"], float), 1e-6)
    out["CLASS"] = np.asarray(table["kind"]).astype("U10")
    return out


def intermediate_name(ref: CCDRef) -> str:
    """File stem of one CCD exposure's intermediate products: ``exp<NNN>_<ccd>``."""
    return f"exp{ref.exposure:03d}_{safe_name(ref.ccd)}"  # (two CCDs never share a file)


def write_intermediate(folder: Path, ref: CCDRef, data: np.ndarray, mask: np.ndarray, hits, table: Table, wcs,
                       config: Config) -> None:
    """Write one CCD exposure's cleaned image and source catalogue (atomically) into ``folder``.

    ``<stem>.cleaned.fits``: the background-subtracted image (float32 [ADU], NaN where masked, header WCS)
    and a ``MASK`` extension (uint8: 1 detector mask, 2 cosmic-ray / hot-pixel hit);
    ``<stem>.cat.fits``: every detection of the CCD (cosmic-ray hits included, ``kind`` says which);
    with ``[intermediate] ldac`` also ``<stem>.ldac``: the same in SExtractor's FITS_LDAC layout
    (:func:`ldac_catalogue`; the image header with its WCS, size, times), which SCAMP reads.
    """
    import io as _io

    from astropy.io import fits

    from ssodetect.io import atomic_write_bytes
    from ssodetect.io.ldac import write_ldac

    stem = intermediate_name(ref)
    header = wcs.to_header(relax=True) if wcs is not None else fits.Header()
    header["FILE"] = fits_text(Path(ref.path).name)
    header["CCD"] = (str(ref.ccd), "CCD identifier")
    header["EXPOSURE"] = (int(ref.exposure), "exposure index")
    header["MJD-MID"] = (float(ref.mjd), "mid-exposure time, MJD UTC")
    header["MJD-OBS"] = (float(ref.mjd) - 0.5 * float(ref.exptime) / 86400.0, "exposure start, MJD UTC")
    header["EXPTIME"] = (float(ref.exptime), "[s]")
    image = np.where(mask, np.nan, data).astype(np.float32)
    flags = mask.astype(np.uint8) | (2 * np.asarray(hits, bool).astype(np.uint8) if hits is not None else 0)
    hdus = fits.HDUList([fits.PrimaryHDU(image, header=header), fits.ImageHDU(flags.astype(np.uint8), name="MASK")])
    buffer = _io.BytesIO()
    hdus.writeto(buffer)
    atomic_write_bytes(folder / f"{stem}.cleaned.fits", buffer.getvalue())
    buffer = _io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(header=header), fits.BinTableHDU(table, name="SOURCES")]).writeto(buffer)
    atomic_write_bytes(folder / f"{stem}.cat.fits", buffer.getvalue())
    if config.intermediate.ldac:
        # SCAMP refuses an image header that does not open like a primary HDU's
        image_header = fits.Header([("SIMPLE", True), ("BITPIX", -32), ("NAXIS", 2), ("NAXIS1", data.shape[1]),
                                    ("NAXIS2", data.shape[0])])
        image_header.extend(header)
        write_ldac(folder / f"{stem}.ldac", [(ldac_catalogue(table), image_header)])


def calibrated_image(ref: CCDRef, config: Config, calibration=None) -> np.ndarray:
    """The pixels of one CCD image, calibrated when ``calibration`` is given, NaN where masked; no
    background subtracted (cutouts take their own local background).  Shape (ny, nx), float32 [ADU]."""
    image = read_ccd(ref, config.io)
    if calibration is not None:
        cc = config.calibrate
        image = calibrate_ccd(image, calibration, overscan=cc.overscan, trim=cc.trim,
                              saturation_keys=config.io.saturation_keys)
    data = np.array(image.data, dtype=np.float32)
    data[image.mask] = np.nan
    return data


def subtracted_image(ref: CCDRef, config: Config, calibration=None, *, with_noise: bool = False):
    """The pixels of one CCD image as detection saw them: calibrated when ``calibration`` is given,
    background subtracted, NaN where masked.  Shape (ny, nx), float32 [ADU].

    With ``with_noise`` returns ``(data, rms, gain)``: also the background noise per pixel [ADU]
    and the gain [e-/ADU].
    """
    image = read_ccd(ref, config.io)
    if calibration is not None:
        cc = config.calibrate
        image = calibrate_ccd(image, calibration, overscan=cc.overscan, trim=cc.trim,
                              saturation_keys=config.io.saturation_keys)
    background, bkg_rms, _, _ = _background(image, image.mask, config)
    data = (image.data - background).astype(np.float32)
    data[image.mask] = np.nan
    if with_noise:
        rms = image.rms if image.rms is not None else bkg_rms
        return data, np.asarray(rms, np.float32), float(image.gain)
    return data


def cleaned_pixels(ref: CCDRef, config: Config, calibration, psf_sigma: float, noise_scale: float = 1.0):
    """One CCD image for measurements at given positions: cosmic-ray hits (and a pixel around them) masked.

    Returns ``(image, variance, mask, gain)``: ``image`` (ny, nx) float32 [ADU], background subtracted,
    0 where ``mask`` (bad, NaN or hit); ``variance`` [ADU^2] the background noise, times ``noise_scale`` squared
    (detection's factor for noise correlated between pixels, ``correlated_noise_scale`` of
    :func:`ssodetect.detect.extract_sources`); ``gain`` [e-/ADU].
    """
    data, rms, gain = subtracted_image(ref, config, calibration, with_noise=True)
    rms = np.asarray(rms, np.float32) * np.float32(noise_scale)
    bad = ~np.isfinite(data)
    filled = np.nan_to_num(data).astype(np.float32)
    hits = sharp_pixel_mask(filled, rms, psf_sigma, mask=bad)
    mask = bad | binary_dilation(hits, iterations=1)
    image = np.where(mask, 0.0, filled).astype(np.float32)
    return image, np.asarray(rms, np.float32) ** 2, mask, gain

