"""A self-contained HTML report of a run (opens offline: every image is embedded as a data URI).

Sections: run summary (inputs, timings, per-CCD astrometric fit quality, configuration), a field
overview per CCD with every object's track drawn, and per object its identification, rate and
position angle, flags, a cutout strip across the exposures, an animated GIF blink and its table of
observations.  Images are drawn with Pillow; the page has no scripts.
"""
from __future__ import annotations

import base64
import html
import io
import math

import numpy as np
from astropy.table import Table
from PIL import Image, ImageDraw

from ssodetect.columns import rows_by

__all__ = ["stretch", "png_data_uri", "gif_data_uri", "render_report"]

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em;color:#1b1b1b;background:#fafafa}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ccc}h3{font-size:1.05em;margin:.2em 0}
table{border-collapse:collapse;font-size:.85em;margin:.4em 0}td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}
th{background:#eee}td.l,th.l{text-align:left}.obj{background:#fff;border:1px solid #ddd;padding:.6em;margin:.8em 0}
.strip img,.blink img{image-rendering:pixelated;margin-right:3px;border:1px solid #444}
.flag{display:inline-block;background:#f4d9a6;border-radius:3px;padding:0 4px;margin-right:3px;font-size:.8em}
pre{background:#f0f0f0;padding:.6em;font-size:.8em;overflow-x:auto}.ov img{border:1px solid #444;margin:4px;max-width:46vw}
.note{background:#fde8e8;padding:.4em}
"""


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


def png_data_uri(image: np.ndarray, *, flip: bool = True) -> str:
    """PNG data URI of an 8-bit or float image (float images are stretched), row 0 at the bottom.
    Images keep their pixels; the page enlarges them (``image-rendering: pixelated``)."""
    arr = image if image.dtype == np.uint8 else stretch(image)
    if flip:
        arr = arr[::-1]
    return _encode(Image.fromarray(arr), "PNG")


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


def _table(rows: list[list], header: list[str], left: int = 1) -> str:
    head = "".join(f"<th class=\"{'l' if k < left else ''}\">{html.escape(h)}</th>" for k, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f"<td class=\"{'l' if k < left else ''}\">{html.escape(str(v))}</td>" for k, v in enumerate(r))
        + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value, spec: str) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    return format(v, spec) if math.isfinite(v) else ""


def render_report(*, title: str, observations: Table, objects: Table, provenance: dict, config_text: str,
                  astrometry: Table | None, cutouts: dict, overview: list, identities: dict,
                  known: Table | None = None, max_strip: int = 12, notes: list | None = None) -> str:
    """The report page.

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
    """
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    n_known = len(identities)
    parts.append(
        f"<p>{len(objects)} moving objects ({n_known} identified with known objects), {len(observations)} observations "
        f"from {len(provenance.get('inputs', []))} input path(s).  Software: "
        + html.escape(", ".join(f"{k} {v}" for k, v in provenance.get("software", {}).items())) + "</p>")
    if notes:
        parts.append("<div class=\"note\"><b>Before submitting the ADES / MPC files:</b><ul>"
                     + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul></div>")
    relative = int(np.sum(np.asarray(observations["wcs"]).astype(str) == "relative")) if len(observations) else 0
    if relative:
        parts.append(f"<p class=\"note\">{relative} observations have positions on a relative WCS only (frames registered "
                     "to each other, no astrometric solution): they are left out of the ADES and MPC files; give a reference "
                     "catalogue (--refcat) or a WCS for one frame ([astrometry] reference_wcs) to report them.</p>")
    parts.append("<h2>Run</h2>")
    timings = provenance.get("timings_s", {})
    parts.append(_table([[k, _fmt(v, ".2f")] for k, v in timings.items()], ["stage", "time [s]"]))
    parts.append("<p>Inputs: " + html.escape(", ".join(provenance.get("inputs", []))) + "</p>")
    if astrometry is not None and len(astrometry):
        rows = [[r["exposure"], r["ccd"], r["status"], r["n_matched"], _fmt(float(r["rms_ra"]) * 1000, ".1f"),
                 _fmt(float(r["rms_dec"]) * 1000, ".1f"), _fmt(r["zeropoint"], ".3f")] for r in astrometry]
        parts.append("<h3>Astrometric fit per CCD exposure</h3>" + _table(
            rows, ["exposure", "ccd", "status", "stars", "rms RA [mas]", "rms Dec [mas]", "zero point"], left=3))
    parts.append("<details><summary>Configuration</summary><pre>" + html.escape(config_text) + "</pre></details>")
    if known is not None and len(known):
        rows = [[r["designation"], r["matched"] or "not found", _fmt(r["predicted_mag"], ".1f"),
                 _fmt(r["offset"], ".2f"), _fmt(r["rate"], ".2f")] for r in known]
        parts.append("<h3>Known objects predicted in the field</h3>" + _table(
            rows, ["designation", "matched object", "V predicted", "offset [\"]", "rate [\"/h]"], left=2))
    # columns as arrays, indexed per object below (slicing the Table per object cost ~1.5 ms each)
    column = {c: np.asarray(observations[c]) for c in ("ra", "dec", "x", "y")}
    by_ccd = rows_by(observations, "ccd")
    parts.append("<h2>Field overview</h2><div class=\"ov\">")
    for ccd, binned, factor, wcs in overview:
        tracks = []
        on = by_ccd.get(ccd, np.zeros(0, int))
        for name, idx in rows_by(observations[on], "object").items():
            idx = on[idx]
            if wcs is not None:  # sky positions in the overview's frame (pixel positions jump with the dithers)
                xs, ys = wcs.all_world2pix(column["ra"][idx].astype(float), column["dec"][idx].astype(float), 0,
                                           quiet=True)
            else:
                xs, ys = column["x"][idx], column["y"][idx]
            tracks.append((identities.get(name, name), xs, ys))
        parts.append(f"<figure style=\"display:inline-block\"><img alt=\"CCD {html.escape(ccd)}\" "
                     f"src=\"{_overview_image(binned, factor, tracks)}\"><figcaption>CCD {html.escape(ccd)} "
                     f"(binned {factor}x{factor}; tracks in red)</figcaption></figure>")
    parts.append("</div><h2>Objects</h2>")
    summary = [[r["object"], identities.get(str(r["object"]), ""), r["n_obs"], _fmt(r["rate"], ".2f"),
                _fmt(r["pa"], ".1f"), _fmt(r["mag"], ".2f"), _fmt(r["snr"], ".1f"), r["kind"]] for r in objects]
    parts.append(_table(summary, ["object", "known as", "obs", "rate [\"/h]", "PA [deg]", "mag", "SNR", "kind"], left=2))
    by_object = rows_by(observations, "object")
    table_columns = ("obs_time", "ra", "dec", "ra_err", "dec_err", "mag", "snr", "x", "y", "ccd")
    listed = {c: observations[c].tolist() for c in table_columns}
    formats = {"ra": ".6f", "dec": ".6f", "ra_err": ".3f", "dec_err": ".3f", "mag": ".2f", "snr": ".1f", "x": ".2f",
               "y": ".2f"}
    relative_rows = (np.asarray(observations["wcs"]).astype(str) == "relative" if "wcs" in observations.colnames
                     else np.zeros(len(observations), bool))
    for r in objects:
        name = str(r["object"])
        idx = by_object.get(name, np.zeros(0, int))
        flags = [r["kind"]]
        if name in identities:
            flags.append(f"known: {identities[name]}")
        if relative_rows[idx].any():
            flags.append("positions on a relative WCS")
        if float(r["chi2_dof"]) > 3:
            flags.append("poor linear fit")
        parts.append(f"<div class=\"obj\" id=\"{html.escape(name)}\"><h3>{html.escape(name)}</h3><p>"
                     + "".join(f"<span class=\"flag\">{html.escape(str(f))}</span>" for f in flags)
                     + f" rate {_fmt(r['rate'], '.2f')} &plusmn; {_fmt(r['rate_err'], '.2f')}&Prime;/h, PA "
                     f"{_fmt(r['pa'], '.1f')}&deg;, rms residual {_fmt(float(r['rms_resid']) * 1000, '.1f')} mas</p>")
        if name in cutouts:
            cube, _ = cutouts[name]
            pick = np.unique(np.linspace(0, len(cube) - 1, min(max_strip, len(cube))).round().astype(int))
            side = max(120, cube.shape[-1])  # displayed size [CSS px]
            strip = "".join(f"<img alt=\"{html.escape(name)} cutout {k}\" width=\"{side}\" height=\"{side}\" "
                            f"src=\"{png_data_uri(cube[k])}\">" for k in pick)
            parts.append(f"<div class=\"strip\">{strip}</div>")
            parts.append(f"<div class=\"blink\"><img alt=\"{html.escape(name)} blink\" width=\"{side}\" "
                         f"height=\"{side}\" src=\"{gif_data_uri(cube)}\"></div>")
        rows = [[_fmt(listed[c][i], formats[c]) if c in formats else listed[c][i] for c in table_columns] for i in idx]
        parts.append(_table(rows, ["time (UTC)", "RA [deg]", "Dec [deg]", "\u03c3RA [\"]", "\u03c3Dec [\"]", "mag",
                                   "SNR", "x", "y", "ccd"]))
        parts.append("</div>")
    parts.append("</body></html>\n")
    return "".join(parts)
