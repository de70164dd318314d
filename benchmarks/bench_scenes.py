"""Score the pipeline on several simulated Euclid-like scenes (run on demand).

    python benchmarks/bench_scenes.py [--seeds 1 2 3] [--nccd 1] [--size 2048]
                                      [--pointing-error 30] [--rotation-error 1] [--no-refcat]

Prints, per seed and pooled: completeness for V <= 23.5 at 0.5-10"/h, false objects per
2048^2 CCD, median astrometric residual for V < 22, and the 50 % completeness magnitude
against the scene's single-exposure 5-sigma limit.  By default the headers are perturbed
(pointing, rotation; never the distortion, which headers lack anyway) and the run re-fits the
WCS against the scene's reference catalogue; the fitted WCS is compared with the truth.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.table import Table

from ssodetect.config import Config
from ssodetect.evaluate import evaluate_run, evaluate_wcs, format_evaluation
from ssodetect.pipeline import run_pipeline
from ssodetect.simulate import SimulationConfig, simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--nccd", type=int, default=1)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--pointing-error", type=float, default=30.0, help="largest header pointing error [arcsec]")
    parser.add_argument("--rotation-error", type=float, default=1.0, help="largest header rotation error [deg]")
    parser.add_argument("--no-refcat", action="store_true", help="run on the header WCS (give zero header errors)")
    args = parser.parse_args()
    config = Config()
    config.execution.progress = False
    config.execution.workers = args.workers
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            sim = Path(tmp) / f"sim{seed}"
            simulate(SimulationConfig(seed=seed, nccd=args.nccd, nx=args.size, ny=args.size,
                                      header_pointing_error=args.pointing_error,
                                      header_rotation_error=args.rotation_error), sim)
            t0 = time.perf_counter()
            result = run_pipeline([sim], None, config, refcat=None if args.no_refcat else sim / "refcat.ecsv")
            elapsed = time.perf_counter() - t0
            truth = Table.read(sim / "truth.ecsv")
            ev = evaluate_run(result.observations, truth)
            rows.append((seed, ev, elapsed))
            print(f"--- seed {seed}: pipeline {elapsed:.1f} s")
            print(format_evaluation(ev))
            if result.astrometry is not None:
                acc = evaluate_wcs(result.astrometry, Table.read(sim / "truth_wcs.ecsv"))
                print(f"fitted WCS vs truth: {len(acc)}/{len(result.astrometry)} solved, rms over the CCD "
                      f"{', '.join(f'{v:.1f}' for v in acc['rms_mas'])} mas ({', '.join(map(str, acc['n_stars']))} stars)")
    comp = np.array([r[1].completeness_bright * r[1].n_findable_bright for r in rows]).sum() / max(
        1, sum(r[1].n_findable_bright for r in rows)
    )
    false = np.mean([r[1].false_per_ccd for r in rows])
    print("=== pooled over seeds", args.seeds)
    print(f"completeness V<=23.5, 0.5-10\"/h: {100 * comp:.1f} % of {sum(r[1].n_findable_bright for r in rows)}")
    print(f"false objects per 2048^2 CCD: {false:.2f}")
    print(f"median residual V<22 [mas]: {[round(1000 * r[1].median_residual_bright, 1) for r in rows]}")
    print(f"limit_5sigma - mag50: {[round(r[1].limit_5sigma - r[1].mag50, 2) for r in rows]}")


if __name__ == "__main__":
    main()
