"""Raw-frame calibration: overscan and trim sections, master bias, dark and flat."""
from ssodetect.calibrate.masters import (
    FRAME_TYPES,
    MasterFrames,
    build_masters,
    calibrate_ccd,
    frame_type,
    parse_section,
    raw_saturation,
    reduce_overscan,
)

__all__ = ["FRAME_TYPES", "MasterFrames", "build_masters", "calibrate_ccd", "frame_type", "parse_section",
           "raw_saturation", "reduce_overscan"]
