"""Long ground-based sequences without WCS: completeness, false objects and run time against the number of frames.

    python benchmarks/bench_sequences.py [--frames 30 60] [--seeds 1 2] [--size 1024]

Scenes: one 1"/px CCD, FWHM 2-3 px varying frame to frame, 60 s exposures every 120 s, the
pointing drifting by up to 5" between frames, no WCS in the headers (only RA/DEC and PIXSCALE),
150 movers per CCD at 5-50"/h (main-belt rates), V 17-22.5, a generic ground telescope's headers.
Run with the defaults: the ground_ccd profile is chosen from the headers, frames are registered to
each other and movers linked in pixel space.  Reports completeness for movers on the
detector in >= 50 % of the frames and brighter than the per-frame 5-sigma limit - 0.5 mag (and
at the limit), false objects per field, per-stage and total run time.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from astropy.table import Table

from ssodetect.config import Config
from ssodetect.evaluate import evaluate_run
from ssodetect.pipeline import run_pipeline
from ssodetect.simulate import SimulationConfig, simulate

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[30, 60])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args()
    config = Config()
    config.execution.progress = False
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.frames:
            for seed in args.seeds:
                sim = Path(tmp) / f"seq{n}_{seed}"
                simulate(SimulationConfig(
                    seed=seed, nccd=1, nx=args.size, ny=args.size, n_exposures=n, exptime=60.0, cadence=120.0,
                    pixel_scale=1.0, fwhm_min=2.0, fwhm_max=3.0, dither=5.0, zp_electrons=24.0, sky_mag=20.5,
                    star_density=20000.0, galaxy_density=5000.0, movers_per_ccd=150.0, mover_mag_min=17.0,
                    mover_mag_max=22.5, slow_rate_min=5.0, slow_rate_max=50.0, fast_fraction=0.0, layout="plain",
                    write_wcs=False, satellite=False, telescope="GROUND-1M", instrument="CCD",
                ), sim)
                truth = Table.read(sim / "truth.ecsv")
                limit = float(truth.meta["limit_5sigma"])
                t0 = time.perf_counter()
                result = run_pipeline([sim], None, config)
                wall = time.perf_counter() - t0
                need = max(3, (n + 1) // 2)
                scores = []
                for bright in (limit - 0.5, limit):
                    ev = evaluate_run(result.observations, truth, rate_range=(5.0, 50.0), bright_limit=bright,
                                      min_exposures=need, match_radius=1.0, pixels=True)
                    scores.append(ev)
                ev, ev_lim = scores
                stages = ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items() if k != "total")
                print(f"N={n:3d} seed {seed}, profile {result.profile['name']}: {wall:6.1f} s ({stages}); 5-sigma limit {limit:.2f}; "
                      f"completeness V<={limit - 0.5:.2f}: {100 * ev.completeness_bright:.1f} % of {ev.n_findable_bright}, "
                      f"V<={limit:.2f}: {100 * ev_lim.completeness_bright:.1f} % of {ev_lim.n_findable_bright}; "
                      f"false objects {ev.n_false}; median residual {ev.median_residual_bright:.2f} px", flush=True)


if __name__ == "__main__":
    main()
