"""Gnomonic (tangent-plane) projection about a field centre.

Linking works in a local plane: ``xi`` grows to the East, ``eta`` to the North,
both in arcsec; straight-line motion on the sky over an hour or a night is
straight in this plane to far better than the astrometric errors.
"""
from __future__ import annotations

import numpy as np

__all__ = ["TangentPlane"]

_ARCSEC = 3600.0 * 180.0 / np.pi


class TangentPlane:
    """Gnomonic projection about ``(ra0, dec0)`` [deg].

    Parameters
    ----------
    ra0, dec0 : float or ndarray
        Tangent point [deg]; arrays of tangent points project element-wise (one plane per
        element, broadcast against the positions).
    """

    def __init__(self, ra0, dec0):
        self.ra0 = float(ra0) if np.ndim(ra0) == 0 else np.asarray(ra0, float)
        self.dec0 = float(dec0) if np.ndim(dec0) == 0 else np.asarray(dec0, float)
        self._a0 = np.radians(self.ra0)
        self._d0 = np.radians(self.dec0)

    def to_plane(self, ra, dec) -> tuple[np.ndarray, np.ndarray]:
        """Project sky positions [deg] to ``(xi, eta)`` [arcsec]."""
        a = np.radians(np.asarray(ra, float))
        d = np.radians(np.asarray(dec, float))
        da = a - self._a0
        cos_c = np.sin(self._d0) * np.sin(d) + np.cos(self._d0) * np.cos(d) * np.cos(da)
        xi = np.cos(d) * np.sin(da) / cos_c
        eta = (np.cos(self._d0) * np.sin(d) - np.sin(self._d0) * np.cos(d) * np.cos(da)) / cos_c
        return xi * _ARCSEC, eta * _ARCSEC

    def to_sky(self, xi, eta) -> tuple[np.ndarray, np.ndarray]:
        """Inverse projection of ``(xi, eta)`` [arcsec] to ``(ra, dec)`` [deg]."""
        x = np.asarray(xi, float) / _ARCSEC
        y = np.asarray(eta, float) / _ARCSEC
        rho = np.hypot(x, y)
        c = np.arctan(rho)
        sin_c, cos_c = np.sin(c), np.cos(c)
        with np.errstate(invalid="ignore", divide="ignore"):
            dec = np.arcsin(cos_c * np.sin(self._d0) + np.where(rho > 0, y * sin_c * np.cos(self._d0) / rho, 0.0))
        ra = self._a0 + np.arctan2(x * sin_c, rho * np.cos(self._d0) * cos_c - y * np.sin(self._d0) * sin_c)
        return np.degrees(ra) % 360.0, np.degrees(dec)
