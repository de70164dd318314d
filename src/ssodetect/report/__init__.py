"""Outputs people submit and read: observation/object tables, ADES (PSV and XML), MPC 80-column
records and the HTML report."""
from ssodetect.report.ades import (
    ADES_VERSION,
    OPTICAL_FIELDS,
    ades_block,
    ades_context,
    ades_rows,
    format_obs_time,
    format_psv,
    format_xml,
    observation_arrays,
    read_ades,
    validate_xml,
)
from ssodetect.report.mpc80 import MPCRecord, format_mpc80, format_record, parse_record, read_mpc80, records_table
from ssodetect.report.tables import OBJECT_COLUMNS, OBSERVATION_COLUMNS, tracklet_tables

__all__ = [
    "ADES_VERSION", "OPTICAL_FIELDS", "ades_block", "ades_context", "ades_rows", "format_obs_time", "format_psv",
    "format_xml", "observation_arrays", "read_ades", "validate_xml",
    "MPCRecord", "format_mpc80", "format_record", "parse_record", "read_mpc80", "records_table",
    "OBJECT_COLUMNS", "OBSERVATION_COLUMNS", "tracklet_tables",
]
