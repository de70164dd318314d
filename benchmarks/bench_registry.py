"""Run registry at survey scale: sync and listing times for N run directories (default 1,000).

    python benchmarks/bench_registry.py [--runs 1000] [--manifest PATH]

Makes N run directories in a temporary folder, each holding a copy of one real run's ``manifest.json``
(``--manifest``; default: a run of a small simulated scene made here first) with its own id and start time,
then times: the first sync (every manifest read), a second sync (nothing changed), a sync after 10 runs
changed, listing the newest 50 and all N, and the console's runs page (needs the ``[console]`` extra).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from ssodetect.config import Config
from ssodetect.pipeline import run_pipeline
from ssodetect.pipeline.registry import Registry
from ssodetect.simulate import SimulationConfig, simulate


def _template(work: Path) -> dict:
    simulate(SimulationConfig(seed=5, nx=256, ny=256, movers_per_ccd=400.0), work / "sim")
    config = Config()
    config.execution.progress = False
    run_pipeline([work / "sim"], work / "run", config)
    return json.loads((work / "run" / "manifest.json").read_text())


def _page_ms(root: Path) -> float:
    """Median time [ms] of the console's runs page (sync included) over ``root``."""
    from starlette.testclient import TestClient

    from ssodetect.console.app import create_app

    times = []
    with TestClient(create_app(root, start_workers=False), base_url="http://127.0.0.1") as client:
        for _ in range(5):
            t0 = time.perf_counter()
            assert client.get("/").status_code == 200
            times.append(1000 * (time.perf_counter() - t0))
    return sorted(times)[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--manifest", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        manifest = json.loads(args.manifest.read_text()) if args.manifest else _template(work)
        root = work / "root"
        for k in range(args.runs):
            run = root / f"night{k // 100:02d}" / f"run{k:05d}"
            run.mkdir(parents=True)
            manifest.update(run_id=f"{k:032x}", started_utc=f"2026-{1 + k % 12:02d}-{1 + k % 28:02d}T00:00:{k % 60:02d}+00:00")
            (run / "manifest.json").write_text(json.dumps(manifest))
        with Registry(root) as reg:
            t0 = time.perf_counter()
            first = reg.sync()
            t1 = time.perf_counter()
            again = reg.sync()
            t2 = time.perf_counter()
            for k in range(10):
                path = root / "night00" / f"run{k:05d}" / "manifest.json"
                path.write_text(path.read_text().replace('"warnings"', '"keywords": ["changed"], "warnings"'))
            changed = reg.sync()
            t3 = time.perf_counter()
            newest = reg.runs(limit=50)
            t4 = time.perf_counter()
            everything = reg.runs(limit=args.runs)
            t5 = time.perf_counter()
        page_ms = _page_ms(root)
        print(f"console runs page over {args.runs} runs: {page_ms:.0f} ms (median of 5, newest 100 shown)")
        print(f"{args.runs} runs: first sync {t1 - t0:.2f} s ({first['added']} added), unchanged sync {t2 - t1:.3f} s, "
              f"sync after 10 changed {t3 - t2:.3f} s ({changed['updated']} updated), newest 50 {1000 * (t4 - t3):.1f} ms, "
              f"all {len(everything)} {1000 * (t5 - t4):.1f} ms; {len(newest)} shown")
        assert again["unchanged"] == args.runs


if __name__ == "__main__":
    main()
