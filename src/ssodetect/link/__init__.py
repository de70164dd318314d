"""Stationary-source removal and linking of moving detections into tracklets (slow movers) and chains of trails
(fast movers); :func:`link_movers` is the link step's whole logic."""
from ssodetect.link.movers import MoverLinks, link_movers, select_candidates
from ssodetect.link.stationary import occupied_elsewhere, static_on_detector, static_on_sky
from ssodetect.link.streaks import StreakLinks, link_streaks
from ssodetect.link.tracklets import SlowLinks, Tracklet, chance_probability, fit_linear_motion, link_tracklets

__all__ = ["MoverLinks", "link_movers", "select_candidates", "occupied_elsewhere", "static_on_detector",
           "static_on_sky", "StreakLinks", "link_streaks", "SlowLinks", "Tracklet", "chance_probability",
           "fit_linear_motion", "link_tracklets"]
