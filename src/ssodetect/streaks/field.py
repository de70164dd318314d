"""Trailed fields: whether the stars of an exposure are trailed (tracking drift, non-sidereal tracking) and by what.

A telescope that drifts, or tracks an asteroid, trails every star alike: the bright compact sources of the
exposure share one trail vector (length and axis), where movers' trails each have their own and galaxies are
extended.  :func:`star_trail` finds that vector, or says there is none.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np
from astropy.table import Table

from ssodetect.streaks.detect import EDGE_MIN_TRAIL_FWHM

__all__ = ["StarTrail", "star_trail", "own_motion", "field_motion", "axial_difference", "MIN_STAR_TRAILS", "STAR_TRAIL_MIN_FWHM", "SHORT_TRAIL_SNR", "STAR_TRAIL_SHARE", "STAR_TRAIL_LENGTH_TOL",
           "STAR_TRAIL_LENGTH_FLOOR", "STAR_TRAIL_ANGLE_FLOOR", "STAR_TRAIL_MAX_SOURCES", "tracked_star_trail",
           "tracking_disagreement", "with_drift", "drift_of"]

log = logging.getLogger(__name__)

#: Trails that share one vector needed to call an exposure trailed.
MIN_STAR_TRAILS = 5
#: ... and the share they must make up of themselves and the bright point sources: where stars are points they
#: outnumber any movers' trails that happen to agree (60 fast movers of ecliptic directions among 150 stars: 6 %);
#: a field drifting 12 px had 91 such trails beside 77 point sources (54 %; its other 160 trails, galaxies and
#: pieces, of any axis), one drifting 30 px 31 beside 16.
STAR_TRAIL_SHARE = 0.4
#: Trails agree in length within this fraction of it or :data:`STAR_TRAIL_LENGTH_FLOOR` px, whichever is larger.
STAR_TRAIL_LENGTH_TOL = 0.15
STAR_TRAIL_LENGTH_FLOOR = 2.0
#: Trails agree in axis within this [deg] or the angle 2 px subtends over their length, whichever is larger.
STAR_TRAIL_ANGLE_FLOOR = 5.0
#: A shared trail shorter than this many PSF FWHM is the PSF's own elongation, not a drift (family member 351, an
#: elongated Moffat PSF of FWHM 1.41 px: 59 of its bright sources shared a 4.5 px "trail", 32 % of them and the
#: point sources); such stars are centred well as points.
STAR_TRAIL_MIN_FWHM = 4.0
#: A trail shorter than the stars' keeps its motion (the trail less theirs) from this S/N on.
SHORT_TRAIL_SNR = 30.0
#: The brightest this many bright compact sources are looked at (the count of pairs grows as its square).
STAR_TRAIL_MAX_SOURCES = 1500


@dataclass
class StarTrail:
    """The stars' trail in one exposure of one CCD.

    Attributes
    ----------
    trailed : bool
        The bright compact sources share one trail vector: the stars are trailed.
    length : float
        Its length [px] (median of the trails that share it; NaN without any).
    angle : float
        Its axis [deg, from +x towards +y, 0-180] (NaN without any).
    n_agree : int
        Trails that share it.
    n_bright : int
        Bright compact sources (points and trails) looked at.
    n_trails : int
        Trails among them.
    n_skipped : int
        Bright compact sources beyond :data:`STAR_TRAIL_MAX_SOURCES` (the faintest), not looked at.
    """

    trailed: bool
    length: float
    angle: float
    n_agree: int
    n_bright: int
    n_trails: int = 0
    n_skipped: int = 0

    @property
    def incoherent(self) -> bool:
        """Most bright compact sources are trails but they share no one vector (wind shake, a turning mount)."""
        return not self.trailed and self.n_trails >= MIN_STAR_TRAILS and self.n_trails >= 0.5 * self.n_bright

    def as_dict(self) -> dict:
        return asdict(self)

    def agrees(self, length, theta) -> np.ndarray:
        """Whether trails of ``length`` [px] and angle ``theta`` [rad, from +x towards +y] are this vector's."""
        if not math.isfinite(self.length):
            return np.zeros(np.shape(length), bool)
        return _agree(np.asarray(length, float), np.degrees(np.asarray(theta, float)) % 180.0, self.length, self.angle)


def axial_difference(a, b):
    """Smallest difference [deg] between two axes (angles modulo 180 deg)."""
    d = np.abs((np.asarray(a, float) - np.asarray(b, float)) % 180.0)
    return np.minimum(d, 180.0 - d)


def _agree(length, angle, ref_length, ref_angle):
    """Trails (``length`` [px], ``angle`` [deg]) within the tolerances of one of length ``ref_length``, axis
    ``ref_angle`` (arrays broadcast)."""
    tol_len = np.maximum(STAR_TRAIL_LENGTH_TOL * ref_length, STAR_TRAIL_LENGTH_FLOOR)
    tol_ang = np.maximum(STAR_TRAIL_ANGLE_FLOOR, np.degrees(np.arctan2(2.0, np.maximum(ref_length, 1e-9))))
    with np.errstate(invalid="ignore"):
        return (np.abs(length - ref_length) <= tol_len) & (axial_difference(angle, ref_angle) <= tol_ang)


def star_trail(detections: Table, min_snr: float, psf_fwhm: float = float("nan")) -> StarTrail:
    """The trail vector the bright compact sources of one exposure share, if they share one.

    Looked at are the unflagged, unmasked points and trails of S/N ``min_snr`` or more (the brightest
    :data:`STAR_TRAIL_MAX_SOURCES`, the others counted in ``n_skipped``).  The trail that the most others agree with
    (length within :data:`STAR_TRAIL_LENGTH_TOL` or :data:`STAR_TRAIL_LENGTH_FLOOR`, axis within
    :data:`STAR_TRAIL_ANGLE_FLOOR` or the angle 2 px subtend over its length) sets the vector; the exposure is
    trailed when at least :data:`MIN_STAR_TRAILS` trails agree with it and they make up
    :data:`STAR_TRAIL_SHARE` of themselves and the point sources looked at, and it is at least
    :data:`STAR_TRAIL_MIN_FWHM` PSF FWHM long.  Movers' trails (each its own length and axis, however many) and galaxies (extended) do not make
    a field trailed; a field of stars trailed alike does, whatever its movers.

    Parameters
    ----------
    detections : Table
        One CCD exposure's detections: ``kind``, ``snr``, ``near_mask``, ``sep_flag``, ``length`` [px] and ``theta``
        [rad, from +x towards +y].
    min_snr : float
        S/N of the sources looked at.
    psf_fwhm : float
        The exposure's PSF FWHM [px] (NaN: no shortest trail).

    Returns
    -------
    StarTrail
    """
    if len(detections) == 0:
        return StarTrail(False, float("nan"), float("nan"), 0, 0, 0)
    kind = np.asarray(detections["kind"])
    bright = (np.isin(kind, ["point", "trail"]) & ~np.asarray(detections["near_mask"], bool)
              & (np.asarray(detections["snr"], float) >= min_snr)
              & (np.asarray(detections["sep_flag"]) & ~(1 | 32) == 0))
    idx = np.nonzero(bright)[0]
    n_skipped = max(int(idx.size) - STAR_TRAIL_MAX_SOURCES, 0)
    if idx.size > STAR_TRAIL_MAX_SOURCES:
        idx = idx[np.argsort(-np.asarray(detections["snr"], float)[idx], kind="stable")[:STAR_TRAIL_MAX_SOURCES]]
    n_bright = int(idx.size)
    trails = idx[kind[idx] == "trail"]
    length = np.asarray(detections["length"], float)[trails]
    angle = np.degrees(np.asarray(detections["theta"], float)[trails]) % 180.0
    ok = np.isfinite(length) & np.isfinite(angle)
    length, angle = length[ok], angle[ok]
    if length.size == 0:
        return StarTrail(False, float("nan"), float("nan"), 0, n_bright, 0, n_skipped)
    agree = _agree(length[None, :], angle[None, :], length[:, None], angle[:, None])
    best = int(np.argmax(agree.sum(axis=1)))
    members = agree[best]
    # the vector: median length, mean axis (doubled angles: an axis has no sign)
    two = np.radians(2.0 * angle[members])
    axis = (0.5 * math.degrees(math.atan2(float(np.mean(np.sin(two))), float(np.mean(np.cos(two)))))) % 180.0
    n_agree = int(members.sum())
    n_points = int(np.sum(kind[idx] == "point"))
    vector = float(np.median(length[members]))
    trailed = (n_agree >= MIN_STAR_TRAILS and n_agree >= STAR_TRAIL_SHARE * (n_agree + n_points)
               and not vector < STAR_TRAIL_MIN_FWHM * psf_fwhm)
    return StarTrail(trailed, vector, axis, n_agree, n_bright, int(length.size), n_skipped)


def own_motion(kind, length, theta, star: StarTrail | None, snr=None, width_fwhm=None) -> tuple[np.ndarray, np.ndarray]:
    """Each source's own motion on the detector during its exposure: its trail less the stars' trail.

    On an exposure whose stars are trailed by ``star`` (a drift ``S``), a source that moves by ``m`` draws ``S + m``:
    of the two motions its trail allows (``T - S``, ``T + S``, an axis having no sign) the shorter is taken (a
    mover faster than the drift and against it is given the other, and linking does not tell: it is measured as
    that slower motion). A trail of the stars' vector, or shorter than the stars', has no motion of its own (a piece of a star's trail, a faint one measured short, a blob) unless it is clear: S/N
    :data:`SHORT_TRAIL_SNR` or more, :data:`~ssodetect.streaks.detect.EDGE_MIN_TRAIL_FWHM` of its width long and
    off the stars' axis (a
    fainter mover against the drift, its trail shortened, is not told from a blob by its trail; its positions still
    link it as a slow one). A point
    source there moved by the stars' trail (a target the telescope tracked). Other kinds, and every source where
    ``star`` is None or not trailed, keep their own trail.

    Parameters
    ----------
    kind : ndarray (n,) str
    length : ndarray (n,)
        Trail lengths [px] (NaN for point sources).
    theta : ndarray (n,)
        Trail angles [rad, from +x towards +y].
    star : StarTrail or None
    snr, width_fwhm : ndarray (n,), optional
        S/N and the FWHM of each trail's width [px] (without them, every trail shorter than the stars' is a blob).

    Returns
    -------
    length, theta : ndarray (n,)
        [px], [rad].
    """
    kind = np.asarray(kind)
    length, theta = np.asarray(length, float).copy(), np.asarray(theta, float).copy()
    if star is None or not star.trailed or not math.isfinite(star.length):
        return length, theta
    sx, sy = star.length * math.cos(math.radians(star.angle)), star.length * math.sin(math.radians(star.angle))
    trail = kind == "trail"
    point = kind == "point"
    tx = np.where(trail, np.nan_to_num(length) * np.cos(np.nan_to_num(theta)), 0.0)
    ty = np.where(trail, np.nan_to_num(length) * np.sin(np.nan_to_num(theta)), 0.0)
    minus, plus = np.hypot(tx - sx, ty - sy), np.hypot(tx + sx, ty + sy)
    mx, my = np.where(minus <= plus, tx - sx, tx + sx), np.where(minus <= plus, ty - sy, ty + sy)
    # a trail shorter than the stars' is a piece of a star's trail (broken by masked pixels), a faint trail measured
    # short, or a blob whose axis means nothing: no motion of its own (on a field drifting 25 px, 134 such trails an
    # exposure, mostly 3-10 px blobs of S/N 6-40 at any axis, had been given ~25 px of motion: fast movers), unless
    # it is a clear trail: bright and long for its width (a V 20.5 mover at 13.6"/h against a 25 px drift drew
    # 7-25 px trails of S/N 220-270)
    # a trail of the stars' vector (within its tolerances, however long) is a star's: no motion of its own
    short = trail & ((np.hypot(tx, ty) < star.length) | star.agrees(np.nan_to_num(length), np.nan_to_num(theta)))
    if snr is not None:
        # (along the stars' axis a bright short trail is a piece of a star's: 2 false fast movers on a 25 px drift)
        along = _agree(star.length, np.degrees(np.nan_to_num(theta)) % 180.0, star.length, star.angle)
        with np.errstate(invalid="ignore"):
            clear = (np.asarray(snr, float) >= SHORT_TRAIL_SNR) & (
                np.nan_to_num(length) >= EDGE_MIN_TRAIL_FWHM * np.asarray(width_fwhm, float)) & ~along
        short &= ~clear
    mx, my = np.where(short, 0.0, mx), np.where(short, 0.0, my)
    change = trail | point
    length[change] = np.hypot(mx, my)[change]
    theta[change] = np.arctan2(my, mx)[change]
    return length, theta


def field_motion(kind, length, theta, snr, width_fwhm, star: StarTrail, used: bool) -> dict:
    """The motion columns of one CCD exposure's detections and what was given none.

    Parameters
    ----------
    kind, length, theta, snr, width_fwhm : ndarray (n,)
        As for :func:`own_motion`.
    star : StarTrail
        The exposure's stars' trail (:func:`star_trail`).
    used : bool
        Whether the exposure is taken as trailed (``[astrometry] trailed_stars``: auto, or set).

    Returns
    -------
    dict
        ``own_length`` [px], ``own_theta`` [rad], ``drift_length`` [px] (arrays (n,): the drift's length where the
        stars trail by a vector found, else 0) and ``n_still`` (trails given no motion of their own there).
    """
    drifted = used and star.trailed
    own_length, own_theta = own_motion(kind, length, theta, star if used else None, snr=snr, width_fwhm=width_fwhm)
    n = len(own_length)
    n_still = int(np.sum((np.asarray(kind) == "trail") & (own_length == 0.0))) if drifted else 0
    return {"own_length": own_length, "own_theta": own_theta,
            "drift_length": np.full(n, star.length if drifted else 0.0), "n_still": n_still}


def tracked_star_trail(ra_rate: float, dec_rate: float, exptime: float, wcs, x: float, y: float) -> tuple[float, float]:
    """The trail the stars draw on the detector while the telescope tracks at a non-sidereal rate.

    The stars move against the tracking: by ``-(ra_rate, dec_rate) * exptime`` on the sky during the exposure.

    Parameters
    ----------
    ra_rate, dec_rate : float
        Tracking rate: RA rate times cos(Dec), Dec rate [arcsec/h].
    exptime : float
        [s].
    wcs : astropy.wcs.WCS
        The exposure's celestial WCS (a header's: its scale and rotation are what matter).
    x, y : float
        Where on the detector [px, 0-based] (the CCD's centre).

    Returns
    -------
    length, angle : float
        [px]; axis [deg, from +x towards +y, 0-180].
    """
    hours = exptime / 3600.0
    ra, dec = (float(v) for v in wcs.all_pix2world(x, y, 0))
    half_ra = 0.5 * ra_rate * hours / 3600.0 / max(math.cos(math.radians(dec)), 1e-6)  # [deg of RA]
    half_dec = 0.5 * dec_rate * hours / 3600.0
    xs, ys = wcs.all_world2pix(np.array([ra + half_ra, ra - half_ra]), np.array([dec + half_dec, dec - half_dec]), 0)
    dx, dy = float(xs[1] - xs[0]), float(ys[1] - ys[0])
    return math.hypot(dx, dy), math.degrees(math.atan2(dy, dx)) % 180.0


def tracking_disagreement(star: StarTrail, length: float, angle: float, psf_fwhm: float) -> str | None:
    """How the stars' measured trail contradicts the one a header's tracking rate implies (``length`` [px],
    ``angle`` [deg]), or None when they agree or the measurement cannot tell (fewer than :data:`MIN_STAR_TRAILS`
    bright compact sources).

    Trailed (at least :data:`STAR_TRAIL_MIN_FWHM` FWHM) on one side and not on the other is a contradiction; both
    trailed, the lengths and axes must agree within the star trail's tolerances (:data:`STAR_TRAIL_LENGTH_TOL` or
    :data:`STAR_TRAIL_LENGTH_FLOOR`, :data:`STAR_TRAIL_ANGLE_FLOOR` or 2 px over the length).
    """
    if star.n_bright < MIN_STAR_TRAILS:
        return None
    expected = not length < STAR_TRAIL_MIN_FWHM * psf_fwhm
    said = f"{length:.1f} px at {angle:.0f} deg"
    if expected and not star.trailed:
        seen = (f"the stars are not trailed (at most {star.n_agree} of {star.n_bright} bright sources share a trail)"
                if star.n_agree else f"the stars are points ({star.n_bright} bright sources)")
        return f"star trails of {said}, but {seen}"
    if star.trailed and not expected:
        return f"star trails of {said} (not trailed), but they trail {star.length:.1f} px at {star.angle:.0f} deg"
    if star.trailed and not bool(_agree(np.float64(star.length), np.float64(star.angle), length, angle)):
        return f"star trails of {said}, but they trail {star.length:.1f} px at {star.angle:.0f} deg"
    return None


def drift_of(star_trail: dict | None) -> tuple[float, float] | None:
    """The stars' trail ``(length [px], angle [deg])`` of a CCD exposure's ``info["star_trail"]`` record where the
    run treats the exposure as trailed (``used``) and a vector was measured; None otherwise."""
    st = star_trail or {}
    if not (st.get("used") and st.get("trailed") and math.isfinite(float(st.get("length", float("nan"))))):
        return None
    return float(st["length"]), float(st["angle"])


def with_drift(mx: float, my: float, drift: tuple[float, float]) -> tuple[float, float]:
    """The trail ``(dx, dy)`` [px] that a source moving ``(mx, my)`` [px] during the exposure draws where the stars
    trail by ``drift`` (``(length [px], angle [deg])``): its motion plus the drift.  An axis has no sign: the drift's
    is taken to make the shorter trail (a tracked target, moving against the drift, is a point; a slow mover's trail
    is about the drift either way), as :func:`own_motion` took the shorter motion."""
    a = math.radians(drift[1])
    sx, sy = drift[0] * math.cos(a), drift[0] * math.sin(a)
    if math.hypot(mx - sx, my - sy) < math.hypot(mx + sx, my + sy):
        sx, sy = -sx, -sy
    return mx + sx, my + sy
