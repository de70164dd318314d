"""The 3D-CNN that says "moving object or not" for a cutout sequence, and its input encoding.

Input: ``(B, 3, T, H, W)``: channel 0 the sequence in S/N units compressed with ``asinh(x / 3)``
(bright stars stay in range, faint signal stays linear), channel 1 the mask, channel 2 the expected
image of a mover on the hypothesis (:func:`ssodetect.ml.sequences.trail_template`, the same in every
frame; a point PSF in ``sky`` mode).  Architecture in the spirit of the LSST slow-mover network:
Conv3D + batch normalisation + ReLU blocks (16, 32, 64, 64 filters; the first one spatial only),
3D max-pooling over space, a global max over time and space (any number of frames), dropout, a
dense layer and one logit (sigmoid probability, binary cross-entropy with L2 weight decay).

The model file is a ``torch.save`` dictionary of tensors and plain values (loaded with
``weights_only=True``, no code executed): ``state_dict``, ``arch`` (filters, grid size, frames,
mode), ``threshold`` and ``training`` (command, data, metrics).
"""
from __future__ import annotations

import json
import logging
import warnings
from importlib import resources
from pathlib import Path

import numpy as np

from ssodetect.errors import InputError
from ssodetect.ml.sequences import trail_template

__all__ = ["BUILTIN_MODEL", "MoverNet", "encode", "import_torch", "load_model", "save_model", "score"]

log = logging.getLogger(__name__)

BUILTIN_MODEL = "euclid4_track32.pt"


def import_torch():
    """The ``torch`` module, or an InputError saying how to install it."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise InputError("the ML stage needs PyTorch: pip install 'ssodetect[ml]' (torch==2.13.0)") from exc
    return torch


def MoverNet(filters=(16, 32, 64, 64), dropout: float = 0.3):
    """Build the network (a ``torch.nn.Module``) for ``(B, 3, T, H, W)`` inputs, one logit per sequence."""
    torch = import_torch()
    nn = torch.nn

    def block(c_in, c_out, kernel):
        return [nn.Conv3d(c_in, c_out, kernel, padding=tuple(k // 2 for k in kernel), bias=False),
                nn.BatchNorm3d(c_out), nn.ReLU(inplace=True)]

    layers = block(3, filters[0], (1, 3, 3))
    for c_in, c_out in zip(filters[:-1], filters[1:]):
        layers += [nn.MaxPool3d((1, 2, 2))] + block(c_in, c_out, (3, 3, 3))
    layers += [nn.AdaptiveMaxPool3d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(filters[-1], 32),
               nn.ReLU(inplace=True), nn.Linear(32, 1)]
    return nn.Sequential(*layers)


def encode(images: np.ndarray, masks: np.ndarray, trail, sigma, stretch, *, mode: str = "track") -> np.ndarray:
    """Network input ``(B, 3, T, H, W)`` float32 from sequences and their hypotheses.

    Parameters
    ----------
    images, masks : ndarray (B, T, H, W)
        Sequences in S/N units and their masks (:class:`ssodetect.ml.sequences.Sequences`).
    trail, sigma, stretch : array (B,)
        Hypothesised trail length and PSF sigma [native px], along-track compression.
    """
    b, t, h, w = images.shape
    out = np.empty((b, 3, t, h, w), np.float32)
    out[:, 0] = np.arcsinh(np.asarray(images, np.float32) / 3.0)
    out[:, 1] = masks
    length = np.zeros(b) if mode == "sky" else np.asarray(trail, float)
    out[:, 2] = trail_template(length, sigma, np.ones(b) if mode == "sky" else stretch, w)[:, None]
    return out


def save_model(path: str | Path, model, arch: dict, *, threshold: float = 0.5, training: dict | None = None) -> Path:
    """Write ``model`` with its architecture and training record (atomically)."""
    import io

    from ssodetect.io.outputs import atomic_write_bytes

    torch = import_torch()
    # plain JSON values only, so that the file loads with weights_only=True
    training = json.loads(json.dumps(training or {}, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))
    buffer = io.BytesIO()
    torch.save({"state_dict": model.state_dict(), "arch": json.loads(json.dumps(arch)), "threshold": float(threshold),
                "training": training}, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_model(path: str | Path = "builtin"):
    """Load a model file (``"builtin"``: the one shipped with the package).

    Returns
    -------
    model : torch.nn.Module
        In evaluation mode, on the CPU.
    record : dict
        ``arch``, ``threshold`` and ``training`` of the file.
    """
    torch = import_torch()
    if str(path) == "builtin":
        ref = resources.files("ssodetect.ml").joinpath("models", BUILTIN_MODEL)
        with resources.as_file(ref) as p:
            return load_model(p)
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: a directory, not a model file (give the model.pt that 'ssodetect ml train' wrote)")
    if path.exists() and not path.is_file():  # (/dev/zero was said "not found")
        raise InputError(f"{path}: not a regular file (a device, FIFO or socket is not a model file)")
    if not path.is_file():
        raise InputError(f"{path}: model file not found")
    try:
        with warnings.catch_warnings():
            # (torch warns about a pickle protocol it did not write: the error below says what is wrong, in one line)
            warnings.simplefilter("ignore")
            record = torch.load(path, map_location="cpu", weights_only=True)
        arch = record["arch"]
        model = MoverNet(tuple(arch["filters"]), float(arch.get("dropout", 0.3)))
        model.load_state_dict(record["state_dict"])
        threshold = float(record["threshold"])
        if not (0.0 <= threshold <= 1.0) or int(arch["size"]) <= 0 or not isinstance(arch["mode"], str):
            raise ValueError("threshold, size or mode out of range")
    except Exception:  # noqa: BLE001 - any unpickling or shape problem is a bad model file
        # (torch's own words are advice to programmers about torch.load's arguments)
        raise InputError(f"{path}: not an ssodetect model (a file saved by 'ssodetect ml train' is expected)") from None
    # a weight that is no finite number scores every sequence NaN, which passes no threshold test and fails none
    # (campaign 31: every object "kept" by vetting, exit 0)
    bad = [name for name, value in model.state_dict().items()
           if value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if bad:
        raise InputError(f"{path}: model weights that are no finite numbers ({', '.join(bad[:3])}"
                         + (f" and {len(bad) - 3} more" if len(bad) > 3 else "") + "): not a usable model")
    model.eval()
    return model, {k: v for k, v in record.items() if k != "state_dict"} | {"threshold": threshold}


def score(model, inputs: np.ndarray, *, batch: int = 256, progress: bool = False) -> np.ndarray:
    """Mover probability (sigmoid of the logit) of every encoded sequence, shape (B,)."""
    from tqdm.auto import tqdm

    torch = import_torch()
    out = np.empty(len(inputs), np.float32)
    model.eval()
    with torch.inference_mode():
        for s in tqdm(range(0, len(inputs), batch), desc="scoring", disable=not progress or len(inputs) <= batch):
            x = torch.from_numpy(np.ascontiguousarray(inputs[s:s + batch]))
            out[s:s + batch] = torch.sigmoid(model(x)[:, 0]).numpy()
    return out

