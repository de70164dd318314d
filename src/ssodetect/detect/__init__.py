"""Background, source extraction and per-detection classification."""
from ssodetect.detect.background import estimate_background, heavy_tail_correction
from ssodetect.detect.extract import DETECTION_COLUMNS, empty_detections, extract_sources, gaussian_kernel, measure_psf_sigma
from ssodetect.detect.shape import psf_photometry, psf_photometry_reference, shape_chi2, shape_chi2_reference

__all__ = [
    "estimate_background",
    "heavy_tail_correction",
    "DETECTION_COLUMNS",
    "empty_detections",
    "extract_sources",
    "gaussian_kernel",
    "measure_psf_sigma",
    "psf_photometry",
    "psf_photometry_reference",
    "shape_chi2",
    "shape_chi2_reference",
]
