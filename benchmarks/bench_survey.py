"""Survey scale: a Euclid-like field end to end, serial and on 2 Dask workers, against SourceExtractor + SCAMP.

    python benchmarks/bench_survey.py field [--ccds 36] [--nx 4096] [--ny 4132] [--exposures 4] [--keep DIR [--reuse]]
    python benchmarks/bench_survey.py scaling [--size 1024] [--fields 1 4 16] [--exposures 3 4 8]

``field``: simulates one field of ``--ccds`` CCDs x ``--exposures`` exposures (plain FITS, one file per
CCD, as SourceExtractor reads them), then in the same run:
  1. ``ssodetect run`` in-process, serial: wall time, CPU time, peak memory, throughput (Mpx/s);
  2. the same with a 2-worker Dask LocalCluster (CPU of the workers included); objects compared with
     the serial run (same names, positions within 1 mas);
  3. the classic chain on the same frames (``classic_chain.run_classic``: source-extractor + scamp,
     offline, MATCH_RESOL 1.0): extraction and astrometry CPU time;
and prints the ratio of our full pipeline's CPU time (extraction, astrometry, linking, streaks,
reports) to the classic chain's extraction + astrometry alone.

``scaling``: a batch of 1, 4, 16 small fields on 2 workers (wall per field), and one field with 3, 4,
8 exposures serially (wall per exposure).
"""
from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from classic_chain import classic_tools, run_classic
from ssodetect.config import Config
from ssodetect.pipeline import run_pipeline
from ssodetect.pipeline.batch import Field, run_batch
from ssodetect.simulate import SimulationConfig, simulate


def _cpu(who) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _peak_gb(who=resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0**2


def _config(workers: int) -> Config:
    config = Config()
    config.execution.progress = False
    config.execution.workers = workers
    return config


def _timed_run(sim: Path, out: Path, workers: int):
    t0, c_self, c_kids = time.perf_counter(), _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN)
    result = run_pipeline([sim], out, _config(workers), refcat=sim / "refcat.ecsv")
    wall = time.perf_counter() - t0
    cpu = _cpu(resource.RUSAGE_SELF) - c_self + _cpu(resource.RUSAGE_CHILDREN) - c_kids
    return result, wall, cpu


def field(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        sim = root / "field"
        t0 = time.perf_counter()
        if not (args.reuse and (sim / "truth.ecsv").exists()):
            simulate(SimulationConfig(seed=args.seed, nccd=args.ccds, nx=args.nx, ny=args.ny,
                                      n_exposures=args.exposures, layout="plain"), sim)
        mpx = args.ccds * args.exposures * args.nx * args.ny / 1e6
        print(f"field: {args.ccds} CCDs x {args.exposures} exposures of {args.nx}x{args.ny} px = {mpx:.0f} Mpx "
              f"({'reused' if args.reuse and time.perf_counter() - t0 < 1 else 'simulated'} in "
              f"{time.perf_counter() - t0:.0f} s)")
        for old in ("serial", "dask", "classic"):
            shutil.rmtree(root / old, ignore_errors=True)  # a kept directory from an earlier run must not be resumed
        serial, wall_s, cpu_s = _timed_run(sim, root / "serial", 1)
        peak_serial = _peak_gb()
        print(f"ssodetect serial:    wall {wall_s:7.1f} s, CPU {cpu_s:7.1f} s, peak memory {peak_serial:.2f} GB, "
              f"{mpx / wall_s:.1f} Mpx/s; {len(serial.objects)} objects; stages "
              + ", ".join(f"{k} {v:.1f} s" for k, v in serial.timings.items() if k != "total"))
        dask, wall_d, cpu_d = _timed_run(sim, root / "dask", 2)
        print(f"ssodetect 2 workers: wall {wall_d:7.1f} s, CPU {cpu_d:7.1f} s, peak memory {_peak_gb():.2f} GB here, "
              f"{_peak_gb(resource.RUSAGE_CHILDREN):.2f} GB in a worker, {mpx / wall_d:.1f} Mpx/s")
        a, b = serial.objects, dask.objects
        names = len(a) == len(b) and np.array_equal(np.asarray(a["object"]), np.asarray(b["object"]))
        # objects matched by position (names could differ by numbering alone), then the largest offset
        sep = np.array([np.inf])
        if len(a) == len(b) and len(a):
            cos = np.cos(np.radians(float(np.median(a["dec"]))))
            tree = cKDTree(np.column_stack([np.asarray(b["ra"]) * cos, np.asarray(b["dec"])]))
            sep, nearest = tree.query(np.column_stack([np.asarray(a["ra"]) * cos, np.asarray(a["dec"])]))
            sep = sep * 3.6e6 if np.unique(nearest).size == len(a) else np.array([np.inf])
        print(f"serial vs Dask: {len(a)} / {len(b)} objects, one-to-one by position with largest offset "
              f"{sep.max() if sep.size else 0:.3g} mas; same names {names}")
        sex, scamp = classic_tools()
        if not (sex and scamp):
            print("source-extractor and/or scamp missing (apt-get install -y source-extractor scamp): no comparison")
            return
        files = sorted(sim.glob("exp_*.fits"))
        res = run_classic(files, sim / "refcat.ecsv", root / "classic", sex, scamp)
        classic_cpu = res["cpu_sex"] + res["cpu_scamp"]
        print(f"classic chain: source-extractor wall {res['t_sex']:.1f} s / CPU {res['cpu_sex']:.1f} s "
              f"({res['cpu_sex'] / len(files):.2f} s per frame), scamp wall {res['t_scamp']:.1f} s / CPU "
              f"{res['cpu_scamp']:.1f} s; peak memory of a child {_peak_gb(resource.RUSAGE_CHILDREN):.2f} GB")
        print(f"=== CPU ratio ssodetect full pipeline / (source-extractor + scamp): serial {cpu_s / classic_cpu:.2f}, "
              f"2 workers {cpu_d / classic_cpu:.2f} (goal <= 0.5)")


def scaling(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        n_max = max(args.fields)
        for k in range(n_max):
            simulate(SimulationConfig(seed=500 + k, nx=args.size, ny=args.size, satellite=False), root / f"f{k}")
        config = _config(2)
        for n in args.fields:
            fields = [Field(f"f{k}", (str(root / f"f{k}"),)) for k in range(n)]
            t0 = time.perf_counter()
            summary = run_batch(fields, root / f"batch{n}", config)
            wall = time.perf_counter() - t0
            print(f"batch of {n:2d} fields ({args.size}^2 x 4 exposures) on 2 workers: {wall:6.1f} s, "
                  f"{wall / n:5.2f} s per field, {int((summary['status'] == 'done').sum())} done")
        for n_exp in args.exposures:
            sim = root / f"exp{n_exp}"
            simulate(SimulationConfig(seed=600, nx=args.size, ny=args.size, n_exposures=n_exp, satellite=False), sim)
            t0 = time.perf_counter()
            result = run_pipeline([sim], None, _config(1))
            wall = time.perf_counter() - t0
            print(f"{n_exp} exposures, serial: {wall:6.1f} s, {wall / n_exp:5.2f} s per exposure; "
                  + ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items() if k != "total"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("field")
    p.add_argument("--ccds", type=int, default=36)
    p.add_argument("--nx", type=int, default=4096)
    p.add_argument("--ny", type=int, default=4132)
    p.add_argument("--exposures", type=int, default=4)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--keep", default="", help="keep the field and the outputs in this directory")
    p.add_argument("--reuse", action="store_true", help="with --keep: use the field simulated there by an earlier run")
    p = sub.add_parser("scaling")
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--fields", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--exposures", type=int, nargs="+", default=[3, 4, 8])
    args = parser.parse_args()
    field(args) if args.mode == "field" else scaling(args)


if __name__ == "__main__":
    main()
