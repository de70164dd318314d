"""Blind plate solving from a local reference catalogue (astrometry.net-style, small scale).

A :class:`SkyIndex` cuts the catalogue into overlapping circular tiles whose size
matches the image's angular size (one tile set per factor-of-two band of pixel
scale) and precomputes the triangles of the brightest stars of each tile on the
tile's own tangent plane.  :func:`blind_solve` matches the image's brightest
detections against each tile (any rotation, either parity, scale within the
band), nearest tiles to a rough pointing first, and accepts the first
hypothesis that is verified far above chance.  The result is a linear TAN WCS
and the matched pairs; the caller refines it (SIP fit, more stars).
"""
from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS

from ssodetect.astrometry.match import PatternIndex, match_patterns
from ssodetect.astrometry.tangent import TangentPlane

__all__ = ["SkyIndex", "BlindResult", "build_sky_indexes", "blind_solve"]

log = logging.getLogger(__name__)


@dataclass
class _Tile:
    plane: TangentPlane
    members: np.ndarray  # catalogue indices, brightest first
    index: PatternIndex


@dataclass
class BlindResult:
    """A blind solution.

    Attributes
    ----------
    wcs : WCS
        Linear TAN WCS (reference pixel at the image centre).
    pairs : ndarray (m, 2) int
        (source index, catalogue index) of the verified matches.
    pixel_scale : float
        [arcsec/px].
    n_tiles_tried : int
    """

    wcs: WCS
    pairs: np.ndarray
    pixel_scale: float
    n_tiles_tried: int


class SkyIndex:
    """Tiles of a catalogue sized for images of angular half-diagonal ``half_diag`` [arcsec].

    Solutions are searched in the pixel-scale band ``scale_range`` [arcsec/px].  Only the tiles' centres are
    computed up front; a tile's triangles are built when the search reaches it and at most
    :attr:`MAX_CACHED` tiles are kept, so memory is bounded by the image's size, not by the catalogue's
    extent (a 1e6-star catalogue over 2 x 2 deg gives ~30 000 tiles for a 1k image at 0.05"/px).

    Parameters
    ----------
    ra, dec : ndarray
        Catalogue positions [deg].
    mag : ndarray
        Magnitudes (brightest stars form the triangles).
    half_diag : float
        Half-diagonal of the image on the sky [arcsec] for this index.
    scale_range : (float, float)
        Pixel scales [arcsec/px] this index serves.
    n_ref : int
        Stars per tile used for triangles.
    """

    #: Tiles whose triangles are kept once built (least recently used ones are dropped).
    MAX_CACHED = 64
    #: A tile grid of more cells than this many per star is made only around the stars (the same tiles).
    DENSE_GRID_PER_STAR = 25

    def __init__(self, ra, dec, mag, *, half_diag: float, scale_range: tuple[float, float], n_ref: int = 60):
        from scipy.spatial import cKDTree

        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        ra = np.asarray(ra, float)
        dec = np.asarray(dec, float)
        order = np.argsort(np.asarray(mag, float))
        self.ra, self.dec = ra[order], dec[order]
        self.order = order
        self.half_diag = float(half_diag)
        self.n_ref = n_ref
        self._cache: OrderedDict[int, _Tile | None] = OrderedDict()
        self.centres_ra = self.centres_dec = np.zeros(0)
        if ra.size < 3:
            return
        vec = np.array([np.cos(np.radians(dec)) * np.cos(np.radians(ra)),
                        np.cos(np.radians(dec)) * np.sin(np.radians(ra)), np.sin(np.radians(dec))]).sum(axis=1)
        ra_c = math.degrees(math.atan2(vec[1], vec[0])) % 360.0
        dec_c = math.degrees(math.atan2(vec[2], math.hypot(vec[0], vec[1])))
        self._centre = TangentPlane(ra_c, dec_c)
        x, y = self._centre.to_plane(self.ra, self.dec)
        spacing = self.half_diag
        self.radius = self.half_diag + spacing / math.sqrt(2.0)
        # the grid np.arange(min, max + spacing, spacing) on each axis, counted before it is made
        nx = int(math.ceil((x.max() + spacing - x.min()) / spacing))
        ny = int(math.ceil((y.max() + spacing - y.min()) / spacing))
        self._tree = cKDTree(np.column_stack([x, y]))
        if nx * ny <= self.DENSE_GRID_PER_STAR * x.size:
            i, j = (g.ravel() for g in np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij"))
        else:
            # a grid far larger than the catalogue (fine pixel scales over a wide catalogue: a 1e-6"/px bound asked
            # for 72 GiB): only the cells within two of a star's, the same tiles (a tile's reach, 1.71 spacings,
            # never spans more), in memory of the catalogue's size
            ci = np.floor((x - x.min()) / spacing).astype(np.int64)
            cj = np.floor((y - y.min()) / spacing).astype(np.int64)
            di, dj = (g.ravel() for g in np.meshgrid(np.arange(-2, 3), np.arange(-2, 3), indexing="ij"))
            cells = np.unique(np.column_stack([(ci[:, None] + di[None, :]).ravel(), (cj[:, None] + dj[None, :]).ravel()]),
                              axis=0)
            cells = cells[(cells[:, 0] >= 0) & (cells[:, 0] < nx) & (cells[:, 1] >= 0) & (cells[:, 1] < ny)]
            i, j = cells[:, 0], cells[:, 1]
        cx, cy = x.min() + i * spacing, y.min() + j * spacing
        counts = np.asarray(self._tree.query_ball_point(np.column_stack([cx, cy]), r=self.radius, return_length=True))
        keep = counts >= 3
        self._cx, self._cy = cx[keep], cy[keep]
        self.centres_ra, self.centres_dec = self._centre.to_sky(self._cx, self._cy)

    def __len__(self) -> int:
        """Number of tiles (with at least 3 stars in reach)."""
        return int(self._cx.size) if self.ra.size >= 3 else 0

    def tile(self, i: int) -> _Tile | None:
        """Tile ``i``: its tangent plane, members (catalogue indices in brightness order) and triangle index."""
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        members = np.array(sorted(self._tree.query_ball_point([self._cx[i], self._cy[i]], r=self.radius)),
                           dtype=np.int64)  # indices are in brightness order already, sorted() keeps it
        plane = TangentPlane(float(self.centres_ra[i]), float(self.centres_dec[i]))
        tile = None
        if members.size >= 3:
            tx, ty = plane.to_plane(self.ra[members], self.dec[members])
            inside = np.hypot(tx, ty) <= self.radius
            if inside.sum() >= 3:
                xy = np.column_stack([tx[inside], ty[inside]])
                tile = _Tile(plane, members[inside], PatternIndex(xy, n_ref=self.n_ref, min_side=0.1 * self.half_diag,
                                                                  area=math.pi * self.radius**2))
        self._cache[i] = tile
        if len(self._cache) > self.MAX_CACHED:
            self._cache.popitem(last=False)
        return tile


def build_sky_indexes(
    ra, dec, mag, shape: tuple[int, int], scale_range: tuple[float, float], *, band_factor: float = 1.5, n_ref: int = 60
) -> list[SkyIndex]:
    """Indexes covering ``scale_range`` [arcsec/px] in bands of ``band_factor`` for images of ``shape`` (ny, nx)."""
    lo, hi = float(scale_range[0]), float(scale_range[1])
    if not (0 < lo <= hi):
        raise ValueError(f"invalid pixel-scale range {scale_range}")
    half_diag_px = 0.5 * math.hypot(*shape)
    indexes = []
    s = lo
    while s < hi * (1 + 1e-9) or not indexes:
        top = min(s * band_factor, hi) if s < hi else s
        indexes.append(
            SkyIndex(ra, dec, mag, half_diag=half_diag_px * top, scale_range=(s * 0.99, top * 1.01), n_ref=n_ref)
        )
        if top >= hi:
            break
        s = top
    return indexes


def blind_solve(
    xy: np.ndarray,
    shape: tuple[int, int],
    indexes: list[SkyIndex],
    *,
    pointing: tuple[float, float, float] | None = None,
    match_radius: float = 1.0,
    n_src: int = 25,
    min_matches: int = 6,
    accept=None,
    max_tiles: int | None = None,
) -> tuple[BlindResult | None, str]:
    """Solve an image from its source positions alone.

    Parameters
    ----------
    xy : ndarray (n, 2)
        Source positions, 0-based pixels, brightest first.
    shape : (ny, nx)
    indexes : list of SkyIndex
        Indexes built for the image's angular size (:func:`build_sky_indexes`).
    pointing : (ra, dec, radius) [deg], optional
        Rough pointing: only tiles whose centre lies within ``radius`` are tried,
        nearest first.
    match_radius : float
        Verification radius [arcsec] (must cover the unmodelled distortion).
    n_src : int
        Brightest sources used for triangles.
    min_matches : int
        Smallest number of verified matches.
    accept : callable, optional
        ``accept(result) -> bool``: a further check of a candidate (e.g. that a
        refined fit holds); when it refuses, the search goes on with the next tile.
    max_tiles : int, optional
        Stop after trying this many tiles (over all indexes); the reason then says so.

    Returns
    -------
    result : BlindResult or None
    reason : str
        Why it failed (empty on success).
    """
    ny, nx = shape
    xy = np.asarray(xy, float).reshape(-1, 2)
    if len(xy) < max(4, min_matches):
        return None, f"only {len(xy)} star-like sources (need {max(4, min_matches)})"
    centre_px = np.array([(nx - 1) / 2.0, (ny - 1) / 2.0])
    src = xy - centre_px
    tried = rejected = 0
    for index in indexes:
        order = range(len(index))
        if pointing is not None and len(index):
            ra0, dec0, rad = pointing
            px, py = TangentPlane(ra0, dec0).to_plane(index.centres_ra, index.centres_dec)
            dists = np.hypot(px, py)
            order = [int(i) for i in np.argsort(dists) if dists[i] <= rad * 3600.0 + index.half_diag]
        for i in order:
            if max_tiles is not None and tried >= max_tiles:
                break
            tile = index.tile(i)
            if tile is None:
                continue
            tried += 1
            result = match_patterns(
                src, tile.index, scale_range=index.scale_range, max_rotation=None, parities=(1, -1),
                match_radius=match_radius, n_src=n_src, tolerance=0.006, min_matches=min_matches,
                min_side=0.05 * math.hypot(nx, ny),
            )
            if result is None:
                continue
            t = result.transform
            # pixel -> tile plane [arcsec]: w = s R P z + t ; build the linear TAN WCS about the image centre
            ra_c, dec_c = tile.plane.to_sky(np.array([t.tx]), np.array([t.ty]))
            rot = math.radians(t.rotation)
            m = t.scale / 3600.0 * np.array([[math.cos(rot), -math.sin(rot)], [math.sin(rot), math.cos(rot)]])
            m = m @ np.diag([1.0, float(t.parity)])
            wcs = WCS(naxis=2)
            wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
            wcs.wcs.crval = [float(ra_c[0]), float(dec_c[0])]
            wcs.wcs.crpix = [centre_px[0] + 1.0, centre_px[1] + 1.0]
            wcs.wcs.cd = m
            wcs.wcs.radesys = "ICRS"
            wcs.wcs.set()
            pairs = result.pairs.copy()
            pairs[:, 1] = index.order[tile.members[pairs[:, 1]]]
            log.debug(
                "blind solve: %d matches (%.2f by chance) in tile %d, scale %.4f\"/px, rotation %.2f deg, parity %+d",
                result.n_matched, result.n_expected, tried, t.scale, t.rotation, t.parity,
            )
            candidate = BlindResult(wcs=wcs, pairs=pairs, pixel_scale=t.scale, n_tiles_tried=tried)
            if accept is not None and not accept(candidate):
                rejected += 1
                continue
            return candidate, ""
    if tried == 0:
        return None, "no catalogue tile near the pointing" if pointing is not None else "catalogue has fewer than 3 stars"
    extra = f" ({rejected} candidate(s) failed refinement)" if rejected else ""
    total = sum(len(index) for index in indexes)
    if max_tiles is not None and tried >= max_tiles and total > tried:
        extra += f"; stopped at the limit of {max_tiles} of {total} tiles ([astrometry] blind_max_tiles)"
    return None, f"no significant pattern match in {tried} catalogue tile(s){extra}"
