"""Reading exposures (Euclid VIS MEF or plain FITS), header quirks, atomic outputs."""
from ssodetect.io.frames import (
    CCDImage, CCDRef, Exposure, common_ccds, find_inputs, group_exposures, read_ccd, scan_file, scan_inputs,
    sequence_problems, time_order_differs, header_centres,
)
from ssodetect.io.headers import ObservationTime, celestial_wcs, observation_time, sanitize_wcs_header
from ssodetect.io.outputs import OutputStage, atomic_write_bytes, atomic_write_text, check_apart, check_free_space

__all__ = [
    "CCDImage",
    "CCDRef",
    "Exposure",
    "common_ccds",
    "find_inputs",
    "group_exposures",
    "read_ccd",
    "scan_file",
    "scan_inputs",
    "sequence_problems",
    "header_centres",
    "time_order_differs",
    "ObservationTime",
    "celestial_wcs",
    "observation_time",
    "sanitize_wcs_header",
    "OutputStage",
    "check_apart",
    "check_free_space",
    "atomic_write_bytes",
    "atomic_write_text",
]
