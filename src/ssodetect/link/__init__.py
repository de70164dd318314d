"""Stationary-source removal and linking of moving detections into tracklets."""
from ssodetect.link.stationary import occupied_elsewhere, static_on_detector, static_on_sky
from ssodetect.link.tracklets import Tracklet, fit_linear_motion, link_tracklets

__all__ = ["occupied_elsewhere", "static_on_detector", "static_on_sky", "Tracklet", "fit_linear_motion", "link_tracklets"]
