"""Euclid-VIS-like scene simulator (exposures, reference catalogue, truth) and its randomised scene family."""
from ssodetect.simulate.family import REPORT_MEMBERS, TUNING_MEMBERS, family_member
from ssodetect.simulate.render import DoubleGaussianPSF, MoffatPSF, splat, splat_reference, trail_points
from ssodetect.simulate.scene import SimulationConfig, draw_scene, limiting_magnitude, simulate

__all__ = [
    "DoubleGaussianPSF",
    "MoffatPSF",
    "splat",
    "splat_reference",
    "trail_points",
    "SimulationConfig",
    "draw_scene",
    "limiting_magnitude",
    "simulate",
    "family_member",
    "TUNING_MEMBERS",
    "REPORT_MEMBERS",
]
