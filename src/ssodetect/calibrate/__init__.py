"""Raw-frame calibration: overscan and trim sections, master bias, dark and flat, hot pixels from the lights."""
from ssodetect.calibrate.masters import (
    FRAME_TYPES,
    MasterFrames,
    add_hot_pixel_maps,
    build_calibration,
    build_masters,
    calibrate_ccd,
    frame_type,
    hot_pixel_map,
    parse_section,
    raw_saturation,
    reduce_overscan,
    sequence_hot_pixels,
)

__all__ = ["FRAME_TYPES", "MasterFrames", "add_hot_pixel_maps", "build_calibration", "build_masters", "calibrate_ccd", "frame_type",
           "hot_pixel_map", "parse_section", "raw_saturation", "reduce_overscan", "sequence_hot_pixels"]
