"""Background, source extraction and per-detection classification."""
from pathlib import Path

from ssodetect.detect.background import estimate_background, heavy_tail_correction, matched_noise_scale
from ssodetect.detect.extract import DETECTION_COLUMNS, empty_detections, extract_sources, gaussian_kernel, measure_psf_sigma
from ssodetect.detect.shape import psf_photometry, psf_photometry_reference, shape_chi2, shape_chi2_reference


def kernels_cold() -> bool:
    """Whether numba has not yet cached the detection kernels here (the first run compiles them, ~40 s)."""
    return not any((Path(__file__).parent / "__pycache__").glob("*.nbi"))


__all__ = [
    "estimate_background",
    "heavy_tail_correction",
    "matched_noise_scale",
    "DETECTION_COLUMNS",
    "empty_detections",
    "extract_sources",
    "gaussian_kernel",
    "measure_psf_sigma",
    "psf_photometry",
    "psf_photometry_reference",
    "shape_chi2",
    "shape_chi2_reference",
    "kernels_cold",
]
