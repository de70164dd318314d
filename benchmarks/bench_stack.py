"""Depth gained by the shift-and-stack stage, and its cost (run on demand).

    python benchmarks/bench_stack.py [--seeds 1 2] [--size 2048] [--exposures 4] [--rate-max 10]
    python benchmarks/bench_stack.py --throughput [--size 4096]

Scene mode: simulates Euclid-like CCDs crowded with faint slow movers (V 24-27.5, 0.5 to
``--rate-max`` "/h), runs the pipeline once with ``[stack] enabled = true`` and scores it twice:
with every object, and without the ``kind = stacked`` ones (the stage only appends objects after
linking, so the second score is exactly the run without it).  Prints the 50 % completeness
magnitude of both, the false objects per 2048^2 CCD the stage adds, its wall time and the peak
memory of the process.

Throughput mode: the stack kernel alone on random psi/phi images (trajectory-pixel evaluations per
second) and one full search of a ``--size`` CCD x 4 exposures over 0.5-10"/h (wall time, peak memory).
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.table import Table

from ssodetect.config import Config
from ssodetect.evaluate import evaluate_run
from ssodetect.pipeline import run_pipeline
from ssodetect.simulate import SimulationConfig, simulate
from ssodetect.stack import search, stack_best, trajectory_terms, velocity_grid

EXPTIME_H, CADENCE_H, SCALE = 566.0 / 3600.0, 1100.0 / 3600.0, 0.1


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0**2


def throughput(size: int, rate_min: float, rate_max: float) -> None:
    rng = np.random.default_rng(1)
    times = np.arange(4) * CADENCE_H
    sigma = 0.72
    velocities = velocity_grid(rate_min / SCALE, rate_max / SCALE, float(np.ptp(times)), 2.3548 * sigma,
                               exptime=EXPTIME_H)
    n = 1024
    psi = rng.normal(size=(4, n, n)).astype(np.float32)
    phi = np.ones_like(psi)
    dx, dy = trajectory_terms(velocities[:32], times)
    stack_best(psi[:, :64, :64], phi[:, :64, :64], dx, dy)  # compile
    dx, dy = trajectory_terms(velocities[:512], times)
    t0 = time.perf_counter()
    stack_best(psi, phi, dx, dy)
    dt = time.perf_counter() - t0
    print(f"kernel: {512 * n * n / dt:.3g} trajectory-pixel evaluations per second ({n}^2 px, 4 exposures, 512 "
          f"trajectories in {dt:.2f} s)")
    del psi, phi
    diff = rng.standard_normal(size=(4, size, size), dtype=np.float32)
    var = np.ones_like(diff)
    before = peak_rss_gb()
    t0 = time.perf_counter()
    cands = search(diff, var, times, sigma, EXPTIME_H, rate_min=rate_min / SCALE, rate_max=rate_max / SCALE)
    dt = time.perf_counter() - t0
    evals = len(velocities) * size * size
    print(f"search: {size}^2 px x 4 exposures, {rate_min}-{rate_max}\"/h, {len(velocities)} velocities: {dt:.1f} s "
          f"({evals / dt:.3g} trajectory-pixel evaluations per second overall, likelihood images and vetting "
          f"included), {len(cands)} candidates on pure noise; peak RSS {before:.2f} GB with the inputs "
          f"({diff.nbytes * 2 / 1024**3:.2f} GB), {peak_rss_gb():.2f} GB during the search")


def scenes(args) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            sim = Path(args.keep or tmp) / f"sim{seed}"
            simulate(SimulationConfig(seed=seed, nx=args.size, ny=args.size, n_exposures=args.exposures,
                                      movers_per_ccd=args.movers, mover_mag_min=24.0, mover_mag_max=27.5,
                                      slow_rate_min=args.rate_min, slow_rate_max=args.rate_max, fast_fraction=0.0,
                                      satellite=False), sim)
            config = Config()
            config.execution.progress = False
            config.stack.enabled = True
            config.stack.rate_min, config.stack.rate_max = args.rate_min, args.rate_max
            config.stack.threshold = args.threshold
            t0 = time.perf_counter()
            result = run_pipeline([sim], None, config)  # the simulated headers are exact
            elapsed = time.perf_counter() - t0
            truth = Table.read(sim / "truth.ecsv")
            obs = result.observations
            if args.keep:
                obs.write(sim / "observations.ecsv", overwrite=True)
            bins = np.arange(24.0, 27.51, 0.25)
            kw = dict(rate_range=(args.rate_min, args.rate_max), mag_bins=bins)
            with_stack = evaluate_run(obs, truth, **kw)
            without = evaluate_run(obs[obs["kind"] != "stacked"], truth, **kw)
            n_stacked = int(np.sum(result.objects["kind"] == "stacked")) if len(result.objects) else 0
            rows.append((without, with_stack))
            print(f"--- seed {seed}: {args.size}^2 px, {args.exposures} exposures, pipeline {elapsed:.1f} s "
                  f"(stack {result.timings.get('stack', float('nan')):.1f} s), limit {with_stack.limit_5sigma:.2f}")
            print(f"  without stack: mag50 {without.mag50:.2f}, {without.n_true} true, {without.n_false} false")
            print(f"  with stack:    mag50 {with_stack.mag50:.2f}, {with_stack.n_true} true, {with_stack.n_false} false "
                  f"({n_stacked} stacked objects)")
            c0, c1 = without.completeness, with_stack.completeness
            stacked_false = [name for name in with_stack.false_objects if name not in without.false_objects]
            print(f"  false stacked objects: {', '.join(stacked_false) or 'none'}")
            print("  completeness per bin: " + ", ".join(
                f"{lo:.2f}: {a}->{b}/{n}" for lo, a, b, n in zip(c0["mag_lo"], c0["n_found"], c1["n_found"],
                                                                    c1["n_findable"])))
    gain = [w.mag50 - wo.mag50 for wo, w in rows]
    extra = [(w.n_false - wo.n_false) / (args.size**2 / 2048.0**2) for wo, w in rows]
    print(f"=== mag50 gain {np.mean(gain):+.2f} mag (per seed {', '.join(f'{g:+.2f}' for g in gain)}); "
          f"additional false objects per 2048^2 CCD {np.mean(extra):.2f}; peak RSS {peak_rss_gb():.2f} GB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--exposures", type=int, default=4)
    parser.add_argument("--movers", type=float, default=300.0, help="movers per 2048^2 px")
    parser.add_argument("--rate-min", type=float, default=0.5)
    parser.add_argument("--rate-max", type=float, default=10.0)
    parser.add_argument("--threshold", type=float, default=Config().stack.threshold)
    parser.add_argument("--throughput", action="store_true")
    parser.add_argument("--keep", default="", help="keep the simulated scenes and observations in this directory")
    args = parser.parse_args()
    if args.throughput:
        throughput(args.size, args.rate_min, args.rate_max)
    else:
        scenes(args)


if __name__ == "__main__":
    main()
