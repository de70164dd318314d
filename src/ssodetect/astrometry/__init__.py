"""Pixel-to-sky transformation and the local tangent plane used for linking."""
from ssodetect.astrometry.refcat import compare_with_reference, load_reference_catalogue, propagate
from ssodetect.astrometry.tangent import TangentPlane

__all__ = ["TangentPlane", "compare_with_reference", "load_reference_catalogue", "propagate"]
