"""Background and noise maps (sep, SExtractor's algorithm)."""
from __future__ import annotations

import numpy as np
import sep

__all__ = ["estimate_background"]


def estimate_background(
    data: np.ndarray, *, mask: np.ndarray | None = None, box: int = 64, filter_size: int = 3
) -> tuple[np.ndarray, np.ndarray, float]:
    """Smooth background and its RMS.

    Parameters
    ----------
    data : ndarray (ny, nx)
        Image [ADU]. Not modified.
    mask : ndarray (ny, nx) bool, optional
        True where pixels are unusable.
    box : int
        Mesh size [px].
    filter_size : int
        Median filter on the mesh [meshes].

    Returns
    -------
    background, rms : ndarray (ny, nx) float32
        Background level and noise per pixel [ADU].
    global_rms : float
        Global noise level [ADU].
    """
    image = np.ascontiguousarray(data, dtype=np.float32)
    m = None
    if mask is not None:
        m = np.ascontiguousarray(mask, dtype=bool)
        if m.any():
            image = image.copy()
            image[m] = 0.0
    bkg = sep.Background(image, mask=m, bw=box, bh=box, fw=filter_size, fh=filter_size)
    return np.asarray(bkg.back(), np.float32), np.asarray(bkg.rms(), np.float32), float(bkg.globalrms)
