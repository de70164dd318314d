"""Fast movers: completeness, depth and false links on simulated scenes; trail centring vs the Cramer-Rao bound.

    python benchmarks/bench_streaks.py [--seeds 1 2 3] [--size 2048] [--trials 200]

1. Scenes: Euclid-like 4-exposure CCDs with satellites, cosmic rays, saturated stars with
   diffraction spikes, and
   60 movers per 2048^2 CCD of which 70 % are fast (10-190"/h: trails of 16-300 px in 566 s),
   V 20-26.  Reports completeness for V < 23 (fast movers on the detector in >= 2 exposures),
   the magnitude of 50 % completeness for 20-60"/h, and false fast movers per 2048^2 CCD.
2. Centring: trails rendered with the trailed-PSF model plus Gaussian noise, by SNR and length;
   the rms and robust (MAD) along/across-track errors of the model fit and of the modified-moment
   centre, against the Cramer-Rao bound of the model (numerical Fisher matrix).
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.table import Table

from ssodetect.config import Config
from ssodetect.evaluate import evaluate_run
from ssodetect.pipeline import run_pipeline
from ssodetect.simulate import SimulationConfig, simulate
from ssodetect.streaks import fit_trail, trailed_psf
from ssodetect.streaks.model import centre_bound, moment_centre

SIGMA = 0.75


def centring_table(trials: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    print("\ncentring precision [px] (along / across track), trailed-PSF fit and modified moments vs the bound;"
          " 'rob' = 1.4826 MAD")
    print(f"{'L':>5} {'SNR':>5} | {'bound':>13} | {'fit rms':>13} {'fit rob':>13} {'ratio':>11} | {'moments rms':>13}")
    theta = 0.3
    for length in (16.0, 50.0, 150.0, 300.0):
        for snr in (20.0, 50.0, 200.0):
            shape = (48, int(length * math.cos(theta)) + 48)
            shape = (int(length * math.sin(theta)) + 48, shape[1])
            yc, xc0 = shape[0] / 2, shape[1] / 2
            yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
            flux = snr / math.sqrt(np.sum(trailed_psf(xx, yy, xc0, yc, length, theta, 1.0, SIGMA) ** 2))
            bu, bw = centre_bound(shape, xc0, yc, length, theta, flux, SIGMA)
            fu, fw, mu, mw = [], [], [], []
            for _ in range(trials):
                xc, y0 = xc0 + rng.uniform(-0.5, 0.5), yc + rng.uniform(-0.5, 0.5)
                img = trailed_psf(xx, yy, xc, y0, length, theta, flux, SIGMA) + rng.normal(0, 1.0, shape)
                mask = np.zeros(shape, bool)
                c, s = math.cos(theta), math.sin(theta)
                h = 0.5 * length
                box = (int(xc - h * c - 5), int(xc + h * c + 6), int(y0 - h * s - 5), int(y0 + h * s + 6))
                mx, my = moment_centre(img, mask, box, 1.0)
                fit = fit_trail(img, np.ones(shape), mask, mx, my, length * 1.05, theta + 0.02, SIGMA)
                for (px, py), (lu, lw) in (((fit.x, fit.y), (fu, fw)), ((mx, my), (mu, mw))):
                    lu.append((px - xc) * c + (py - y0) * s)
                    lw.append(-(px - xc) * s + (py - y0) * c)
            rms = lambda v: float(np.sqrt(np.nanmean(np.square(v))))  # noqa: E731
            rob = lambda v: float(1.4826 * np.nanmedian(np.abs(v)))  # noqa: E731
            print(f"{length:5.0f} {snr:5.0f} | {bu:6.3f} {bw:6.3f} | {rms(fu):6.3f} {rms(fw):6.3f} "
                  f"{rob(fu):6.3f} {rob(fw):6.3f} {rob(fu) / bu:5.2f} {rob(fw) / bw:5.2f} | {rms(mu):6.3f} {rms(mw):6.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--trials", type=int, default=200, help="trials per centring cell (0: skip the table)")
    args = parser.parse_args()
    config = Config()
    config.execution.progress = False
    pooled = []
    false_fast = 0
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            sim = Path(tmp) / f"sim{seed}"
            simulate(SimulationConfig(seed=seed, nx=args.size, ny=args.size, movers_per_ccd=60.0, fast_fraction=0.7,
                                      slow_rate_max=10.0, fast_rate_max=190.0, mover_mag_max=26.0, spikes=True), sim)
            t0 = time.perf_counter()
            result = run_pipeline([sim], None, config, refcat=sim / "refcat.ecsv")
            elapsed = time.perf_counter() - t0
            truth = Table.read(sim / "truth.ecsv")
            fast_obs = result.observations[result.observations["kind"] == "streak"]
            ev = evaluate_run(result.observations, truth, rate_range=(10.0, 190.0), bright_limit=23.0, min_exposures=2)
            ev_mid = evaluate_run(result.observations, truth, rate_range=(20.0, 60.0), bright_limit=23.0, min_exposures=2)
            fast_false = [n for n in ev.false_objects if n in set(fast_obs["object"])]
            false_fast += len(fast_false)
            pooled.append((ev, ev_mid))
            print(f"seed {seed}: {elapsed:.1f} s; fast movers V<23 (10-190\"/h, >= 2 exposures): "
                  f"{100 * ev.completeness_bright:.1f} % of {ev.n_findable_bright}; mag50 (20-60\"/h) {ev_mid.mag50:.2f}; "
                  f"false fast movers {len(fast_false)}; satellites flagged "
                  f"{int(np.sum(result.streaks['status'] == 'satellite'))}, spikes {int(np.sum(result.streaks['status'] == 'spike'))}, "
                  f"singles {int(np.sum(result.streaks['status'] == 'single'))}")
    n = sum(e.n_findable_bright for e, _ in pooled)
    found = sum(e.completeness_bright * e.n_findable_bright for e, _ in pooled)
    area = len(args.seeds) * (args.size / 2048.0) ** 2
    print(f"pooled: completeness V<23 {100 * found / max(n, 1):.1f} % of {n}; mag50 (20-60\"/h) "
          f"{[round(m.mag50, 2) for _, m in pooled]}; false fast movers {false_fast / area:.2f} per 2048^2 CCD")
    if args.trials > 0:
        centring_table(args.trials, args.seeds[0])


if __name__ == "__main__":
    main()
