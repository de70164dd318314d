"""Euclid-VIS-like scene simulator (exposures, reference catalogue, truth)."""
from ssodetect.simulate.render import DoubleGaussianPSF, splat, splat_reference, trail_points
from ssodetect.simulate.scene import SimulationConfig, draw_scene, limiting_magnitude, simulate

__all__ = [
    "DoubleGaussianPSF",
    "splat",
    "splat_reference",
    "trail_points",
    "SimulationConfig",
    "draw_scene",
    "limiting_magnitude",
    "simulate",
]
