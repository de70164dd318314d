"""Peak memory and wall time of a run given a huge reference catalogue (issue 23: memory follows the field).

    python benchmarks/bench_refcat_memory.py [--rows 1000000] [--size 1024] [--keep DIR]

A 4-exposure single-CCD scene of SIZE^2 px (headers off by 20" and 0.5 deg) and a reference catalogue of the
scene's own stars plus ROWS random stars over 2 x 2 deg around it (ECSV).  The run (``ssodetect run`` with the
README defaults, in a child process) reports its peak resident memory (getrusage of the child), wall time,
objects found and how many reference stars were kept after the cut to the field.  The random stars match no
source, so the header matching can fail and the blind search runs to its tile limit: the worst case for time.
"""
from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.table import Table, vstack

from ssodetect.simulate import SimulationConfig, simulate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--keep", type=Path, default=None)
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_refcat_"))
    try:
        _measure(args, work)
    finally:
        if args.keep is None:  # (a 150 MB catalogue: not left behind)
            shutil.rmtree(work, ignore_errors=True)


def _measure(args, work: Path) -> None:
    """Simulate (unless kept), write the big catalogue, run, and print the peak memory and what was kept."""
    sim = work / "sim"
    if not sim.exists():
        simulate(SimulationConfig(seed=23, nccd=1, nx=args.size, ny=args.size, header_pointing_error=20.0,
                                  header_rotation_error=0.5), sim)
    own = Table.read(sim / "refcat.ecsv")
    rng = np.random.default_rng(1)
    ra0, dec0 = float(np.median(own["ra"])), float(np.median(own["dec"]))
    extra = Table({name: np.repeat(own[name][:1], args.rows) for name in own.colnames})
    extra["ra"] = ra0 + rng.uniform(-1, 1, args.rows) / np.cos(np.radians(dec0))
    extra["dec"] = dec0 + rng.uniform(-1, 1, args.rows)
    extra["phot_g_mean_mag"] = rng.uniform(14, 21, args.rows)
    refcat = work / "bigref.ecsv"
    vstack([own, extra]).write(refcat, overwrite=True)
    out = work / "run"
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "ssodetect.cli", "run", str(sim), "--refcat", str(refcat), "--out",
                           str(out), "-q"], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    kept = [line for line in (out / "run.log").read_text().splitlines() if "reference catalogue:" in line] \
        if out.exists() else []
    print(f"{args.rows} random + {len(own)} scene stars, {args.size}^2 px: exit {done.returncode}, peak {peak:.0f} MB, "
          f"{wall:.0f} s")
    print(done.stdout.strip().splitlines()[0] if done.stdout.strip() else done.stderr.strip()[-300:])
    for line in kept:
        print(line.split(": ", 1)[-1])


if __name__ == "__main__":
    main()
