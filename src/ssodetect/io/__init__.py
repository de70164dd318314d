"""Reading exposures (Euclid VIS MEF or plain FITS), header quirks, atomic outputs."""
from ssodetect.io.frames import (
    CCDImage, CCDRef, Exposure, common_ccds, find_inputs, group_exposures, read_ccd, scan_file, scan_inputs,
)
from ssodetect.io.headers import ObservationTime, celestial_wcs, observation_time, sanitize_wcs_header
from ssodetect.io.outputs import OutputStage, atomic_write_bytes, atomic_write_text

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
    "ObservationTime",
    "celestial_wcs",
    "observation_time",
    "sanitize_wcs_header",
    "OutputStage",
    "atomic_write_bytes",
    "atomic_write_text",
]
