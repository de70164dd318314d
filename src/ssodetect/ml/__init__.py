"""Machine-learning vetting: cutout-sequence datasets with injected movers, and a 3D-CNN that scores them.

* :mod:`~ssodetect.ml.sequences`: WCS-based resampling of every exposure onto a common grid that follows
  a hypothesised track (or stays on one sky position);
* :mod:`~ssodetect.ml.dataset`: synthetic movers painted into real or simulated frames, hard negatives,
  NPZ shards;
* :mod:`~ssodetect.ml.model` and :mod:`~ssodetect.ml.train`: the network (PyTorch, optional ``[ml]``
  extra), its training and metrics.
"""
from ssodetect.ml.dataset import NEGATIVE_KINDS, DatasetConfig, build_dataset, load_dataset, write_dataset
from ssodetect.ml.sequences import Frame, GridSpec, Sequences, cut_sequences, grid_wcs, track_grids, trail_template

__all__ = [
    "NEGATIVE_KINDS", "DatasetConfig", "Frame", "GridSpec", "Sequences", "build_dataset", "cut_sequences", "grid_wcs",
    "load_dataset", "track_grids", "trail_template", "write_dataset",
]
