"""Plots of a run for its report page (matplotlib, Agg, embedded as PNG data URIs: the page stays one file).

Each function takes the run's tables and returns a ``data:image/png;base64,...`` URI, or None when there is
nothing to plot (no objects, no fitted astrometry, no evaluation).  Rates in arcsec/h, position angles in
degrees east of north, magnitudes in the run's photometric system, residuals in milliarcseconds.
"""
from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")  # no display, no GUI toolkit: safe in workers and servers

import numpy as np  # noqa: E402
from astropy.table import Table  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = ["rate_vs_pa", "mag_vs_rate", "astrometric_residuals", "completeness_curves", "KIND_STYLE"]

#: Marker colour per object kind (as the region files: green slow, cyan fast, magenta blend, yellow-ish stacked).
KIND_STYLE = {"linked": "tab:green", "streak": "tab:cyan", "blend": "tab:pink", "stacked": "tab:olive"}


def _figure(width: float = 5.0, height: float = 3.4) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig


def _uri(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _by_kind(objects: Table):
    kinds = np.asarray(objects["kind"]).astype(str)
    for kind in dict.fromkeys(kinds):
        yield kind, kinds == kind


def rate_vs_pa(objects: Table) -> str | None:
    """Rate (log) against position angle of every object, coloured by how it was found."""
    if not len(objects):
        return None
    fig = _figure()
    ax = fig.add_subplot()
    rate, pa = np.asarray(objects["rate"], float), np.asarray(objects["pa"], float)
    for kind, sel in _by_kind(objects):
        ax.scatter(pa[sel] % 360.0, rate[sel], s=14, c=KIND_STYLE.get(kind, "0.4"), label=f"{kind} ({int(sel.sum())})")
    ax.set_xlim(0, 360)
    ax.set_xticks(range(0, 361, 90))
    if np.nanmin(rate, initial=np.inf) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("position angle [deg, E of N]")
    ax.set_ylabel("rate [arcsec/h]")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _uri(fig)


def mag_vs_rate(objects: Table) -> str | None:
    """Magnitude against rate (log) of every object with a magnitude."""
    mag = np.asarray(objects["mag"], float) if len(objects) else np.zeros(0)
    if not np.isfinite(mag).any():
        return None
    fig = _figure()
    ax = fig.add_subplot()
    rate = np.asarray(objects["rate"], float)
    for kind, sel in _by_kind(objects):
        ax.scatter(rate[sel], mag[sel], s=14, c=KIND_STYLE.get(kind, "0.4"), label=kind)
    if np.nanmin(rate, initial=np.inf) > 0:
        ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("rate [arcsec/h]")
    ax.set_ylabel("magnitude")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _uri(fig)


def astrometric_residuals(astrometry: Table | None) -> str | None:
    """RMS residuals of the reference stars [mas] in RA and Dec of every solved CCD exposure, per CCD."""
    if astrometry is None or not len(astrometry):
        return None
    ok = np.asarray(astrometry["status"]).astype(str) == "ok"
    if not ok.any():
        return None
    rows = astrometry[ok]
    ccds = list(dict.fromkeys(np.asarray(rows["ccd"]).astype(str)))
    where = {c: k for k, c in enumerate(ccds)}
    x = np.array([where[c] for c in np.asarray(rows["ccd"]).astype(str)], float)
    fig = _figure(max(5.0, 0.35 * len(ccds) + 2), 3.4)
    ax = fig.add_subplot()
    ax.scatter(x - 0.12, np.asarray(rows["rms_ra"], float) * 1000, s=14, label="RA")
    ax.scatter(x + 0.12, np.asarray(rows["rms_dec"], float) * 1000, s=14, marker="s", label="Dec")
    ax.set_xticks(range(len(ccds)), ccds, rotation=90 if len(ccds) > 8 else 0, fontsize=7)
    ax.set_xlabel("CCD (one point per exposure)")
    ax.set_ylabel("rms residual [mas]")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _uri(fig)


def completeness_curves(evaluation: Table | None) -> str | None:
    """Completeness against magnitude and against rate from ``evaluation.ecsv`` (``ssodetect evaluate``).

    The table has one row per bin: ``axis`` (``mag`` or ``rate``), ``lo``, ``hi``, ``n_findable``, ``n_found``.
    """
    if evaluation is None or not len(evaluation):
        return None
    fig = _figure(8.0, 3.2)
    axis = np.asarray(evaluation["axis"]).astype(str)
    for k, (name, label, log) in enumerate((("mag", "magnitude", False), ("rate", "rate [arcsec/h]", True))):
        ax = fig.add_subplot(1, 2, k + 1)
        rows = evaluation[axis == name]
        n = np.asarray(rows["n_findable"], float)
        found = np.asarray(rows["n_found"], float)
        lo, hi = np.asarray(rows["lo"], float), np.asarray(rows["hi"], float)
        has = n > 0
        mid = np.sqrt(lo * hi) if log else 0.5 * (lo + hi)
        frac = np.where(has, found / np.maximum(n, 1), np.nan)
        err = np.where(has, np.sqrt(np.clip(frac * (1 - frac), 0, None) / np.maximum(n, 1)), np.nan)
        ax.errorbar(mid[has], frac[has], yerr=err[has], xerr=None, fmt="o-", ms=4, capsize=2)
        for m, f, c in zip(mid[has], frac[has], n[has]):
            ax.annotate(f"{int(c)}", (m, f), textcoords="offset points", xytext=(0, 5), fontsize=6, ha="center")
        if log and has.any():
            ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.1)
        ax.set_xlabel(label)
        ax.set_ylabel("completeness")
        ax.grid(alpha=0.3)
        ax.set_title(f"vs {label.split(' ')[0]} (numbers: movers findable)", fontsize=8)
    return _uri(fig)
