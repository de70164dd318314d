"""Training and evaluation of the mover classifier.

:func:`train` fits :func:`ssodetect.ml.model.MoverNet` on one or more datasets
(:mod:`ssodetect.ml.dataset`): a seeded validation split held apart, Adam with L2 weight decay, a
cosine learning-rate schedule, augmentations that keep the physics (mirror across the track;
time reversal with a flip along it; in ``sky`` mode also the other flips), a checkpoint after every
epoch (a run resumes from it), and the best epoch by validation loss kept as the model.
:func:`evaluate` gives the metrics by rate, magnitude and kind of negative.
"""
from __future__ import annotations

import io
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
from astropy.table import Table

from ssodetect.errors import ConfigError, InputError
from ssodetect.io.outputs import (OutputLock, atomic_write_text, check_apart, check_directory_kind, check_not_inside,
                                 foreign_files, record_files)
from ssodetect.ml.dataset import load_dataset
from ssodetect.ml.model import MoverNet, encode, import_torch, save_model, score

__all__ = ["RATE_BINS", "roc_auc", "evaluate", "train"]

log = logging.getLogger(__name__)

RATE_BINS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 40.0, 80.0)  # arcsec/h


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve (Mann-Whitney statistic, ties counted half); NaN without both classes."""
    from scipy.stats import rankdata

    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _rates(labels, scores, threshold):
    labels = np.asarray(labels).astype(bool)
    pred = np.asarray(scores) >= threshold
    tp, fp = int(np.sum(pred & labels)), int(np.sum(pred & ~labels))
    return {
        "n_pos": int(labels.sum()), "n_neg": int((~labels).sum()),
        "accuracy": float(np.mean(pred == labels)) if labels.size else math.nan,
        "auc": roc_auc(labels, scores),
        "recall": tp / labels.sum() if labels.sum() else math.nan,
        "precision": tp / (tp + fp) if tp + fp else math.nan,
        "false_positive_rate": fp / (~labels).sum() if (~labels).sum() else math.nan,
    }


def evaluate(meta: Table, scores: np.ndarray, threshold: float = 0.5, *, mag_bins=None) -> dict:
    """Metrics of ``scores`` against ``meta["label"]``: overall, by rate bin, by magnitude, by kind.

    Returns
    -------
    dict
        ``overall`` (dict), ``by_rate``, ``by_rate_mag``, ``by_kind`` (Tables).
    """
    labels = np.asarray(meta["label"]).astype(bool)
    rate = np.asarray(meta["rate"], float)
    overall = _rates(labels, scores, threshold)
    rows = []
    edges = list(RATE_BINS)
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (rate >= lo) & (rate < hi if hi < edges[-1] else rate <= hi)
        rows.append({"rate_lo": lo, "rate_hi": hi, **_rates(labels[sel], scores[sel], threshold)})
    by_rate = Table(rows=rows)
    mag = np.asarray(meta["mag"], float)
    if mag_bins is None:
        finite = mag[labels & np.isfinite(mag)]
        lo, hi = (math.floor(finite.min()), math.ceil(finite.max())) if finite.size else (20, 27)
        mag_bins = np.arange(lo, hi + 1, 1.0)
    rows = []
    for r_lo, r_hi in zip(edges[:-1], edges[1:]):
        for m_lo, m_hi in zip(mag_bins[:-1], mag_bins[1:]):
            sel = labels & (rate >= r_lo) & (rate <= r_hi) & (mag >= m_lo) & (mag < m_hi)
            if sel.any():
                rows.append({"rate_lo": r_lo, "rate_hi": r_hi, "mag_lo": float(m_lo), "mag_hi": float(m_hi),
                             "n": int(sel.sum()), "recall": float(np.mean(scores[sel] >= threshold))})
    by_rate_mag = Table(rows=rows) if rows else Table(names=["rate_lo", "rate_hi", "mag_lo", "mag_hi", "n", "recall"])
    kinds = np.asarray(meta["kind"]).astype(str)
    rows = []
    for kind in sorted(set(kinds)):
        sel = kinds == kind
        correct = (scores[sel] >= threshold) == labels[sel]
        rows.append({"kind": kind, "n": int(sel.sum()), "accuracy": float(np.mean(correct))})
    return {"overall": overall, "by_rate": by_rate, "by_rate_mag": by_rate_mag, "by_kind": Table(rows=rows)}


def _augment(x, rng, mode: str):
    """Symmetries of the problem, applied per batch (in place on a numpy array (B, C, T, H, W))."""
    if rng.random() < 0.5:
        x = x[..., ::-1, :]  # mirror across the track
    if rng.random() < 0.5:
        x = x[:, :, ::-1, :, ::-1]  # time reversed, motion flipped back along +x
    if mode == "sky" and rng.random() < 0.5:
        x = x.swapaxes(-1, -2)
    return np.ascontiguousarray(x)


def _load_all(paths: list) -> tuple[np.ndarray, Table, dict]:
    inputs, metas, docs = [], [], []
    for p in paths:
        images, masks, meta, doc = load_dataset(p)
        mode = doc["config"]["mode"]
        inputs.append(encode(images, masks, meta["trail"], meta["sigma"], meta["stretch"], mode=mode))
        metas.append(meta)
        docs.append(doc)
    shapes = {tuple(x.shape[1:]) for x in inputs}
    modes = {d["config"]["mode"] for d in docs}
    if len(shapes) > 1 or len(modes) > 1:
        raise InputError(f"datasets {', '.join(map(str, paths))} differ in sequence shape or mode: {shapes} {modes}")
    from astropy.table import vstack

    return np.concatenate(inputs), vstack(metas, metadata_conflicts="silent"), docs[0]


#: Upper limits of the training schedule (beyond: a typing slip, not a schedule).
MAX_EPOCHS = 10_000
MAX_BATCH = 65_536
MAX_LR = 10.0


def train(datasets: list, out: str | Path, *, epochs: int = 10, batch: int = 128, lr: float = 2e-3,
          weight_decay: float = 1e-4, val_fraction: float = 0.15, seed: int = 0, progress: bool = True,
          command: str = "") -> dict:
    """Train a mover classifier; writes ``model.pt`` (best epoch), ``checkpoint.pt`` and ``metrics.json`` in ``out``.

    Parameters
    ----------
    datasets : list of path
        Dataset directories (same sequence shape and mode).
    out : path
        Output directory; a ``checkpoint.pt`` already there is resumed from.
    epochs, batch, lr, weight_decay : training schedule (Adam, cosine decay of ``lr``).
    val_fraction : float
        Fraction of sequences held apart for validation (seeded split).
    seed : int
        Seeds the split, the initial weights, the batch order and the augmentations.

    Returns
    -------
    dict
        Validation metrics of the kept model (``overall``) and the training record.
    """
    from tqdm.auto import tqdm

    # (bounded above too: lr = 1e300 overflowed inside torch, an internal error; 1e11 epochs ran until stopped)
    for name, value, ok in (("epochs", epochs, 1 <= epochs <= MAX_EPOCHS), ("batch", batch, 1 <= batch <= MAX_BATCH),
                            ("lr", lr, math.isfinite(lr) and 0 < lr <= MAX_LR),
                            ("weight_decay", weight_decay, math.isfinite(weight_decay) and 0 <= weight_decay <= 1),
                            ("val_fraction", val_fraction, 0.0 < val_fraction < 1.0),
                            ("seed", seed, 0 <= seed < 2**63)):
        if not ok:  # (NaN fails every test)
            raise ConfigError(f"ml train: {name} = {value} is out of range (1 <= epochs <= {MAX_EPOCHS}, "
                              f"1 <= batch <= {MAX_BATCH}, 0 < lr <= {MAX_LR:g}, 0 <= weight_decay <= 1, "
                              "0 < val_fraction < 1, 0 <= seed < 2^63)")
    torch = import_torch()
    out = Path(out)
    _check_out(out, datasets)
    inputs, meta, doc = _load_all([Path(p) for p in datasets])
    labels = np.asarray(meta["label"], np.float32)
    n_pos, n_neg = int(np.sum(labels > 0.5)), int(np.sum(labels <= 0.5))
    if min(n_pos, n_neg) < MIN_PER_CLASS:
        # (a dataset of negatives alone trained a model that says "no mover" to everything: accuracy 1, AUC nan)
        raise InputError(f"{', '.join(str(d) for d in datasets)}: {n_pos} mover and {n_neg} negative sequence(s): a "
                         f"classifier needs at least {MIN_PER_CLASS} of each (ssodetect ml dataset "
                         "--positive-fraction)")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    order = rng.permutation(len(labels))
    # the validation share is held back from each kind alike (a random 0.001 had validated, and chosen the threshold,
    # on 1 sequence; 0.15 of 10 on 2 negatives): at least one of each, and at least one of each left to train on
    kinds = [order[labels[order] > 0.5], order[labels[order] <= 0.5]]
    held = [max(1, int(round(val_fraction * k.size))) for k in kinds]
    if any(h >= k.size for h, k in zip(held, kinds)):
        raise ConfigError(f"ml train: val_fraction {val_fraction} leaves no training sequence of a kind ({n_pos} "
                          f"movers, {n_neg} negatives)")
    order = np.concatenate([kinds[0][:held[0]], kinds[1][:held[1]], kinds[0][held[0]:], kinds[1][held[1]:]])
    n_val = held[0] + held[1]
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        # one command at a time writes the directory (two trainings had written one checkpoint turn about)
        lock = OutputLock(out, inside=True)
    except InputError:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    try:
        _check_out(out, datasets)  # again, now that no other command can write it
        return _train(inputs, meta, doc, labels, order, n_val, out, epochs=epochs, batch=batch, lr=lr,
                      weight_decay=weight_decay, seed=seed, progress=progress, command=command, datasets=datasets,
                      torch=torch, tqdm=tqdm)
    except (ConfigError, InputError):
        if created:  # (a training refused on its way leaves no folder it made: only ours can be in it)
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        lock.release()


def _check_out(out: Path, datasets) -> None:
    """Refuse a training directory that is, holds or lies inside one of its datasets (its files are inputs, never
    replaced), or that holds files ssodetect did not write (a user's metrics.json had been overwritten)."""
    check_apart(out, datasets, what="dataset", owner="training")
    check_not_inside(out, datasets, what="dataset")
    if Path(os.path.realpath(out), "dataset.json").exists():  # (a model written among another dataset's shards)
        raise InputError(f"{out}: a dataset (dataset.json), not a training directory; train into another --out")
    check_directory_kind(out, "model")  # (a model written into a run's directory: the run's next rerun removed it)
    if len({os.path.realpath(d) for d in datasets}) < len(datasets):
        raise InputError(f"ml train: a dataset given twice ({', '.join(str(d) for d in datasets)}): its sequences would "
                         "be in both the training and the validation split")
    strangers = [name for name in foreign_files(out, limit=64) if name not in RESUMABLE]
    if strangers and set(strangers) <= set(PRODUCTS) and (out / "checkpoint.pt").is_file():
        # an earlier version's training (no record), or one whose record could not be signed (no usable key): the
        # checkpoint decides (loaded with weights only, and checked against the data it was trained on)
        log.info("%s: a training directory without a record of ours (an earlier version, or no usable cache key): its "
                 "checkpoint is resumed and %s replaced", out, ", ".join(sorted(strangers)))
        return
    if strangers:
        raise InputError(f"{out}: holds files ssodetect did not write or that changed since it wrote them "
                         f"({', '.join(strangers[:3])}); train into another --out or move them")


#: Fewest sequences of each class (movers, negatives) a training takes.
MIN_PER_CLASS = 2
#: Fewest validation sequences of each kind below which the threshold and metrics are said to be noisy.
MIN_VALIDATION_PER_KIND = 5


#: What a training writes in its directory; the checkpoint files may be resumed without a record (see _check_out).
RESUMABLE = ("checkpoint.pt", "checkpoint.tmp")
PRODUCTS = ("model.pt", "metrics.json", "validation_by_rate.ecsv", "validation_by_rate_mag.ecsv",
            "validation_by_kind.ecsv", ".ssodetect-products.json")


def _data_signature(datasets, arch: dict, n: int) -> dict:
    """What a checkpoint was trained on, the datasets in the order given (it sets the validation split); plain values:
    a checkpoint is loaded with ``weights_only``."""
    return {"datasets": [os.path.realpath(p) for p in datasets], "mode": str(arch["mode"]),
            "size": int(arch["size"]), "frames": int(arch["frames"]), "n_sequences": int(n)}


#: A mean training loss per sequence above this (binary cross-entropy: ln 2 = 0.69 for a guess) is a diverged
#: training (learning rate 3: losses of 2e3-2e12, the validation stuck at AUC 0.5).
DIVERGED_LOSS = 10.0


def _train(inputs, meta, doc, labels, order, n_val, out: Path, *, epochs, batch, lr, weight_decay, seed, progress,
           command, datasets, torch, tqdm) -> dict:
    """The training loop of :func:`train` (its arguments checked, ``out`` made)."""
    val, fit = order[:n_val], order[n_val:]
    mode = doc["config"]["mode"]
    arch = {"filters": [16, 32, 64, 64], "dropout": 0.3, "size": int(inputs.shape[-1]), "frames": int(inputs.shape[2]),
            "mode": mode}
    model = MoverNet(tuple(arch["filters"]), arch["dropout"])
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    per_epoch = int(math.ceil(len(fit) / batch))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    history, start, best = [], 0, (math.inf, None)
    ckpt = out / "checkpoint.pt"
    if ckpt.is_file():
        # tensors and plain values only: a checkpoint someone else put in MODEL_DIR cannot run code when unpickled
        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises UnpicklingError, RuntimeError or EOFError for a bad or hostile file
            raise InputError(f"{ckpt}: not a training checkpoint of ssodetect ({str(exc).splitlines()[0][:160]}); "
                             "remove it to train from the start") from None
        signature = _data_signature(datasets, arch, len(labels))
        trained_on = state.get("data")
        if trained_on is None:
            log.warning("%s: a checkpoint that does not say which data it was trained on (an older version): resumed "
                        "as if on %s", ckpt, ", ".join(signature["datasets"]))
        elif trained_on != signature:
            said = {k: v for k, v in trained_on.items() if signature.get(k) != v}
            raise ConfigError(f"{ckpt}: this training was started on other data ({', '.join(f'{k} {v}' for k, v in said.items())}"
                              f"), not {', '.join(f'{k} {signature[k]}' for k in said)}: train into another --out, or "
                              "remove the checkpoint to start again")
        if int(state["epoch"]) > epochs:  # (its record said 5 epochs over a history of 39)
            raise ConfigError(f"{ckpt}: {int(state['epoch'])} epochs are done already, more than --epochs {epochs}: "
                              f"give at least {int(state['epoch'])}, or train into another --out")
        stored = float(state["optimizer"]["param_groups"][0].get("max_lr", lr))
        if not math.isclose(stored, lr, rel_tol=1e-9):  # (the schedule resumes with its own rate: --lr is not used)
            raise ConfigError(f"{ckpt}: this training was started with --lr {stored:g}, not {lr:g}: resume with the "
                              "same learning rate, or train into another --out")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        history, start = state["history"], int(state["epoch"])
        best = (state["best_loss"], state["best_state"])
        log.info("resuming from %s after epoch %d", ckpt, start)
    # one-cycle schedule over this run's epochs, positioned after the epochs already done
    total_steps = max(epochs * per_epoch, start * per_epoch + 1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total_steps, pct_start=0.15,
                                                last_epoch=start * per_epoch - 1 if start else -1)
    t_start = time.perf_counter()
    held = (int(np.sum(labels[val] > 0.5)), int(np.sum(labels[val] <= 0.5)))
    if min(held) < MIN_VALIDATION_PER_KIND:  # (said once the training starts: not before a refusal)
        log.warning("ml train: validation on %d movers and %d negatives (of %d sequences): its threshold and metrics "
                    "are noisy (a larger --val-fraction or dataset)", held[0], held[1], len(labels))
    for epoch in range(start, epochs):
        model.train()
        rng = np.random.default_rng([seed, epoch])  # per-epoch streams: a resumed run repeats an uninterrupted one
        torch.manual_seed(seed * 1000 + epoch)
        perm = rng.permutation(fit)
        total = 0.0
        bar = tqdm(range(0, len(perm), batch), desc=f"epoch {epoch + 1}/{epochs}", disable=not progress)
        for s in bar:
            idx = perm[s:s + batch]
            x = torch.from_numpy(_augment(inputs[idx], rng, mode))
            y = torch.from_numpy(labels[idx])
            opt.zero_grad()
            loss = loss_fn(model(x)[:, 0], y)
            if not math.isfinite(loss.item()):  # (the weights are NaN from here on: nothing worth keeping follows)
                raise ConfigError(f"ml train: the training diverged in epoch {epoch + 1} (loss {loss.item()}): a "
                                  f"learning rate too high (a smaller --lr than {lr:g} may train) or NaN inputs")
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if total / len(perm) > DIVERGED_LOSS:
            raise ConfigError(f"ml train: the training diverged in epoch {epoch + 1} (mean loss {total / len(perm):.3g},"
                              f" a guess scores 0.69): a learning rate too high (a smaller --lr than {lr:g} may train)")
        val_scores = score(model, inputs[val])
        p = np.clip(val_scores, 1e-6, 1 - 1e-6)
        val_loss = float(-np.mean(labels[val] * np.log(p) + (1 - labels[val]) * np.log(1 - p)))
        metrics = evaluate(meta[val], val_scores)["overall"]
        history.append({"epoch": epoch + 1, "train_loss": total / len(perm), "val_loss": val_loss,
                        "val_accuracy": metrics["accuracy"], "val_auc": metrics["auc"]})
        log.info("epoch %d: train loss %.4f, validation loss %.4f, accuracy %.4f, AUC %.5f", epoch + 1,
                 total / len(perm), val_loss, metrics["accuracy"], metrics["auc"])
        if val_loss < best[0]:
            best = (val_loss, {k: v.clone() for k, v in model.state_dict().items()})
        buffer = {"model": model.state_dict(), "optimizer": opt.state_dict(), "history": history, "epoch": epoch + 1,
                  "best_loss": best[0], "best_state": best[1],
                  "data": _data_signature(datasets, arch, len(labels))}
        tmp = ckpt.with_suffix(".tmp")
        torch.save(buffer, tmp)
        tmp.replace(ckpt)
        record_files(out, [ckpt.name])  # (a checkpoint left unrecorded by a kill is resumed all the same: _check_out)
    seconds = time.perf_counter() - t_start
    if best[1] is not None:
        model.load_state_dict(best[1])
    val_scores = score(model, inputs[val])
    result = evaluate(meta[val], val_scores)
    record = {"command": command, "datasets": [str(p) for p in datasets], "n_train": int(len(fit)),
              "n_validation": int(n_val), "epochs": epochs, "batch": batch, "lr": lr, "weight_decay": weight_decay,
              "seed": seed, "train_seconds": round(seconds, 1), "history": history,
              "validation": result["overall"], "dataset_config": doc["config"]}
    save_model(out / "model.pt", model, arch, training=record)
    atomic_write_text(out / "metrics.json", json.dumps(record, indent=2))
    for name in ("by_rate", "by_rate_mag", "by_kind"):
        text = io.StringIO()
        result[name].write(text, format="ascii.ecsv")
        atomic_write_text(out / f"validation_{name}.ecsv", text.getvalue())
    record_files(out, ["model.pt", "metrics.json", *(f"validation_{n}.ecsv" for n in ("by_rate", "by_rate_mag", "by_kind"))])
    return {"overall": result["overall"], "record": record}
