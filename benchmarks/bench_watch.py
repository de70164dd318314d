"""Watch-folder latency: from the last exposure of a visit landing to its alert received.

    python benchmarks/bench_watch.py [--nccd 4] [--size 2048] [--settle 2]

Simulates one Euclid-like visit (4 exposures of NCCD CCDs of SIZE^2, headers off by up to 20"), starts a
watcher and one worker (as ``ssodetect watch`` does) over an empty inbox, with the alert POSTed to a loopback
receiver, then lands the four exposure files one after another (each written beside and renamed in, as a
transfer would).  Reports the latency from the last file's landing to the alert's arrival and how it splits:
waiting (the settle time and the watcher's poll), queue and process start, each pipeline step, and the delivery.
"""
from __future__ import annotations

import argparse
import http.server
import json
import os
import shutil
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

from ssodetect.console.watch import Watcher
from ssodetect.console.worker import Workers
from ssodetect.pipeline.registry import Registry
from ssodetect.simulate import SimulationConfig, simulate

ARRIVALS: list[float] = []


class _Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        ARRIVALS.append(time.time())
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def _t(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nccd", type=int, default=4)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--settle", type=float, default=2.0)
    args = parser.parse_args()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        simulate(SimulationConfig(seed=31, nccd=args.nccd, nx=args.size, ny=args.size, header_pointing_error=20.0,
                                  header_rotation_error=0.5), work / "sim")
        config = work / "visit.toml"
        config.write_text(f'[alerts]\nurl = "http://127.0.0.1:{server.server_port}/alert"\n[report]\nstation = "C65"\n')
        inbox, root = work / "inbox", work / "root"
        (inbox / "visit1").mkdir(parents=True)
        root.mkdir()
        workers = Workers(root, 1, poll=0.2)
        watcher = Watcher(inbox, root, exposures=4, settle=args.settle, poll=0.5,
                          run_args=["--config", str(config), "--refcat", str(work / "sim" / "refcat.ecsv")])
        workers.start()
        watcher.start()
        try:
            for path in sorted((work / "sim").glob("exp_*.fits")):
                part = inbox / "visit1" / f".{path.name}.part"
                shutil.copy(path, part)
                os.rename(part, inbox / "visit1" / path.name)
            landed = time.time()
            while not ARRIVALS and time.time() - landed < 1800:
                time.sleep(0.1)
        finally:
            watcher.stop()
            workers.stop()
            server.shutdown()
        if not ARRIVALS:
            raise SystemExit("no alert within 30 min")
        with Registry(root) as reg:
            job = reg.jobs()[0]
        manifest = json.loads((root / "visit1" / "manifest.json").read_text())
    total = ARRIVALS[0] - landed
    steps = {s["step"]: s.get("seconds") for s in manifest["steps"] if s.get("status") == "run"}
    run_start, run_end = _t(manifest["started_utc"]), _t(manifest["finished_utc"])
    print(f"visit of 4 exposures x {args.nccd} CCDs of {args.size}^2: alert {total:.1f} s after the last exposure landed")
    print(f"  waiting (settle {args.settle:g} s + poll) {_t(job['created_utc']) - landed:.1f} s; queue and process start "
          f"{run_start - _t(job['created_utc']):.1f} s; pipeline {run_end - run_start:.1f} s "
          f"({', '.join(f'{k} {v:.1f}' for k, v in steps.items() if v is not None)}); "
          f"delivery {ARRIVALS[0] - run_end:.1f} s; objects {manifest['results']['n_objects']}")


if __name__ == "__main__":
    main()
