"""The pipeline with its defaults on members of the randomised scene family: worst member first, then the median.

    python benchmarks/bench_family.py [--members 101 102 ...] [--tuning] [--nccd 4] [--size 2048]
                                      [--fast-per-ccd N] [--keep DIR] [--from STEP] [--workers 1]
                                      [--config FILE]

Members 491-500 (``simulate.REPORT_MEMBERS``) are the report set and are never used for tuning
(101-110, 111-120, ..., 351-360 and 371-480, earlier report sets, were diagnosed afterwards and count as seen); ``--tuning`` runs members 1-16 instead.  Each member is an independent recipe (PSF model and width,
star and galaxy densities, cosmic rays, unflagged hot pixels, transients, satellites, spikes,
5-100 movers per CCD in uniform or clustered directions; every exposure's header off by 20",
0.5 deg and 0.5 % in scale; see ``ssodetect.simulate.family``).  ``--fast-per-ccd 60`` overrides
the mover population to 60 fast movers (10-80"/h) per 2048^2 CCD plus 40 slow ones.

Per member: completeness of slow movers (0.5-10"/h) and of fast movers (10-80"/h), V < 23.5, on
the detector in >= 3 exposures; false objects per 2048^2 CCD; CCD exposures solved (within 1" of the true WCS at the
centre and corners) among those with
>= 10 unsaturated reference stars (G 18-21) on them; every trail accounted for (linked, single,
satellite, ...); the limits the linker hit (``provenance.json`` ``link``).  The missed bright movers
are listed with their magnitude, rate and exposures on the detector.

``--keep DIR`` keeps the simulated scenes and the runs' step caches; ``--from STEP`` (e.g. ``link``)
then reruns only from that step (for linker work on the tuning members).  ``--config FILE`` runs with a
configuration file instead of the defaults (to compare a setting; the defaults are what is reported).
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS, FITSFixedWarning

from ssodetect.config import Config, load_config
from ssodetect.evaluate import evaluate_run
from ssodetect.pipeline import run_pipeline
from ssodetect.simulate import REPORT_MEMBERS, TUNING_MEMBERS, family_member, simulate


def _wcs(header: str) -> WCS:
    """A WCS from a FITS header string (its fix-up warnings silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(fits.Header.fromstring(str(header)))


def _reference_counts(sim: Path) -> dict:
    """(exposure, ccd) -> unsaturated reference stars (G 18-21) inside the CCD (true WCS)."""
    ref = Table.read(sim / "refcat.ecsv")
    g = np.asarray(ref["phot_g_mean_mag"], float)
    ref = ref[(g >= 18.0) & (g <= 21.0)]
    counts = {}
    for row in Table.read(sim / "truth_wcs.ecsv"):
        x, y = _wcs(row["wcs_header"]).all_world2pix(np.asarray(ref["ra"], float), np.asarray(ref["dec"], float), 0)
        inside = (x >= 0) & (x < int(row["nx"])) & (y >= 0) & (y < int(row["ny"]))
        counts[(int(row["exposure"]), str(row["ccd"]))] = int(inside.sum())
    return counts


#: A solved CCD exposure counts only when its WCS puts the image's centre and corners within this [arcsec] of the
#: true WCS (a chance-alignment solution rotated by 60-150 degrees had counted as solved).
MAX_WCS_ERROR = 1.0


def _correct_solutions(sim: Path, astrometry: Table) -> dict:
    """(exposure, ccd) -> whether the run's solution is ok and within MAX_WCS_ERROR of the true WCS everywhere."""
    truth = {(int(r["exposure"]), str(r["ccd"])): r for r in Table.read(sim / "truth_wcs.ecsv")}
    out = {}
    for row in astrometry:
        key = (int(row["exposure"]), str(row["ccd"]))
        if str(row["status"]) != "ok" or key not in truth or not str(row["wcs_header"]).strip():
            out[key] = False
            continue
        t = truth[key]
        nx, ny = int(t["nx"]), int(t["ny"])
        x = np.array([0.0, nx - 1.0, 0.0, nx - 1.0, 0.5 * (nx - 1)])
        y = np.array([0.0, 0.0, ny - 1.0, ny - 1.0, 0.5 * (ny - 1)])
        ra_t, dec_t = _wcs(t["wcs_header"]).all_pix2world(x, y, 0)
        ra_s, dec_s = _wcs(row["wcs_header"]).all_pix2world(x, y, 0)
        sep = np.hypot((ra_s - ra_t) * np.cos(np.radians(dec_t)), dec_s - dec_t) * 3600.0
        out[key] = bool(np.all(sep < MAX_WCS_ERROR))
    return out


def _missed(ev, truth: Table, lo: float, hi: float, bright: float = 23.5, min_exposures: int = 3) -> list[str]:
    found = set((ev.assigned or {}).values())
    out = []
    for name in np.unique(np.asarray(truth["object"])):
        rows = truth[np.asarray(truth["object"]) == name]
        n_on = int(np.sum(rows["on_detector"]))
        rate, mag = float(rows["rate"][0]), float(rows["mag"][0])
        if n_on >= min_exposures and lo <= rate <= hi and mag <= bright and name not in found:
            out.append(f"{name} V={mag:.2f} {rate:.1f}\"/h on {n_on}")
    return out


def score_run(sim: Path, result):
    """A run against its scene's truth: ``(truth, slow, fast, counts, solved, needed)`` (slow 0.5-10"/h and fast
    10-80"/h movers V < 23.5 on >= 3 exposures; reference-star counts, correct solutions and the CCD exposures with
    >= 10 reference stars)."""
    truth = Table.read(sim / "truth.ecsv")
    slow = evaluate_run(result.observations, truth, rate_range=(0.5, 10.0), bright_limit=23.5, min_exposures=3)
    fast = evaluate_run(result.observations, truth, rate_range=(10.0, 80.0), bright_limit=23.5, min_exposures=3)
    counts = _reference_counts(sim)
    solved = _correct_solutions(sim, result.astrometry)
    needed = [k for k, n in counts.items() if n >= 10]
    return truth, slow, fast, counts, solved, needed


def run_member(member: int, args, work: Path) -> dict:
    overrides = {"nccd": args.nccd, "nx": args.size, "ny": args.size}
    if args.fast_per_ccd:
        overrides.update(movers_per_ccd=args.fast_per_ccd / 0.6, fast_fraction=0.6)
    sim_config = family_member(member, **overrides)
    sim = work / f"member{member}" / "sim"
    out = work / f"member{member}" / "run"
    if not (sim / "truth.ecsv").exists():
        simulate(sim_config, sim)
    config = load_config(args.config) if args.config else Config()
    config.execution.progress = False
    config.execution.workers = args.workers
    t0 = time.perf_counter()
    result = run_pipeline([sim], out, config, refcat=sim / "refcat.ecsv",
                          from_step=args.from_step if args.from_step and (out / "manifest.json").exists() else None)
    elapsed = time.perf_counter() - t0
    truth, slow, fast, counts, solved, needed = score_run(sim, result)
    unsolved = [f"exp {e} CCD {c} ({counts[(e, c)]} ref stars)" for e, c in needed if not solved.get((e, c), False)]
    provenance = json.loads((out / "provenance.json").read_text())
    streaks = result.streaks
    status = {s: int(np.sum(streaks["status"] == s)) for s in np.unique(np.asarray(streaks["status"]))} if len(streaks) else {}
    return {
        "member": member, "recipe": sim_config, "seconds": elapsed,
        "slow": slow.completeness_bright, "n_slow": slow.n_findable_bright,
        "fast": fast.completeness_bright, "n_fast": fast.n_findable_bright,
        "false": slow.false_per_ccd, "n_false": slow.n_false, "n_objects": slow.n_objects,
        "solved": len(needed) - len(unsolved), "needed": len(needed), "unsolved": unsolved,
        "missed": _missed(slow, truth, 0.5, 10.0) + _missed(fast, truth, 10.0, 80.0),
        "streaks": status, "link": provenance.get("link", {}), "warnings": result.warnings,
    }


def _fmt(value: float) -> str:
    return f"{100 * value:5.1f} %" if np.isfinite(value) else "   -   "


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, nargs="+", default=None)
    parser.add_argument("--tuning", action="store_true", help="the tuning members 1-16 instead of the report set")
    parser.add_argument("--nccd", type=int, default=4)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--fast-per-ccd", type=float, default=0.0, help="override: this many fast movers per CCD")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--keep", type=Path, default=None, help="keep scenes and runs here (reused when present)")
    parser.add_argument("--from", dest="from_step", default=None, help="with --keep: rerun from this step (e.g. link)")
    parser.add_argument("--config", type=Path, default=None, help="a configuration file instead of the defaults")
    args = parser.parse_args()
    members = args.members or list(TUNING_MEMBERS if args.tuning else REPORT_MEMBERS)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        rows = []
        for member in members:
            r = run_member(member, args, work)
            rows.append(r)
            c = r["recipe"]
            print(f"member {member:4d}: slow {_fmt(r['slow'])} of {r['n_slow']:3d}, fast {_fmt(r['fast'])} of "
                  f"{r['n_fast']:3d}, false {r['false']:.2f}/CCD ({r['n_false']} of {r['n_objects']}), astrometry "
                  f"{r['solved']}/{r['needed']}, {r['seconds']:.0f} s | {c.psf_model} FWHM {c.fwhm_min:.2f}, "
                  f"stars {c.star_density:.0f}/deg2, CR {100 * c.cosmic_fraction:.1f} %, "
                  f"{c.movers_per_ccd:.0f} movers/CCD ({100 * c.fast_fraction:.0f} % fast, {c.mover_directions})",
                  flush=True)
            for line in r["missed"]:
                print(f"      missed {line}")
            for line in r["unsolved"]:
                print(f"      not solved within {MAX_WCS_ERROR:g}\" of the true WCS: {line}")
            print(f"      trails {r['streaks']}; link {r['link']}")
    print("=== worst member first, then the median")
    for key, label, worst in (("slow", "slow movers V<23.5", min), ("fast", "fast movers V<23.5", min),
                              ("false", "false objects per 2048^2 CCD", max)):
        values = [(r[key], r["member"]) for r in rows if np.isfinite(r[key])]
        if not values:
            continue
        w = worst(values)
        med = float(np.median([v for v, _ in values]))
        fmt = (lambda v: f"{v:.2f}") if key == "false" else _fmt
        print(f"{label:32s} worst {fmt(w[0])} (member {w[1]}), median {fmt(med)}")
    needed = sum(r["needed"] for r in rows)
    print(f"astrometry: {sum(r['solved'] for r in rows)}/{needed} CCD exposures with >= 10 reference stars solved")


if __name__ == "__main__":
    main()
