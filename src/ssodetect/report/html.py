"""A self-contained HTML report of a run (opens offline: every image is embedded as a data URI).

Sections: the observing context (:mod:`ssodetect.report.context`), placeholders to fix before submitting, plots
(:mod:`ssodetect.report.plots`), the run (inputs, timings, per-CCD astrometric fit quality, configuration), known
objects in the field, a field overview per CCD with every object's track drawn, and per object its
identification (linked to its MPC and JPL pages), rate and position angle, flags, a strip of stamps (UTC time,
north/east arrows, scale bar, the fitted track), an animated GIF blink and its table of observations.  The page is
the Jinja2 template ``templates/report.html``; stamps are drawn with Pillow; the page has no scripts.
"""
from __future__ import annotations

import base64
import io
import math

import numpy as np
from astropy.table import Table
from PIL import Image, ImageDraw

from ssodetect.columns import rows_by
from ssodetect.errors import printable
from ssodetect.report.cutouts import pixel_jacobian
from ssodetect.report.regions import fitted_track
from ssodetect.io.headers import world_to_pixels

__all__ = ["stretch", "gif_data_uri", "render_report", "annotated_stamp", "scale_bar", "object_links"]



def stretch(image: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """8-bit display of an image: asinh stretch between the 5th and 99.7th percentiles (or the given
    limits) of its finite pixels; NaN shown mid-grey-blue (masked or outside the detector)."""
    data = np.asarray(image, float)
    finite = np.isfinite(data)
    if not finite.any():
        return np.full(data.shape, 60, np.uint8)
    if lo is None or hi is None:
        lo, hi = np.percentile(data[finite], [5.0, 99.7])
    span = max(hi - lo, 1e-12)
    scaled = np.arcsinh(np.clip((np.where(finite, data, lo) - lo) / span, 0, None) * 10.0) / math.asinh(10.0)
    out = (np.clip(scaled, 0, 1) * 255).astype(np.uint8)
    out[~finite] = 60
    return out


def _encode(img: Image.Image, fmt: str, **kwargs) -> str:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def gif_data_uri(cube: np.ndarray, *, duration_ms: int = 400) -> str:
    """Animated GIF data URI (a blink) of a cube (n, ny, nx), one common stretch for all frames."""
    finite = cube[np.isfinite(cube)]
    lo, hi = (np.percentile(finite, [5.0, 99.7]) if finite.size else (0.0, 1.0))
    frames = [Image.fromarray(stretch(plane, lo, hi)[::-1]).convert("P") for plane in cube]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=duration_ms, loop=0)


def _overview_image(binned: np.ndarray, factor: int, tracks: list) -> str:
    """PNG of a binned CCD with tracks: [(name, xs, ys)] in CCD pixels."""
    arr = stretch(binned)[::-1]
    img = Image.fromarray(arr).convert("RGB")
    draw = ImageDraw.Draw(img)
    ny = binned.shape[0]
    for name, xs, ys in tracks:
        pts = [((float(x) + 0.5) / factor - 0.5, ny - 1 - ((float(y) + 0.5) / factor - 0.5)) for x, y in zip(xs, ys)
               if np.isfinite(x) and np.isfinite(y)]
        if not pts:
            continue
        if len(pts) > 1:
            draw.line(pts, fill=(255, 60, 60), width=2)
        x, y = pts[0]
        draw.ellipse([x - 6, y - 6, x + 6, y + 6], outline=(80, 220, 80), width=2)
        draw.text((x + 8, y - 6), name, fill=(255, 255, 120))
    return _encode(img, "JPEG", quality=85)  # a noisy sky compresses ten times better than as PNG


#: Scale bar lengths tried on a stamp [arcsec], the first that spans at least 15 % of it wins.
SCALE_BARS = (1.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def scale_bar(scale: float, side: int) -> float | None:
    """Length [arcsec] of a stamp's scale bar: 1" or 10" where that spans 15-50 % of ``side`` pixels of
    ``scale`` [arcsec/px], else the next of :data:`SCALE_BARS` that fits; None without a scale."""
    if not (scale > 0 and math.isfinite(scale)):
        return None
    fitting = [b for b in SCALE_BARS if b / scale <= 0.5 * side]
    for bar in fitting:
        if bar / scale >= 0.15 * side:
            return bar
    return fitting[-1] if fitting else None


def annotated_stamp(stamp: np.ndarray, *, jacobian=None, xy=None, track=None, lo=None, hi=None,
                    min_display: int = 150) -> str:
    """PNG data URI of a cutout with north/east arrows, a scale bar and the object's fitted track.

    Parameters
    ----------
    stamp : ndarray (s, s)
        The cutout (row 0 at the bottom once displayed).
    jacobian : array (4,), optional
        ``d(xi)/dx, d(xi)/dy, d(eta)/dx, d(eta)/dy`` [arcsec/px] at the object (xi east, eta north): the local
        WCS.  Without it (no WCS, or a cutout of an earlier run) the stamp has no arrows, bar or track.
    xy : (float, float), optional
        The observation's position in the stamp [px, 0-based].
    track : (array, array), optional
        Offsets [arcsec] (xi, eta) of the fitted track from the observation at the first and last times.
    lo, hi : float, optional
        Display limits (one stretch for a whole strip).
    min_display : int
        The stamp is enlarged (nearest pixel) by an integer factor to at least this size, so the marks stay
        thin and sharp.
    """
    ny, nx = stamp.shape
    k = max(1, int(math.ceil(min_display / max(ny, nx))))
    arr = stretch(stamp, lo, hi)[::-1]
    img = Image.fromarray(np.kron(arr, np.ones((k, k), np.uint8))).convert("RGB")
    jac = None if jacobian is None else np.asarray(jacobian, float).reshape(2, 2)
    if jac is not None and np.all(np.isfinite(jac)) and abs(np.linalg.det(jac)) > 0:
        draw = ImageDraw.Draw(img)
        inv = np.linalg.inv(jac)  # (xi, eta) [arcsec] -> (dx, dy) [px]
        W, H = img.size

        def disp(x, y):  # stamp pixel -> display pixel (row 0 at the bottom)
            return (x + 0.5) * k, H - (y + 0.5) * k

        # north and east arrows in the upper-left corner
        base = np.array([0.2 * W, 0.2 * H])
        length = 0.14 * min(W, H)
        for label, vec in (("N", inv @ np.array([0.0, 1.0])), ("E", inv @ np.array([1.0, 0.0]))):
            d = np.array([vec[0], -vec[1]])  # display y grows downwards
            d = d / max(np.hypot(*d), 1e-12) * length
            tip = base + d
            draw.line([tuple(base), tuple(tip)], fill=(255, 220, 60), width=2)
            side = np.array([-d[1], d[0]]) * 0.25
            draw.polygon([tuple(tip), tuple(tip - 0.3 * d + side), tuple(tip - 0.3 * d - side)], fill=(255, 220, 60))
            draw.text(tuple(tip + 0.25 * d - np.array([3, 5])), label, fill=(255, 220, 60))
        scale = math.sqrt(abs(np.linalg.det(jac)))
        bar = scale_bar(scale, nx)
        if bar is not None:
            length_px = bar / scale * k
            x1, y1 = W - 0.06 * W, H - 0.08 * H
            draw.line([(x1 - length_px, y1), (x1, y1)], fill=(255, 255, 255), width=3)
            text = f'{bar:g}"' if bar < 60 else f"{bar / 60:g}'"
            draw.text((x1 - length_px, y1 - 14), text, fill=(255, 255, 255))
        if xy is not None and track is not None:
            (xi0, eta0), (xi1, eta1) = track
            (dx0, dy0), (dx1, dy1) = inv @ np.array([xi0, eta0]), inv @ np.array([xi1, eta1])
            p0, p1 = np.array(disp(xy[0] + dx0, xy[1] + dy0)), np.array(disp(xy[0] + dx1, xy[1] + dy1))
            centre = np.array(disp(*xy))
            gap = 0.12 * min(W, H)  # the track stops short of the object so it stays visible
            seg = p1 - p0
            span = float(np.hypot(*seg))
            if span > 0:
                u = seg / span
                s_c = float(np.dot(centre - p0, u))
                for a, b in ((0.0, s_c - gap), (s_c + gap, span)):
                    if b > a:
                        draw.line([tuple(p0 + a * u), tuple(p0 + b * u)], fill=(255, 70, 70), width=1)
    return _encode(img, "PNG")


def _fmt(value, spec: str) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    return format(v, spec) if math.isfinite(v) else ""


def object_links(designation: str) -> list[tuple[str, str]]:
    """Pages of a known object at the MPC and at JPL's Small-Body Database: [(label, URL)]."""
    from urllib.parse import quote

    key = quote(designation.strip())
    return [("MPC", f"https://minorplanetcenter.net/db_search/show_object?object_id={key}"),
            ("JPL", f"https://ssd.jpl.nasa.gov/tools/sbdb_lookup.html#/?sstr={key}")]


def _utc(mjd: float) -> str:
    from astropy.time import Time

    if not math.isfinite(float(mjd)):
        return ("", "")
    iso = Time(float(mjd), format="mjd", scale="utc").isot
    return iso[:10], iso[11:22] + " UTC"


def _environment():
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("ssodetect.report", "templates"),
                              autoescape=jinja2.select_autoescape(["html"]), undefined=jinja2.StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True)


def render_report(*, title: str, observations: Table, objects: Table, provenance: dict, config_text: str,
                  astrometry: Table | None, cutouts: dict, overview: list, identities: dict,
                  known: Table | None = None, max_strip: int = 12, notes: list | None = None,
                  header: list | None = None, plots: dict | None = None) -> str:
    """The report page (Jinja2 template ``report/templates/report.html``; one file, opens offline).

    Parameters
    ----------
    title : str
    observations, objects : Table
        The run's ``observations.ecsv`` and ``objects.ecsv``.
    provenance : dict
        ``provenance.json`` (inputs, timings, software versions).
    config_text : str
        The run's configuration (TOML).
    astrometry : Table or None
        ``astrometry.ecsv`` (per CCD exposure fit quality).
    cutouts : dict
        Object -> (cube (n, s, s), index) from :func:`ssodetect.report.cutouts.read_cutouts`.
    overview : list
        [(ccd, binned image, factor, WCS or None)] from :func:`ssodetect.report.cutouts.read_overview`.
    identities : dict
        Object -> designation of the known object it was identified with.
    known : Table, optional
        Known objects predicted in the field (``known.ecsv``).
    max_strip : int
        Most cutouts shown in a strip (evenly sampled over the observations).
    notes : list of str, optional
        Placeholders in the ADES/MPC files (unassigned station, default zero point, unknown catalogue or
        aperture), shown in a box at the top.
    header : list of HeaderRow, optional
        The observing context (:func:`ssodetect.report.context.header_rows`).
    plots : dict, optional
        Title -> PNG data URI (:mod:`ssodetect.report.plots`); None values are left out.
    """
    relative = int(np.sum(np.asarray(observations["wcs"]).astype(str) == "relative")) if len(observations) else 0
    timings = [[k, _fmt(v, ".2f")] for k, v in provenance.get("timings_s", {}).items()]
    fits_rows = []
    if astrometry is not None and len(astrometry):
        fits_rows = [[r["exposure"], r["ccd"], r["status"], r["n_matched"], _fmt(float(r["rms_ra"]) * 1000, ".1f"),
                      _fmt(float(r["rms_dec"]) * 1000, ".1f"), _fmt(r["zeropoint"], ".3f")] for r in astrometry]
    known_rows = []
    if known is not None and len(known):
        known_rows = [{"designation": str(r["designation"]), "links": object_links(str(r["designation"])),
                       "cells": [r["matched"] or "not found", _fmt(r["predicted_mag"], ".1f"), _fmt(r["offset"], ".2f"),
                                 _fmt(r["rate"], ".2f")]} for r in known]
    # columns as arrays, indexed per object below (slicing the Table per object cost ~1.5 ms each)
    column = {c: np.asarray(observations[c]) for c in ("ra", "dec", "x", "y", "mjd")}
    by_ccd = rows_by(observations, "ccd")
    overview_items = []
    for ccd, binned, factor, wcs in overview:
        tracks = []
        on = by_ccd.get(ccd, np.zeros(0, int))
        for name, idx in rows_by(observations[on], "object").items():
            idx = on[idx]
            if wcs is not None:  # sky positions in the overview's frame (pixel positions jump with the dithers)
                xs, ys = world_to_pixels(wcs, column["ra"][idx].astype(float), column["dec"][idx].astype(float))
            else:
                xs, ys = column["x"][idx], column["y"][idx]
            tracks.append((identities.get(name, name), xs, ys))
        overview_items.append({"ccd": ccd, "factor": factor, "src": _overview_image(binned, factor, tracks)})
    summary = [{"name": str(r["object"]), "known": identities.get(str(r["object"]), ""),
                "cells": [r["n_obs"], _fmt(r["rate"], ".2f"), _fmt(r["pa"], ".1f"), _fmt(r["mag"], ".2f"),
                          _fmt(r["snr"], ".1f"), r["kind"]]} for r in objects]
    by_object = rows_by(observations, "object")
    table_columns = ("obs_time", "ra", "dec", "ra_err", "dec_err", "mag", "snr", "x", "y", "ccd")
    listed = {c: observations[c].tolist() for c in table_columns}
    formats = {"ra": ".6f", "dec": ".6f", "ra_err": ".3f", "dec_err": ".3f", "mag": ".2f", "snr": ".1f", "x": ".2f",
               "y": ".2f"}
    relative_rows = (np.asarray(observations["wcs"]).astype(str) == "relative" if "wcs" in observations.colnames
                     else np.zeros(len(observations), bool))
    fallback_jac = _overview_jacobians(overview)
    items = []
    for r in objects:
        name = str(r["object"])
        idx = by_object.get(name, np.zeros(0, int))
        flags = [str(r["kind"])]
        if relative_rows[idx].any():
            flags.append("positions on a relative WCS")
        if float(r["chi2_dof"]) > 3:
            flags.append("poor linear fit")
        item = {"name": name, "flags": flags, "known": identities.get(name, ""),
                "links": object_links(identities[name]) if name in identities else [],
                "motion": f"rate {_fmt(r['rate'], '.2f')} ± {_fmt(r['rate_err'], '.2f')}″/h, PA {_fmt(r['pa'], '.1f')}°, "
                          f"rms residual {_fmt(float(r['rms_resid']) * 1000, '.1f')} mas",
                "stamps": [], "blink": None, "side": 120,
                "rows": [[_fmt(listed[c][i], formats[c]) if c in formats else listed[c][i] for c in table_columns]
                         for i in idx]}
        if name in cutouts:
            item["stamps"], item["blink"], item["side"] = _strip(
                name, *cutouts[name], max_strip, idx, column, fallback_jac, relative_rows)
        items.append(item)
    page = _environment().get_template("report.html").render(
        title=title, n_objects=len(objects), n_known=len(identities), n_observations=len(observations),
        n_inputs=len(provenance.get("inputs", [])),
        software=", ".join(f"{k} {v}" for k, v in provenance.get("software", {}).items()),
        notes=notes or [], relative=relative, header=header or [], plots={k: v for k, v in (plots or {}).items() if v},
        timings=timings, inputs=printable(", ".join(provenance.get("inputs", []))), fits=fits_rows,
        config_text=config_text,
        known=known_rows, overview=overview_items, summary=summary, objects=items)
    return page


def _overview_jacobians(overview: list) -> dict:
    """CCD -> local Jacobian (4,) [arcsec/px] at the centre of the overview's WCS: arrows for cutouts of runs made
    before the cutouts carried their own."""
    out = {}
    for ccd, binned, factor, wcs in overview:
        if wcs is None:
            continue
        ny, nx = binned.shape
        out[ccd] = pixel_jacobian(wcs, 0.5 * nx * factor, 0.5 * ny * factor)
    return out


def _strip(name, cube, planes, max_strip, idx, column, fallback_jac, relative_rows):
    """The stamps of one object: [{src, utc, exposure}], its blink and the displayed side [CSS px]."""
    pick = np.unique(np.linspace(0, len(cube) - 1, min(max_strip, len(cube))).round().astype(int))
    finite = cube[np.isfinite(cube)]
    lo, hi = (np.percentile(finite, [5.0, 99.7]) if finite.size else (0.0, 1.0))
    fields = planes.dtype.names or ()
    track = None
    if len(idx) >= 2 and not relative_rows[idx].any():
        track = fitted_track(column["mjd"][idx].astype(float), column["ra"][idx].astype(float),
                             column["dec"][idx].astype(float))
    t_ends = (float(np.min(column["mjd"][idx])), float(np.max(column["mjd"][idx]))) if len(idx) else None
    stamps = []
    side = cube.shape[-1]
    for k in pick:
        plane = planes[k] if k < len(planes) else None
        jac = None
        if plane is not None and "jac" in fields:
            jac = np.asarray(plane["jac"], float)
        elif fallback_jac:  # the first exposure's WCS of a CCD: one orientation and scale for the instrument
            jac = next(iter(fallback_jac.values()))
        xy, offsets = None, None
        if plane is not None and "x0" in fields and "x" in fields:
            xy = (float(plane["x"]) - float(plane["x0"]), float(plane["y"]) - float(plane["y0"]))
        if track is not None and xy is not None and "mjd" in fields and t_ends is not None:
            from ssodetect.astrometry.tangent import TangentPlane

            ra_k, dec_k = track(np.array([float(plane["mjd"])]))
            tangent = TangentPlane(float(ra_k[0]), float(dec_k[0]))
            ra_e, dec_e = track(np.array(t_ends))
            xi, eta = tangent.to_plane(ra_e, dec_e)
            offsets = ((float(xi[0]), float(eta[0])), (float(xi[1]), float(eta[1])))
        stamps.append({"src": annotated_stamp(cube[k], jacobian=jac, xy=xy, track=offsets, lo=lo, hi=hi),
                       "utc": _utc(plane["mjd"]) if plane is not None and "mjd" in fields else ("", ""),
                       "exposure": int(plane["exposure"]) if plane is not None and "exposure" in fields else int(k)})
    shown = max(120, min(side * max(1, math.ceil(150 / side)), 240))  # as drawn (annotated_stamp), at most 240
    return stamps, gif_data_uri(cube), shown
