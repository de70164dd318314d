"""The CNN vetting measured: held-apart accuracy by rate and magnitude, vetting of pipeline runs, throughput.

    python benchmarks/bench_ml.py heldout DATASET [--model builtin]
    python benchmarks/bench_ml.py scenes [--seeds 301 302 303] [--size 2048] [--stack-threshold 7.0]

``heldout``: scores a dataset made from frames the model never saw (``ssodetect ml dataset`` on another
simulated field) and prints accuracy and ROC AUC per rate bin (0.5-80"/h), recall per rate and
magnitude bin, accuracy per kind of negative, and the CPU inference throughput (sequences/s, encoding
included, on the threads torch uses here).

``scenes``: simulates Euclid-like CCDs (movers V 20-27 at 0.5-80"/h), runs the pipeline with the
shift-and-stack stage (threshold ``--stack-threshold``; with ``--loose`` also a loosened linking, so
that false objects are numerous enough to count) and ``[ml] enabled`` at threshold 0 (every object
scored, none removed),
matches objects to the truth, and prints for thresholds 0.1-0.9 the false objects removed and the
true ones lost (completeness loss), and the stage's time.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.table import Table, vstack

from ssodetect.config import Config
from ssodetect.evaluate import evaluate_run
from ssodetect.ml.dataset import load_dataset
from ssodetect.ml.model import encode, load_model, score
from ssodetect.ml.train import evaluate
from ssodetect.pipeline import run_pipeline
from ssodetect.simulate import SimulationConfig, simulate


def heldout(args) -> None:
    import torch

    model, record = load_model(args.model)
    images, masks, meta, doc = load_dataset(args.dataset)
    t0 = time.perf_counter()
    x = encode(images, masks, meta["trail"], meta["sigma"], meta["stretch"], mode=doc["config"]["mode"])
    scores = score(model, x, batch=256)
    dt = time.perf_counter() - t0
    ev = evaluate(meta, scores, record["threshold"], mag_bins=np.arange(19.0, 28.01, 1.0))
    m = ev["overall"]
    train = record["training"]
    print(f"model: {args.model}, trained on {train.get('n_train')} sequences in {train.get('train_seconds')} s "
          f"({train.get('epochs')} epochs)")
    print(f"held apart: {len(meta)} sequences from {', '.join(p['frames'][0] for p in doc['parts'])}")
    print(f"overall: accuracy {m['accuracy']:.4f}, ROC AUC {m['auc']:.5f}, precision {m['precision']:.4f}, "
          f"recall {m['recall']:.4f}")
    print("\nrate [\"/h]    movers negatives accuracy  ROC AUC  recall  false-positive rate")
    for r in ev["by_rate"]:
        print(f"{r['rate_lo']:5.1f}-{r['rate_hi']:<5.1f} {r['n_pos']:7d} {r['n_neg']:9d}  {r['accuracy']:.4f}  "
              f"{r['auc']:.5f}  {r['recall']:.4f}  {r['false_positive_rate']:.4f}")
    print("\nrecall of movers by rate (rows) and magnitude (columns)")
    t = ev["by_rate_mag"]
    mags = sorted(set(float(v) for v in t["mag_lo"]))
    print("rate \\ mag  " + " ".join(f"{m_:>10.0f}" for m_ in mags))
    for lo in sorted(set(float(v) for v in t["rate_lo"])):
        cells = []
        for m_ in mags:
            sel = (t["rate_lo"] == lo) & (t["mag_lo"] == m_)
            cells.append(f"{float(t['recall'][sel][0]):.3f} ({int(t['n'][sel][0]):3d})" if sel.any() else " " * 10)
        print(f"{lo:5.1f}+     " + " ".join(cells))
    print("\naccuracy by kind: " + ", ".join(f"{r['kind']} {r['accuracy']:.3f} ({r['n']})" for r in ev["by_kind"]))
    print(f"\ninference: {len(meta) / dt:.0f} sequences/s ({torch.get_num_threads()} threads, encoding included)")


def scenes(args) -> None:
    rows = []
    thresholds = np.round(np.arange(0.1, 0.91, 0.1), 2)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            sim = Path(args.keep or tmp) / f"sim{seed}"
            simulate(SimulationConfig(seed=seed, nx=args.size, ny=args.size, movers_per_ccd=args.movers,
                                      satellite=True), sim)
            config = Config()
            config.execution.progress = False
            config.stack.enabled = True
            config.stack.rate_max = 10.0
            config.stack.threshold = args.stack_threshold
            if args.loose:  # a search loosened the way vetting allows: more chance alignments reach the output
                config.link.match_sigma, config.link.max_chi2_dof = 6.0, 10.0
                config.link.min_rate_significance, config.link.max_occupied_fraction = 3.0, 0.6
            config.ml.enabled = True
            config.ml.threshold = 0.0  # score everything, remove nothing: thresholds are applied below
            t0 = time.perf_counter()
            result = run_pipeline([sim], None, config)
            elapsed = time.perf_counter() - t0
            truth = Table.read(sim / "truth.ecsv")
            ev = evaluate_run(result.observations, truth, rate_range=(0.5, 80.0))
            v = result.vetting.copy()
            v["true"] = np.isin(np.asarray(v["object"]).astype(str), list(ev.assigned))
            v["seed"] = seed
            rows.append(v)
            print(f"--- seed {seed}: {args.size}^2 px, {len(v)} objects ({int(v['true'].sum())} true, "
                  f"{int((~v['true']).sum())} false), pipeline {elapsed:.0f} s, ml stage {result.timings['ml']:.1f} s")
            for r in v[~v["true"]]:
                print(f"  false {r['object']} {r['kind']:7s} rate {r['rate']:6.2f} mag {r['mag']:5.2f} "
                      f"score {r['ml_score']:.3f}")
    v = vstack(rows)
    true, score_ = np.asarray(v["true"]), np.asarray(v["ml_score"])
    print(f"=== {len(v)} objects over {len(args.seeds)} CCDs: {true.sum()} true, {(~true).sum()} false")
    print("threshold  false removed  true lost (completeness loss)")
    for t in thresholds:
        removed = int(np.sum(~true & (score_ < t)))
        lost = int(np.sum(true & (score_ < t)))
        print(f"  {t:.1f}      {removed:3d}/{(~true).sum()} ({100 * removed / max((~true).sum(), 1):5.1f} %)   "
              f"{lost:3d}/{true.sum()} ({100 * lost / max(true.sum(), 1):.2f} %)")
    for kind in sorted(set(v["kind"])):
        sel = np.asarray(v["kind"]) == kind
        print(f"  {kind}: {int((true & sel).sum())} true (lost at 0.5: {int((true & sel & (score_ < 0.5)).sum())}), "
              f"{int((~true & sel).sum())} false (removed at 0.5: {int((~true & sel & (score_ < 0.5)).sum())})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("heldout")
    p.add_argument("dataset")
    p.add_argument("--model", default="builtin")
    p = sub.add_parser("scenes")
    p.add_argument("--seeds", type=int, nargs="+", default=[301, 302, 303])
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--movers", type=float, default=120.0, help="movers per 2048^2 px")
    p.add_argument("--stack-threshold", type=float, default=7.0)
    p.add_argument("--loose", action="store_true",
                   help="loosened linking (match_sigma 6, max_chi2_dof 10, min_rate_significance 3, "
                   "max_occupied_fraction 0.6)")
    p.add_argument("--keep", default="", help="keep the simulated scenes in this directory")
    args = parser.parse_args()
    heldout(args) if args.mode == "heldout" else scenes(args)


if __name__ == "__main__":
    main()
