"""An example third-party step: a vetting rule that replaces the built-in CNN "vet" step.

How a plug-in is made (see README, "Plug-in steps"): a module defines an
``ssodetect.pipeline.steps.Step`` and its distribution declares it under the
entry-point group ``ssodetect.steps``; in ``pyproject.toml``::

    [project.entry-points."ssodetect.steps"]
    vet = "example_vetter:STEP"

The entry point's name is free; the step's ``name`` decides: a built-in name
replaces that step, another name adds a step after ``after``.  Here the
distribution's metadata is the hand-written ``example_vetter-0.1.dist-info``
beside this file (what ``pip install`` would write); the tests put this folder
on ``sys.path``.
"""
import numpy as np
from astropy.table import Table

from ssodetect.pipeline.steps import Step


def vet_by_detections(products, config, context):
    """Keep objects seen in at least ``MIN_OBS`` exposures; score = detections / exposures."""
    objects, observations = products["objects"], products["observations"]
    n_exposures = len(products["exposures"])
    score = np.asarray(objects["n_obs"], float) / n_exposures
    kept = np.asarray(objects["n_obs"]) >= MIN_OBS
    vetting = Table({"object": objects["object"], "rule_score": score, "kept": kept})
    names = set(np.asarray(objects["object"])[kept].tolist())
    keep_obs = np.array([str(n) in names for n in observations["object"]], bool)
    return {"objects": objects[kept], "observations": observations[keep_obs], "vetting": vetting}


MIN_OBS = 4

STEP = Step(
    name="vet",
    run=vet_by_detections,
    inputs=("exposures", "observations", "objects"),
    outputs=("observations", "objects", "vetting"),
    config=(),
    version="0.1",
    description="example plug-in: keep objects detected in at least 4 exposures",
)
