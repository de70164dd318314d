"""Outputs people submit and read: observation/object tables and ADES PSV."""
from ssodetect.report.ades import ADES_COLUMNS, ades_psv, format_obs_time
from ssodetect.report.tables import OBJECT_COLUMNS, OBSERVATION_COLUMNS, tracklet_tables

__all__ = ["ADES_COLUMNS", "ades_psv", "format_obs_time", "OBJECT_COLUMNS", "OBSERVATION_COLUMNS", "tracklet_tables"]
