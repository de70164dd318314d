"""Collinear chains of faint detections: the numba kernel against its numpy reference (same runs, timed).

    python benchmarks/bench_chains.py [--sizes 2000 10000 30000] [--repeats 3] [--frames FITS ...] [--whole]

1. The first call in this process (numba compiles the kernels, or loads them from its cache).
2. Synthetic: uniform points on a 2048^2 CCD (2000 points: 5e-4 per px^2; 10000 and 30000: denser than
   real faint detections) with 20 planted lines of 8-30 points.
3. Real frames (by default one NEOSSat, one NEOWISE and one Luxembourg frame from ``../shared/data/real`` when
   present): the per-CCD step is run once with :func:`~ssodetect.streaks.detect.collinear_chains` wrapped to keep
   its input (the faint detections of :func:`~ssodetect.streaks.detect._add_chain_trails`), which is then timed.

Reference and kernel run alternately, ``--repeats`` times each (the reference once above 10000 points); the best
times, their ratio and whether the runs are the same (order and members) are printed.

4. ``--whole``: the whole per-CCD step (read, calibrate, clean, detect, measure, trails) on each real frame with the
   reference and with the kernel, alternately, ``--repeats`` times each: best wall time, Mpx/s and the number of
   detections (the same with either).
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from ssodetect.streaks import detect

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
FRAMES = ("neossat_comet_leonard/NEOS_SCI_2021316234550.fits", "neowise_known_asteroids/88422a106-w1-int-1b.fits",
          "luxembourg_2713_night1/lux-180.000secs.Light.Open.00000015.fit")


def synthetic(n: int, seed: int, size: float = 2048.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xs, ys = [rng.uniform(0, size, n)], [rng.uniform(0, size, n)]
    for _ in range(20):
        m = int(rng.integers(8, 31))
        x0, y0 = rng.uniform(0, size, 2)
        theta = rng.uniform(0, math.pi)
        t = np.sort(rng.uniform(0, 25.0 * m, m))
        xs.append(x0 + t * math.cos(theta) + rng.normal(0, 0.3, m))
        ys.append(y0 + t * math.sin(theta) + rng.normal(0, 0.3, m))
    return np.concatenate(xs), np.concatenate(ys)


def compare(label: str, x: np.ndarray, y: np.ndarray, repeats: int) -> None:
    t_ref, t_fast = [], []
    for k in range(repeats):
        t0 = time.perf_counter()
        fast = detect.collinear_chains(x, y)
        t_fast.append(time.perf_counter() - t0)
        if k == 0 or x.size <= 10000:
            t0 = time.perf_counter()
            ref = detect._collinear_chains_reference(x, y)
            t_ref.append(time.perf_counter() - t0)
    same = len(fast) == len(ref) and all(np.array_equal(a, b) for a, b in zip(fast, ref))
    print(f"{label:<40} {x.size:>6} points {len(ref):>5} runs  reference {min(t_ref):8.3f} s  "
          f"kernel {1e3 * min(t_fast):8.1f} ms  ratio {min(t_ref) / min(t_fast):6.0f}  same runs: {same}")


def frame_points(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The points :func:`collinear_chains` gets on one frame (None when the step does not call it)."""
    from ssodetect.config import Config
    from ssodetect.io import find_inputs, scan_inputs
    from ssodetect.pipeline.ccd import process_ccd

    config = Config()
    ref = scan_inputs(find_inputs([path]), config.io)[0]
    kept = []
    kernel = detect.collinear_chains

    def keep(x, y, **kwargs):
        kept.append((np.array(x, float), np.array(y, float)))
        return kernel(x, y, **kwargs)

    detect.collinear_chains = keep
    try:
        process_ccd(ref, config, require_wcs=False)
    finally:
        detect.collinear_chains = kernel
    return kept[0] if kept else None


def whole_step(path: Path, repeats: int) -> None:
    """The per-CCD step on one frame with the reference and with the kernel (best wall times)."""
    from ssodetect.config import Config
    from ssodetect.io import find_inputs, scan_inputs
    from ssodetect.pipeline.ccd import process_ccd

    config = Config()
    config.execution.progress = False
    ref = scan_inputs(find_inputs([path]), config.io)[0]
    kernel = detect.collinear_chains
    times: dict = {"reference": [], "kernel": []}
    counts: dict = {}
    for _ in range(repeats):
        for name, chains in (("reference", detect._collinear_chains_reference), ("kernel", kernel)):
            detect.collinear_chains = chains
            try:
                t0 = time.perf_counter()
                table, info = process_ccd(ref, config, require_wcs=False)
                times[name].append(time.perf_counter() - t0)
            finally:
                detect.collinear_chains = kernel
            counts[name] = len(table)
    mpx = float(np.prod(info["shape"])) / 1e6 if info.get("shape") else float("nan")
    print(f"{path.name:<40} {mpx:5.2f} Mpx  per-CCD step: reference {min(times['reference']):6.2f} s "
          f"({mpx / min(times['reference']):5.2f} Mpx/s), kernel {min(times['kernel']):6.2f} s "
          f"({mpx / min(times['kernel']):5.2f} Mpx/s); detections {counts['reference']} / {counts['kernel']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[2000, 10000, 30000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--whole", action="store_true", help="also time the whole per-CCD step on the real frames")
    parser.add_argument("--frames", type=Path, nargs="*", default=None,
                        help=f"FITS frames (default: {', '.join(FRAMES)} under {REAL}, when present)")
    args = parser.parse_args()

    x, y = synthetic(300, args.seed, 512.0)
    t0 = time.perf_counter()
    detect.collinear_chains(x, y)
    print(f"first call (numba compile, or load from its cache): {time.perf_counter() - t0:.2f} s")
    for n in args.sizes:
        compare(f"synthetic 2048^2, seed {args.seed}", *synthetic(n, args.seed), args.repeats)
    frames = args.frames if args.frames is not None else [REAL / f for f in FRAMES if (REAL / f).exists()]
    for path in frames:
        points = frame_points(path)
        if points is None:
            print(f"{path.name}: collinear_chains not called")
            continue
        compare(path.name, *points, args.repeats)
    if args.whole:
        for path in frames:
            whole_step(path, args.repeats)


if __name__ == "__main__":
    main()
