"""Photometric zero point from stars matched to the reference catalogue."""
from __future__ import annotations

import math

import numpy as np
from astropy.stats import sigma_clipped_stats

__all__ = ["fit_zeropoint", "zeropoint_doubt", "MAX_ZEROPOINT_SCATTER", "MAX_ZEROPOINT_OFFSET"]


def fit_zeropoint(
    flux: np.ndarray,
    flux_err: np.ndarray,
    exptime: float,
    ref_mag: np.ndarray,
    *,
    colour: np.ndarray | None = None,
    colour_term: float = 0.0,
    min_stars: int = 5,
    clip: float = 3.0,
    counts: dict | None = None,
) -> tuple[float, float, int]:
    """Zero point ``zp`` with ``mag = zp - 2.5 log10(flux / exptime)`` from matched stars.

    Parameters
    ----------
    flux, flux_err : ndarray (n,)
        Measured fluxes and errors [ADU].
    exptime : float
        [s].
    ref_mag : ndarray (n,)
        Catalogue magnitudes (e.g. Gaia G).
    colour, colour_term : ndarray (n,), float
        Optional colour (e.g. BP-RP) and coefficient: the expected image
        magnitude is ``ref_mag + colour_term * colour``.
    min_stars : int
        Fewer usable stars give NaN.
    clip : float
        Sigma clipping threshold.
    counts : dict, optional
        Filled with ``n_usable``: the stars usable for it (positive flux at S/N >= 10, a finite magnitude).

    Returns
    -------
    zp : float
        Sigma-clipped median [mag] (NaN when too few stars).
    zp_err : float
        Its standard error: 1.2533 * clipped std / sqrt(n) [mag].
    n : int
        Stars used.
    """
    flux = np.asarray(flux, float)
    ref = np.asarray(ref_mag, float)
    if colour is not None and colour_term:
        ref = ref + colour_term * np.nan_to_num(np.asarray(colour, float))
    ok = (flux > 0) & np.isfinite(ref) & (np.asarray(flux_err, float) < 0.1 * flux)
    if counts is not None:
        counts["n_usable"] = int(ok.sum())
    if ok.sum() < min_stars:
        return float("nan"), float("nan"), int(ok.sum())
    values = ref[ok] + 2.5 * np.log10(flux[ok] / max(exptime, 1e-9))
    clipped = values[np.abs(values - np.median(values)) < 1.0]  # drop gross mismatches before clipping
    if clipped.size < min_stars:
        return float("nan"), float("nan"), int(clipped.size)
    _, median, std = sigma_clipped_stats(clipped, sigma=clip, maxiters=5)
    used = int(np.sum(np.abs(clipped - median) <= clip * max(std, 1e-6)))
    return float(median), float(1.2533 * std / math.sqrt(max(used, 1))), used


#: Scatter [mag] of the matched stars' zero points beyond which a catalogue's magnitudes do not follow the fluxes
#: (another band, magnitudes of other stars, a column that is no magnitude); colour terms between broad bands give
#: 0.1-0.3 mag.
MAX_ZEROPOINT_SCATTER = 0.5
#: Stars below which (twice this many usable) the share of them agreeing on a zero point is not judged.
MIN_DOUBT_STARS = 5
#: Difference [mag] between a fitted zero point and the header's beyond which one of them is wrong.
MAX_ZEROPOINT_OFFSET = 1.0


def zeropoint_doubt(zeropoint: float, zeropoint_err: float, n: int, header_zeropoint: float | None = None,
                    n_usable: int = 0) -> str | None:
    """Why a fitted zero point (:func:`fit_zeropoint`) is not to be trusted, or None.

    A catalogue whose magnitudes are wrong gives a zero point all the same: fewer than half of the ``n_usable``
    stars (when at least ``2 * MIN_DOUBT_STARS``) agree on it, its stars scatter around it by more than
    :data:`MAX_ZEROPOINT_SCATTER` (their clipped scatter, ``zeropoint_err * sqrt(n) / 1.2533``; judged only for a
    zero point fitted on the catalogue, ``n_usable`` > 0), or it lies
    more than :data:`MAX_ZEROPOINT_OFFSET` from the zero point the frame's header gives (when it gives one).
    A constant offset with no header zero point cannot be seen.

    Parameters
    ----------
    zeropoint, zeropoint_err : float
        [mag]; NaN: none fitted (not judged).
    n : int
        Stars used.
    header_zeropoint : float, optional
        The header's zero point [mag for 1 ADU/s].
    """
    if n_usable >= 2 * MIN_DOUBT_STARS and n < 0.5 * n_usable:
        # (a zero point not fitted at all, fewer than min_stars agreeing, is a doubt as well)
        return (f"only {n} of its {n_usable} usable stars agree on a zero point (within 1 mag of their median, "
                "then 3 sigma): the catalogue's magnitudes do not follow the measured fluxes")
    if not (math.isfinite(zeropoint) and math.isfinite(zeropoint_err)) or n < 2:
        return None
    scatter = zeropoint_err * math.sqrt(n) / 1.2533
    # (a zero point carried over from another exposure, n_usable 0, has an error of another make: not judged so)
    if n_usable > 0 and scatter > MAX_ZEROPOINT_SCATTER:
        return (f"its {n} stars scatter by {scatter:.2f} mag about the zero point {zeropoint:.2f} (at most "
                f"{MAX_ZEROPOINT_SCATTER:g}): the catalogue's magnitudes do not follow the measured fluxes")
    if header_zeropoint is not None and math.isfinite(header_zeropoint) \
            and abs(zeropoint - header_zeropoint) > MAX_ZEROPOINT_OFFSET:
        return (f"the zero point fitted on the catalogue, {zeropoint:.2f}, is {zeropoint - header_zeropoint:+.2f} mag "
                f"from the header's {header_zeropoint:.2f} (at most {MAX_ZEROPOINT_OFFSET:g}): the catalogue's "
                "magnitudes are of another band or wrong, or the header's zero point is")
    return None
