"""Shift-and-stack: fainter movers than one exposure shows, from difference images summed along trajectories."""
from ssodetect.stack.candidates import CANDIDATE_COLUMNS, search
from ssodetect.stack.difference import align, difference_images
from ssodetect.stack.search import (
    Likelihood,
    psi_phi,
    stack_best,
    stack_best_reference,
    stack_best_torch,
    trail_kernel,
    trajectory_terms,
    velocity_grid,
)

__all__ = ["CANDIDATE_COLUMNS", "Likelihood", "align", "difference_images", "psi_phi", "search", "stack_best",
           "stack_best_reference", "stack_best_torch", "trail_kernel", "trajectory_terms", "velocity_grid"]
