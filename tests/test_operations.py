"""Pipeline operations: the step graph, partial and resumed runs, cached steps, plug-ins, the configuration's
JSON Schema, intermediate products, the run manifest, alerts and exit codes."""
import dataclasses
import http.server
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from ssodetect.cli import main
from ssodetect.config import Config
from ssodetect.errors import InputError
from ssodetect.astrometry.refcat import ldac_reference_table, load_reference_catalogue, propagate
from ssodetect.io.ldac import read_ldac, write_ldac
from ssodetect.pipeline import run_pipeline
from ssodetect.pipeline.run import BUILTIN_STEPS
PLUGINS = Path(__file__).resolve().parent / "plugins"


@pytest.fixture()
def field(scene):
    """The session's 768^2 4-exposure scene (headers off by 20" and 0.5 deg; read only)."""
    return scene


def _config(**sections) -> Config:
    config = Config()
    config.execution.progress = False
    for section, values in sections.items():
        for key, value in values.items():
            setattr(getattr(config, section), key, value)
    return config


def _run(field, out, config=None, **kwargs):
    return run_pipeline([field], out, config or _config(), refcat=field / "refcat.ecsv", **kwargs)


def _status(out: Path) -> dict:
    manifest = json.loads((out / "manifest.json").read_text())
    return {r["step"]: r["status"] for r in manifest["steps"]}


def _same_tables(a: Path, b: Path, name: str) -> None:
    ta, tb = Table.read(a / name, format="ascii.ecsv"), Table.read(b / name, format="ascii.ecsv")
    assert ta.colnames == tb.colnames and len(ta) == len(tb)
    for col in ta.colnames:
        assert np.array_equal(np.asarray(ta[col]), np.asarray(tb[col]), equal_nan=ta[col].dtype.kind == "f"), col


def test_step_graph_printed_as_text_dot_and_mermaid(capsys):
    names = [s.name for s in BUILTIN_STEPS]
    assert names == ["ingest", "detect", "astrometry", "link", "blends", "occupancy", "stack", "vet",
                     "known", "report"]
    assert main(["steps"]) == 0
    text = capsys.readouterr().out
    assert all(f"{k}. {n} (version" in text for k, n in enumerate(names, 1))
    assert "config:  link, streaks" in text and "   ccd_results: list[(Table, dict)]" in text
    assert main(["steps", "--format", "dot"]) == 0
    dot = capsys.readouterr().out
    assert dot.startswith("digraph") and '"detect" -> "astrometry" [label="ccd_results"]' in dot
    assert main(["steps", "--format", "mermaid"]) == 0
    mermaid = capsys.readouterr().out
    assert mermaid.startswith("flowchart LR") and "astrometry -->|detections| link" in mermaid


def test_stopped_after_astrometry_and_resumed_equals_one_go(field, tmp_path):
    whole = _run(field, tmp_path / "whole")
    assert len(whole.objects) > 5
    partial = _run(field, tmp_path / "parts", to_step="astrometry")
    assert partial.objects is None
    assert _status(tmp_path / "parts") == {"ingest": "run", "detect": "run", "astrometry": "run", "link": "not run",
                                           "blends": "not run", "occupancy": "not run", "stack": "not run", "vet": "not run", "known": "not run",
                                           "report": "not run"}
    assert not (tmp_path / "parts" / "objects.ecsv").exists()
    resumed = _run(field, tmp_path / "parts", from_step="link")
    status = _status(tmp_path / "parts")
    assert status["detect"] == status["astrometry"] == "cached" and status["link"] == status["report"] == "run"
    assert len(resumed.objects) == len(whole.objects)
    for name in ("objects.ecsv", "observations.ecsv", "streaks.ecsv", "astrometry.ecsv"):
        _same_tables(tmp_path / "whole", tmp_path / "parts", name)
    # starting at a step whose predecessors' products are missing is refused, nothing written
    assert main(["run", str(field), "--out", str(tmp_path / "fresh"), "--refcat", str(field / "refcat.ecsv"),
                 "--from-step", "link", "-q"]) == 2
    assert not (tmp_path / "fresh").exists()


def test_only_linking_and_later_steps_rerun_when_only_linking_changes(field, tmp_path):
    out = tmp_path / "out"
    _run(field, out)
    first = json.loads((out / "manifest.json").read_text())
    again = _run(field, out)  # nothing changed: every cacheable step loaded
    assert _status(out) == {"ingest": "run", "detect": "cached", "astrometry": "cached", "link": "cached",
                            "blends": "cached", "occupancy": "cached", "stack": "off", "vet": "off", "known": "off", "report": "run"}
    _run_objects = Table.read(out / "objects.ecsv", format="ascii.ecsv")
    assert len(_run_objects) == len(again.objects)
    changed = _run(field, out, _config(link={"match_sigma": 3.0}))
    manifest = json.loads((out / "manifest.json").read_text())
    steps = {r["step"]: r for r in manifest["steps"]}
    assert {k: v["status"] for k, v in steps.items()} == {
        "ingest": "run", "detect": "cached", "astrometry": "cached", "link": "run", "blends": "run",
        "occupancy": "run", "stack": "off", "vet": "off", "known": "off", "report": "run"}
    seconds = {r["step"]: r["seconds"] for r in first["steps"]}
    assert steps["detect"]["seconds"] < 0.5 * seconds["detect"]  # loaded, not recomputed
    assert manifest["config"]["link"]["match_sigma"] == 3.0 and len(changed.objects) > 0
    # a cached product altered on disk is not ssodetect's any more: OUT is refused, naming it, and left alone; moved
    # away, that step runs again (the next one's key, which covers the same inputs and configuration, is unchanged:
    # it stays loaded)
    pkl = out / "steps" / "detect.pkl"
    altered = pkl.read_bytes()[:-10] + b"0123456789"
    pkl.write_bytes(altered)
    with pytest.raises(InputError, match="steps/detect.pkl"):
        _run(field, out, _config(link={"match_sigma": 3.0}))
    assert pkl.read_bytes() == altered
    pkl.unlink()
    redone = _run(field, out, _config(link={"match_sigma": 3.0}))
    assert _status(out)["detect"] == "run" and _status(out)["astrometry"] == "cached"
    assert list(redone.objects["object"]) == list(changed.objects["object"])
    assert np.array_equal(np.asarray(redone.objects["ra"]), np.asarray(changed.objects["ra"]))


def test_plugin_step_replaces_the_builtin_one(field, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(PLUGINS))
    assert main(["steps"]) == 0
    assert "vet (version 0.1, plugin example-vetter 0.1)" in capsys.readouterr().out
    # the built-in vet step is off by default ([ml] enabled = false); the plug-in's runs in its place
    result = _run(field, tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    vet = next(r for r in manifest["steps"] if r["step"] == "vet")
    assert vet["status"] == "run" and vet["origin"] == "plugin example-vetter 0.1" and vet["version"] == "0.1"
    vetting = Table.read(tmp_path / "out" / "vetting.ecsv", format="ascii.ecsv")
    assert "rule_score" in vetting.colnames and len(vetting) > len(result.objects) > 0
    assert np.all(np.asarray(result.objects["n_obs"]) >= 4)
    assert set(result.observations["object"]) == set(result.objects["object"])


def test_plugin_with_undeclared_products_is_refused(field, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS))
    import example_vetter

    monkeypatch.setattr(example_vetter, "STEP", dataclasses.replace(
        example_vetter.STEP, run=lambda p, c, x: {"objects": p["objects"], "secret": 1}))
    assert main(["run", str(field), "--out", str(tmp_path / "out"), "-q"]) == 2
    assert not (tmp_path / "out").exists()


def test_config_schema_validates_defaults_and_rejects_wrong_types(capsys):
    assert main(["config", "--schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    validator.validate(Config().model_dump(mode="json"))
    validator.validate({"detect": {"threshold": 4.5}, "link": {"min_detections": 3}})
    for bad in ({"detect": {"threshold": "high"}}, {"link": {"min_detections": 2.5}}, {"detect": {"unknown": 1}},
                {"alerts": {"url": "ftp://host"}}, {"execution": {"workers": 0}}):
        with pytest.raises(jsonschema.ValidationError):
            validator.validate(bad)


def test_intermediate_products_and_manifest(field, tmp_path):
    out = tmp_path / "out"
    result = _run(field, out, _config(intermediate={"keep": True, "ldac": True}), obs_id="TILE-42")
    detect = out / "intermediate" / "detect"
    stems = sorted(p.name[: -len(".cleaned.fits")] for p in detect.glob("*.cleaned.fits"))
    assert len(stems) == 4
    with fits.open(detect / f"{stems[0]}.cleaned.fits") as hdul:
        image, flags = hdul[0].data, hdul["MASK"].data
        assert image.shape == flags.shape == (768, 768) and image.dtype.kind == "f" and image.dtype.itemsize == 4
        assert np.all(np.isnan(image[(flags & 1) == 1])) and ((flags & 2) == 2).sum() > 100  # cosmic-ray hits
    catalogue = Table.read(detect / f"{stems[0]}.cat.fits", hdu="SOURCES")
    assert "sharp" in set(catalogue["kind"])  # the full catalogue, cosmic rays included
    (header, ldac), = read_ldac(detect / f"{stems[0]}.ldac")
    assert len(ldac) == len(catalogue) and np.allclose(ldac["XWIN_IMAGE"], catalogue["x"] + 1)
    assert header["EXPOSURE"] == 0 and "CTYPE1" in header
    heads = list((out / "intermediate" / "astrometry").glob("*.head"))
    assert len(heads) == 4 and "CTYPE1" in heads[0].read_text()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["obs_id"] == "TILE-42" and manifest["run_id"] == result.run_id
    inputs = {Path(f["path"]).name: f for f in manifest["inputs"]}
    assert {f["role"] for f in manifest["inputs"]} == {"input", "refcat"}
    name = next(n for n in inputs if n.endswith(".fits"))
    from ssodetect.io.outputs import sha256_file

    assert inputs[name]["sha256"] == sha256_file(field / name)
    assert manifest["products"]["objects.ecsv"]["sha256"] == sha256_file(out / "objects.ecsv")
    assert manifest["results"]["n_objects"] == len(result.objects)
    assert all(r["seconds"] >= 0 for r in manifest["steps"] if r["status"] != "not run")
    # per-step logs beside the run's log
    assert "step detect: run" in (out / "logs" / "detect.log").read_text()
    assert "slow movers: " in (out / "logs" / "link.log").read_text()
    assert "slow movers: " not in (out / "logs" / "detect.log").read_text()
    # a re-run from the link step replaces OUT as a whole: the loaded steps' intermediate products stay
    before = {p.relative_to(out) for p in (out / "intermediate").rglob("*") if p.is_file()}
    again = run_pipeline([field], out, _config(intermediate={"keep": True, "ldac": True}),
                         refcat=field / "refcat.ecsv", from_step="link")
    assert {r["step"]: r["status"] for r in again.steps}["detect"] == "cached"
    assert {p.relative_to(out) for p in (out / "intermediate").rglob("*") if p.is_file()} == before


@pytest.mark.skipif(shutil.which("scamp") is None, reason="scamp (Debian package) not installed")
def test_scamp_solves_from_the_kept_ldac_catalogues(field, tmp_path):
    """The LDAC catalogues a run keeps are what SCAMP reads: it solves the four exposures from them (point
    sources only, IMAFLAGS_MASK 1) to the reference catalogue within a few tens of mas."""
    out = tmp_path / "out"
    _run(field, out, _config(intermediate={"keep": True, "ldac": True}), to_step="detect")
    cats = sorted((out / "intermediate" / "detect").glob("*.ldac"))
    reference = load_reference_catalogue(field / "refcat.ecsv")
    (header, _), = read_ldac(cats[0])
    epoch = Time(header["MJD-MID"], format="mjd")
    ra, dec = propagate(reference, epoch)
    at_epoch = reference.copy()
    at_epoch["ra"], at_epoch["dec"], at_epoch["ref_epoch"], at_epoch["pmra"], at_epoch["pmdec"] = ra, dec, epoch.jyear, 0.0, 0.0
    write_ldac(tmp_path / "ref.cat", [(ldac_reference_table(at_epoch), None)])
    done = subprocess.run(
        ["scamp", *map(str, cats), "-c", "/dev/null", "-ASTREF_CATALOG", "FILE", "-ASTREFCAT_NAME", str(tmp_path / "ref.cat"),
         "-ASTREFMAG_KEY", "MAG", "-ASTREFMAGERR_KEY", "MAGERR", "-MATCH_RESOL", "1.0", "-PROJECTION_TYPE", "TAN",
         "-DISTORT_DEGREES", "1", "-POSITION_MAXERR", "1.0", "-SOLVE_PHOTOM", "N", "-CHECKPLOT_TYPE", "NONE",
         "-CHECKPLOT_DEV", "NULL", "-WRITE_XML", "N", "-IMAFLAGS_MASK", "1", "-SN_THRESHOLDS", "5,50",
         "-CROSSID_RADIUS", "1.0", "-NTHREADS", "1", "-VERBOSE_TYPE", "QUIET"],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-500:]
    for cat in cats:
        text = cat.with_suffix(".head").read_text(encoding="ascii", errors="replace")
        wcs = WCS(fits.Header.fromstring("\n".join(line for line in text.splitlines() if line[:8].strip() not in
                                                    ("COMMENT", "HISTORY")), sep="\n"))
        (_, sources), = read_ldac(cat)
        points = sources[(sources["CLASS"] == "point") & (sources["SNR_WIN"] > 30)]
        s_ra, s_dec = wcs.all_pix2world(points["XWIN_IMAGE"], points["YWIN_IMAGE"], 1)
        d, _ = cKDTree(np.column_stack([ra * np.cos(np.radians(dec)), dec])).query(
            np.column_stack([s_ra * np.cos(np.radians(s_dec)), s_dec]))
        d = d[d < 1.0 / 3600] * 3.6e6
        assert d.size >= 8 and np.median(d) < 40.0, (cat.name, d.size, np.median(d))


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.headers["Content-Type"], json.loads(body)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_alert_posted_to_a_loopback_receiver_and_run_completes_without_one(field, tmp_path):
    server = http.server.HTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    copy = tmp_path / "copied.json"
    command = [sys.executable, "-c", f"import shutil, sys; shutil.copy(sys.argv[1], {str(copy)!r})"]
    try:
        out = tmp_path / "out"
        result = _run(field, out, _config(alerts={"url": f"http://127.0.0.1:{server.server_port}/alerts",
                                                  "command": command}), obs_id="F1")
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
    assert result.alert_delivered is True
    alert = json.loads((out / "alert.json").read_text())
    assert len(_Receiver.received) == 1 and _Receiver.received[0] == ("application/json", alert)
    assert json.loads(copy.read_text()) == alert
    assert alert["obs_id"] == "F1" and alert["run_id"] == result.run_id
    assert alert["n_objects"] == len(result.objects) > 0  # nothing is known in this scene
    entry = alert["objects"][0]
    assert entry["ades"] and all(row["trkSub"] == entry["object"] for row in entry["ades"])
    with fits.open(out / entry["cutouts"]["file"]) as hdul:
        assert hdul[entry["cutouts"]["hdu"]].data.shape[0] == entry["n_obs"]
    # receiver down (a closed port), command failing: retried, logged, the run completes with its outputs
    dead = _config(alerts={"url": f"http://127.0.0.1:{_free_port()}/", "command": [sys.executable, "-c", "exit(3)"],
                           "retries": 2, "backoff": 0.05, "timeout": 2.0})
    again = _run(field, tmp_path / "down", dead)
    assert again.alert_delivered is False and again.warnings >= 2
    assert (tmp_path / "down" / "alert.json").exists() and (tmp_path / "down" / "report.html").exists()
    log_text = (tmp_path / "down" / "run.log").read_text()  # the delivery's fate is in the run's log too
    assert "failed after 3 attempts" in log_text and "delivered" in (out / "run.log").read_text()


def test_exit_codes(field, tmp_path, monkeypatch):
    args = ["run", str(field), "--out", str(tmp_path / "out"), "--refcat", str(field / "refcat.ecsv"), "-q",
            "--station", "C65"]
    assert main(args) == 0  # success, no warnings
    assert main(["run", str(tmp_path / "missing"), "--out", str(tmp_path / "x"), "-q"]) == 2  # bad input
    assert main([*args[:3], str(tmp_path / "bad"), *args[4:], "--to-step", "nowhere"]) == 2

    def broken(products, config, context):
        raise ZeroDivisionError("a bug")

    import ssodetect.pipeline.run as run_module

    steps = [dataclasses.replace(s, run=broken) if s.name == "link" else s for s in BUILTIN_STEPS]
    monkeypatch.setattr(run_module, "BUILTIN_STEPS", steps)
    assert main([*args[:3], str(tmp_path / "bug"), *args[4:]]) == 3  # internal error, nothing written
    assert not (tmp_path / "bug").exists()


class _Dripper(http.server.BaseHTTPRequestHandler):
    """A receiver that answers one byte every 0.5 s (a slow-drip attack on the alert sender)."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok":
            try:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
            except OSError:
                return
            time.sleep(0.5)

    def log_message(self, *args):
        pass


class _Flood(http.server.BaseHTTPRequestHandler):
    """A receiver that accepts the alert and then streams a 10 GB body."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", str(10 * 1024**3))
        self.end_headers()
        chunk = b"\0" * (1 << 20)
        try:
            for _ in range(10 * 1024):
                self.wfile.write(chunk)
        except OSError:
            return

    def log_message(self, *args):
        pass


def _post_to(handler, tmp_path, *, timeout: float) -> tuple[bool, float]:
    """Deliver an alert to a loopback receiver run by ``handler``; returns (delivered, seconds taken)."""
    from ssodetect.config import AlertConfig
    from ssodetect.report.alerts import deliver_alert

    alert = tmp_path / "alert.json"
    alert.write_text("{}")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        t0 = time.perf_counter()
        ok = deliver_alert(alert, AlertConfig(url=f"http://127.0.0.1:{server.server_port}/", timeout=timeout, retries=0))
        return ok, time.perf_counter() - t0
    finally:
        server.shutdown()
        server.server_close()


def test_alert_receivers_long_answer_is_not_read(tmp_path):
    """The status line is the answer: a 10 GB body is neither waited for nor held in memory."""
    ok, took = _post_to(_Flood, tmp_path, timeout=5.0)
    assert ok is True and took < 3.0


def test_alert_deadline_is_for_the_whole_attempt(tmp_path):
    from ssodetect.config import AlertConfig
    from ssodetect.report.alerts import deliver_alert

    ok, took = _post_to(_Dripper, tmp_path, timeout=1.5)
    alert = tmp_path / "alert.json"
    # every byte arrives within urllib's per-read timeout, yet the ~20 s answer is cut off at the deadline
    assert ok is False and took < 4.0
    # a command that leaves a child behind: at the deadline the whole process group ends
    marker = tmp_path / "child_alive"
    child = f"import time; time.sleep(3); open({str(marker)!r}, 'w').write('x')"
    command = [sys.executable, "-c", f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(30)"]
    def delivered(command, timeout):
        """(delivered?, seconds it took), then 3.5 s for a child that escaped to write its marker."""
        t0 = time.perf_counter()
        ok = deliver_alert(alert, AlertConfig(command=command, timeout=timeout, retries=0))
        took = time.perf_counter() - t0
        time.sleep(3.5)
        return ok, took

    ok, took = delivered(command, 1.0)
    assert ok is False and took < 4.0 and not marker.exists()
    # a grandchild that left the process group (setsid) is ended too (Linux: the command runs under a subreaper)
    if sys.platform.startswith("linux"):
        escaped = tmp_path / "escaped_alive"
        child = f"import os, time; os.setsid(); time.sleep(3); open({str(escaped)!r}, 'w').write('x')"
        command = [sys.executable, "-c",
                   f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(30)"]
        ok, took = delivered(command, 1.0)
        assert ok is False and took < 4.0 and not escaped.exists()
        # and one that outlives a command which itself finished in time
        quick = [sys.executable, "-c", f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', {child!r}])"]
        assert deliver_alert(alert, AlertConfig(command=quick, timeout=5.0, retries=0)) is True
        time.sleep(3.5)
        assert not escaped.exists()
        # the fourth campaign's D6: a command that kills the subreaper above it: the rest of its process group ends
        # (one that also left the group, setsid, after killing the subreaper is out of reach: see README)
        stayed = tmp_path / "stayed_alive"
        child = f"import time; time.sleep(3); open({str(stayed)!r}, 'w').write('x')"
        killer = [sys.executable, "-c", f"import os, signal, subprocess, sys, time; "
                  f"subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(0.5); "
                  f"os.kill(os.getppid(), signal.SIGKILL); time.sleep(30)"]
        ok, took = delivered(killer, 2.0)
        assert ok is False and took < 4.0 and not stayed.exists()


def test_a_steps_stored_warnings_are_capped_and_the_rest_counted():
    from ssodetect.pipeline.run import MAX_KEPT_WARNINGS, _kept_warnings

    kept = _kept_warnings([f"w{k}" for k in range(MAX_KEPT_WARNINGS + 37)])
    assert len(kept) == MAX_KEPT_WARNINGS + 1 and kept[-1].startswith("37 more warnings")
    assert _kept_warnings(["a", "b"]) == ["a", "b"]


def test_alert_commands_output_costs_no_memory_and_a_missing_one_is_one_line(tmp_path, caplog):
    """The campaign's D5/D6: a command printing 300 MB does not grow the run's memory (its output goes nowhere);
    a command that does not exist is one line in the warning, no traceback."""
    import resource

    from ssodetect.config import AlertConfig
    from ssodetect.report.alerts import deliver_alert

    alert = tmp_path / "alert.json"
    alert.write_text("{}")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    flood = [sys.executable, "-c", "import sys\nfor _ in range(300): sys.stdout.write('x' * (1 << 20))\nsys.exit(2)"]
    assert deliver_alert(alert, AlertConfig(command=flood, timeout=20.0, retries=0)) is False
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # kB
    with caplog.at_level("WARNING", logger="ssodetect.report.alerts"):
        assert deliver_alert(alert, AlertConfig(command=[str(tmp_path / "no-such-notifier")], retries=0)) is False
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "no-such-notifier" in text and "Traceback" not in text and "\n" not in text, text
