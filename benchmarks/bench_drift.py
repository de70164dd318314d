"""Trailed fields with the defaults: family members under a tracking drift of 0-50 px, fixed or turning.

    python benchmarks/bench_drift.py [--members 361 362 363] [--drifts 0 3 6 12 25 50] [--turn 0 40]
                                     [--size 2048] [--keep DIR]

Each member of the randomised scene family (``ssodetect.simulate.family``; 361-363 by default, used for no
tuning) is simulated on one CCD with 80 movers (its share of them fast) and every sky source (stars, galaxies, transients, movers) trailed by a drift
of each length [px] (``tracking_drift``), its direction fixed or turning ``--turn`` deg from one exposure to
the next (``tracking_angle_step``), and run with the defaults (``[astrometry] trailed_stars = "auto"``).

Per member and drift: the CCD exposures found trailed and the vector measured; exposures solved (within 1" of
the true WCS everywhere) among those with >= 10 reference stars and the median WCS error at 21x21 points [px];
slow (0.5-10"/h) and fast (10-80"/h) movers V < 23.5 found (on the detector in >= 3 exposures); false objects.
Per drift: the worst member first, then the median.

Not simulated: non-sidereal tracking (the target a point, the stars trails).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_family import _fmt, _missed, _wcs, score_run  # noqa: E402

from ssodetect.config import Config  # noqa: E402
from ssodetect.pipeline import run_pipeline  # noqa: E402
from ssodetect.simulate import family_member, simulate  # noqa: E402
from ssodetect.simulate.starfield import wcs_difference  # noqa: E402

#: Members of the drift benchmark (never used for tuning).
DRIFT_MEMBERS = (361, 362, 363)
#: Movers per CCD (the family's 5-100 would leave one CCD with a handful).
MOVERS_PER_CCD = 80.0


def _wcs_error_px(sim: Path, astrometry: Table) -> float:
    """Median over solved exposures of the rms WCS error [px] against the truth (21x21 points)."""
    truth = {(int(r["exposure"]), str(r["ccd"])): r for r in Table.read(sim / "truth_wcs.ecsv")}
    errors = []
    for row in astrometry:
        key = (int(row["exposure"]), str(row["ccd"]))
        if str(row["status"]) != "ok" or key not in truth:
            continue
        t = truth[key]
        err = wcs_difference(_wcs(row["wcs_header"]), _wcs(t["wcs_header"]), (int(t["ny"]), int(t["nx"])))
        errors.append(float(np.sqrt(np.mean(np.asarray(err) ** 2))) / (1000.0 * float(row["pixel_scale"])))
    return float(np.median(errors)) if errors else float("nan")


def run_case(member: int, drift_px: float, turn: float, size: int, work: Path) -> dict:
    recipe = family_member(member, nccd=1, nx=size, ny=size, movers_per_ccd=MOVERS_PER_CCD)
    sim_config = recipe.model_copy(update={"tracking_drift": drift_px * recipe.pixel_scale,
                                           "tracking_angle_step": turn})
    name = f"member{member}_drift{drift_px:g}_turn{turn:g}"
    sim, out = work / name / "sim", work / name / "run"
    if not (sim / "truth.ecsv").exists():
        simulate(sim_config, sim)
    config = Config()
    config.execution.progress = False
    t0 = time.perf_counter()
    result = run_pipeline([sim], out, config, refcat=sim / "refcat.ecsv")
    truth, slow, fast, counts, solved, needed = score_run(sim, result)
    ast = result.astrometry
    return {
        "member": member, "drift": drift_px, "turn": turn, "seconds": time.perf_counter() - t0,
        "slow": slow.completeness_bright, "n_slow": slow.n_findable_bright,
        "fast": fast.completeness_bright, "n_fast": fast.n_findable_bright,
        "false": slow.false_per_ccd, "n_false": slow.n_false,  # (per 2048^2 px already)
        "solved": sum(bool(solved.get(k)) for k in needed), "needed": len(needed),
        "wcs_px": _wcs_error_px(sim, ast),
        "trailed": int(np.sum(ast["stars_trailed"])) if len(ast) else 0, "n_exposures": len(ast),
        "vector": [round(float(v), 1) for v in ast["star_trail_length"]] if len(ast) else [],
        "missed": _missed(slow, truth, 0.5, 10.0) + _missed(fast, truth, 10.0, 80.0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, nargs="+", default=list(DRIFT_MEMBERS))
    parser.add_argument("--drifts", type=float, nargs="+", default=[0.0, 3.0, 6.0, 12.0, 25.0, 50.0],
                        help="drift lengths [px]")
    parser.add_argument("--turn", type=float, nargs="+", default=[0.0, 40.0],
                        help="turns of the drift between exposures [deg]")
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--keep", type=Path, default=None, help="keep scenes and runs here (reused when present)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        rows = []
        for turn in args.turn:
            for drift in args.drifts:
                for member in args.members:
                    r = run_case(member, drift, turn, args.size, work)
                    rows.append(r)
                    print(f"member {member} drift {drift:4g} px turn {turn:3g} deg: trailed {r['trailed']}/"
                          f"{r['n_exposures']} {r['vector']}, solved {r['solved']}/{r['needed']} (WCS "
                          f"{r['wcs_px']:.3f} px), slow {_fmt(r['slow'])} of {r['n_slow']}, fast {_fmt(r['fast'])} "
                          f"of {r['n_fast']}, false {r['false']:.2f}/2048^2 ({r['n_false']}), {r['seconds']:.0f} s",
                          flush=True)
                    for line in r["missed"]:
                        print(f"      missed {line}")
    print("=== per drift: worst member first, then the median")
    for turn in args.turn:
        for drift in args.drifts:
            sel = [r for r in rows if r["drift"] == drift and r["turn"] == turn]
            parts = []
            for key, worst in (("slow", min), ("fast", min), ("false", max), ("wcs_px", max)):
                values = [(r[key], r["member"]) for r in sel if np.isfinite(r[key])]
                if not values:
                    continue
                w = worst(values)
                med = float(np.median([v for v, _ in values]))
                fmt = (lambda v: f"{v:.2f}") if key in ("false", "wcs_px") else _fmt
                parts.append(f"{key} {fmt(w[0])} (m{w[1]}) / {fmt(med)}")
            solved = f"solved {sum(r['solved'] for r in sel)}/{sum(r['needed'] for r in sel)}"
            trailed = f"trailed {sum(r['trailed'] for r in sel)}/{sum(r['n_exposures'] for r in sel)}"
            print(f"drift {drift:4g} px, turn {turn:3g} deg: {trailed}, {solved}; " + "; ".join(parts))


if __name__ == "__main__":
    main()
