"""The operations console: launch a run from the form, watch it, review it; refusals of bad input; a real browser.

The root holds the session's simulated scene (four exposures), its reference catalogue and an earlier run.
"""
from __future__ import annotations

import json
import re
import shutil
import socket
import threading
import time

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx2")
from starlette.testclient import TestClient as _TestClient  # noqa: E402

from faultkit import copy_run  # noqa: E402
from ssodetect.console.app import create_app  # noqa: E402
from ssodetect.pipeline.registry import Registry  # noqa: E402


def TestClient(app, **kwargs):  # noqa: N802 - starlette's name, at the console's own address
    """Starlette's test client at the console's loopback address (a console without a token answers to no other
    host name: DNS rebinding)."""
    return _TestClient(app, base_url="http://127.0.0.1", **kwargs)


@pytest.fixture()
def root(scene, good_run, tmp_path):
    root = tmp_path / "root"
    (root / "frames").mkdir(parents=True)
    for path in scene.glob("exp_*.fits"):
        shutil.copy(path, root / "frames" / path.name)
    shutil.copy(scene / "refcat.ecsv", root / "refcat.ecsv")
    copy_run(good_run.out, root / "previous")
    (root / "bad.toml").write_text("[link]\nno_such_key = 1\n")
    (root / "good.toml").write_text('[report]\nstation = "C65"\n')
    return root


def _steps():
    from ssodetect.pipeline.run import BUILTIN_STEPS
    from ssodetect.pipeline.steps import pipeline_steps

    return pipeline_steps(BUILTIN_STEPS)


def _csrf(client) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', client.get("/launch").text).group(1)


def _wait(client, job_id: int, timeout: float = 180.0) -> dict:
    t0 = time.time()
    while time.time() - t0 < timeout:
        job = client.get(f"/jobs/{job_id}/status").json()
        if job["status"] not in ("queued", "running"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s")


def _form(csrf, **values):
    form = {"csrf": csrf, "inputs": "frames", "refcat": "refcat.ecsv", "config": "", "out": "night", "obs_id": "F1",
            "station": "C65", "keywords": "nightly test"}
    form.update(values)
    return form


def test_a_run_launched_from_the_form_is_queued_run_and_reviewed(root):
    with TestClient(create_app(root, workers=1)) as client:
        page = client.get("/")
        assert page.status_code == 200 and "previous" in page.text
        form_page = client.get("/launch")
        assert '<option >frames</option>' in form_page.text.replace("<option  ", "<option ") or "frames" in form_page.text
        csrf = _csrf(client)
        sent = client.post("/launch", data=_form(csrf), follow_redirects=False)
        assert sent.status_code == 303 and sent.headers["location"] == "/jobs/1"
        job = _wait(client, 1)
        assert job["status"] == "done" and job["exit_code"] in (0, 1), job
        events = client.get("/jobs/1/events").text
        assert "event: log" in events and events.rstrip().splitlines()[-1].startswith("data: {")
        run = client.get("/runs/night")
        assert run.status_code == 200 and 'id="steps"' in run.text and "link" in run.text and "C65" in run.text
        assert "ssodetect.pipeline.run.step_link (builtin)" in run.text  # the step graph names each step's code
        # ... and draws it: a box per step of the manifest, an arrow per product a step reads from an earlier one
        from ssodetect.console.graph import graph_edges

        manifest_steps = json.loads((root / "night" / "manifest.json").read_text())["steps"]
        assert re.findall(r'<g class="step" data-step="([^"]+)"', run.text) == [s["step"] for s in manifest_steps]
        pairs = {(i, j) for i, j, _ in graph_edges([{"reads": list(s.inputs), "writes": list(s.outputs)}
                                                     for s in _steps()])}
        assert run.text.count('class="edge"') == len(pairs) > 5  # an arrow per (writer, reader) pair
        assert re.search(r"<title>detect to astrometry: [^<]*ccd_results", run.text)
        manifest = json.loads(client.get("/runs/night/files/manifest.json").text)
        assert manifest["keywords"] == ["nightly", "test"] and manifest["obs_id"] == "F1"
        psv = client.get("/runs/night/files/observations.psv")
        assert psv.status_code == 200 and "permID|" in psv.text or "trkSub" in psv.text
        assert client.get("/runs/night/files/report.html").status_code == 200
        # re-run from the link step: the earlier steps loaded, the same inputs and settings
        again = client.post("/runs/night/rerun", data={"csrf": csrf, "step": "link"}, follow_redirects=False)
        assert again.status_code == 303
        job2 = _wait(client, int(again.headers["location"].rsplit("/", 1)[1]))
        assert job2["status"] == "done", job2["message"]
        steps = {s["step"]: s["status"] for s in json.loads((root / "night" / "manifest.json").read_text())["steps"]}
        assert steps["detect"] == "cached" and steps["link"] == "run", steps
        assert json.loads((root / "night" / "manifest.json").read_text())["keywords"] == ["nightly", "test"]
        assert client.post("/runs/night/rerun", data={"csrf": csrf, "step": "nowhere"}).status_code == 400
        assert client.post("/runs/night/rerun", data={"csrf": "forged", "step": "link"}).status_code == 403
        # only the run's own products, only under the root
        (root / "night" / "mine.txt").write_text("not a product")
        assert client.get("/runs/night/files/mine.txt").status_code == 404
        assert client.get("/runs/night/files/../previous/manifest.json").status_code == 404
        assert client.get("/runs/..%2F..%2Fetc").status_code == 404
        listed = client.get("/?search=nightly").text
        assert "night</a>" in listed and "previous</a>" not in listed
    with Registry(root) as reg:
        assert [r["outdir"] for r in reg.runs(search="nightly")] == ["night"]


@pytest.mark.parametrize("field, value, words", [
    ("inputs", "../frames", "outside the console"),
    ("inputs", "previous", "not a directory of FITS frames"),
    ("inputs", "", "choose the input directory"),
    ("out", "../escape", "letters, digits"),
    ("out", "previous/steps", "letters, digits"),
    ("refcat", "/etc/passwd", "outside the console"),
    ("config", "bad.toml", "no_such_key"),
    ("station", "HELLO", "three characters"),
    ("orbits", "../outside.dat", "outside the console"),
    ("orbits", "refcat.ecsv", "no such orbit file"),
    # settings generated from the configuration's schema: read as their kind, then validated by the model
    ("cfg.detect.threshold", "nan", "a finite number expected"),
    ("cfg.detect.background_box", "2", "greater than or equal to 8"),
    ("cfg.astrometry.on_failure", "explode", "one of drop, header expected"),
    # a setting the form does not have (misspelt, or kept off the form): refused, not dropped (campaign 34)
    ("cfg.link.max_rte", "3", "no setting of this form"),
    ("cfg.nosuch.key", "1", "no setting of this form"),
])
def test_bad_form_values_are_refused_with_their_reason_and_nothing_is_queued(root, field, value, words):
    with TestClient(create_app(root, start_workers=False)) as client:
        answer = client.post("/launch", data=_form(_csrf(client), **{field: value}), follow_redirects=False)
        assert answer.status_code == 400 and words in answer.text, answer.text[-2000:]
        assert 'id="error"' in answer.text
        # without the form's token: refused too
        assert client.post("/launch", data=_form("forged"), follow_redirects=False).status_code == 403
    with Registry(root) as reg:
        assert reg.jobs() == []


def test_queued_jobs_are_cancelled_and_a_restart_marks_running_ones_interrupted(root):
    with TestClient(create_app(root, start_workers=False)) as client:
        csrf = _csrf(client)
        for name in ("a", "b"):
            assert client.post("/launch", data=_form(csrf, out=name), follow_redirects=False).status_code == 303
        assert client.post("/jobs/1/cancel", data={"csrf": csrf}, follow_redirects=False).status_code == 303
        assert client.get("/jobs/1/status").json()["status"] == "cancelled"
    with Registry(root) as reg:
        assert reg.claim()["id"] == 2  # a worker took it ... and the server died
    with TestClient(create_app(root, workers=1)):
        pass  # a restarted console
    with Registry(root) as reg:
        job = reg.job(2)
    assert job["status"] == "interrupted" and "stopped" in job["message"]


def test_odd_requests_and_a_damaged_registry_never_crash_the_console(root, caplog):
    (root / "cut").mkdir()
    (root / "cut" / "manifest.json").write_text('{"run_id": ')  # a damaged run manifest: said in the server's log
    with TestClient(create_app(root, start_workers=False)) as client, caplog.at_level("WARNING", logger="ssodetect"):
        assert client.get("/").status_code == 200
        assert any(str(root / "cut" / "manifest.json") in r.getMessage() and "not listed" in r.getMessage()
                   for r in caplog.records)
        assert client.get("/jobs/99999999999999999999999").status_code == 404
        assert client.get("/jobs/99999999999999999999999/status").status_code == 404
        assert client.get("/?search=" + "%25" * 10000).status_code == 200
        assert client.get("/?search=" + "a" * 30000).status_code == 200
        page = root / ".ssodetect-registry.sqlite"
        data = bytearray(page.read_bytes())
        data[3000:5000] = bytes(range(256)) * 7 + bytes(208)
        page.write_bytes(bytes(data))
        answer = client.get("/")
        assert answer.status_code == 503 and "remove it to rebuild it" in answer.text


def test_a_console_off_loopback_needs_its_token(root):
    with TestClient(create_app(root, token="s3cret", start_workers=False)) as client:
        assert client.get("/").status_code == 401
        assert client.get("/?token=wrong").status_code == 401
        assert client.get("/?token=s3cret").status_code == 200
        assert client.get("/").status_code == 200  # the cookie it set


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_launch_watch_and_review_in_headless_chromium(root, tmp_path):
    """The form filled and sent in a real browser; the log streamed to the end; the report opened; the ADES file
    downloaded."""
    sync_api = pytest.importorskip("playwright.sync_api")
    uvicorn = pytest.importorskip("uvicorn")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian chromium is not installed")
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(root, workers=1), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            if server.started:
                break
            time.sleep(0.1)
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run"])
            page = browser.new_page(viewport={"width": 1200, "height": 900}, accept_downloads=True)
            problems = []
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(base + "/launch")
            page.select_option("#inputs", "frames")
            page.select_option("#refcat", "refcat.ecsv")
            page.fill("#out", "browser")
            page.fill("#station", "C65")
            page.fill("#keywords", "from-the-browser")
            page.click("#section-report summary")  # a generated settings group: the observatory's name
            page.fill("[id='cfg.report.observatory_name']", "Browser Observatory")
            page.click("#submit")
            page.wait_for_url(re.compile(r".*/jobs/\d+$"))
            page.wait_for_function("document.getElementById('status').textContent === 'done'", timeout=240_000)
            log_text = page.inner_text("#log")
            assert not page.is_visible("#cancel")  # the run ended: nothing left to cancel
            page.screenshot(path=str(tmp_path / "job.png"), full_page=True)
            page.click("#runlink a")
            page.wait_for_selector("#steps")
            steps = page.inner_text("#steps")
            page.click("#report")
            page.wait_for_load_state()
            title = page.title()
            page.go_back()
            ades = page.request.get(base + "/runs/browser/files/observations.psv").text()
            browser.close()
    finally:
        server.should_exit = True
        thread.join(30)
    assert problems == []
    assert "objects" in log_text  # the run's own last lines reached the page
    assert "report" in steps and "run" in steps
    assert "ssodetect" in title.lower()
    assert "C65" in ades and "trkSub" in ades
    assert "Browser Observatory" in ades  # the setting changed on the form reached the run


def test_twenty_jobs_on_two_consoles_run_once_each(root):
    """20 queued jobs, two consoles' workers (2 threads each) on one registry: every job runs exactly once.  (The jobs
    are cheap commands; a pipeline run would only make the test slower, not the queue different.)"""
    from ssodetect.console.worker import Workers, job_log

    with Registry(root) as reg:
        ids = [reg.enqueue(f"job{k}", ["config", "--plain"]) for k in range(20)]
    pools = [Workers(root, 2, poll=0.1), Workers(root, 2, poll=0.1)]
    for pool in pools:
        pool.start()
    try:
        t0 = time.time()
        while time.time() - t0 < 300:
            with Registry(root) as reg:
                states = [reg.job(i)["status"] for i in ids]
            if all(s not in ("queued", "running") for s in states):
                break
            time.sleep(0.2)
    finally:
        for pool in pools:
            pool.stop()
    assert states == ["done"] * 20
    for i in ids:  # one process each: one configuration dump in each job's log
        assert job_log(root, i).read_text().count("[execution]") == 1


def test_a_failing_run_shows_its_error_and_writes_nothing(root):
    (root / "junk").mkdir()
    (root / "junk" / "frame.fits").write_bytes(b"SIMPLE  = nonsense" + b" " * 3000)
    with TestClient(create_app(root, workers=1)) as client:
        sent = client.post("/launch", data=_form(_csrf(client), inputs="junk", out="broken"), follow_redirects=False)
        assert sent.status_code == 303
        job = _wait(client, int(sent.headers["location"].rsplit("/", 1)[1]))
        assert job["status"] == "failed" and job["exit_code"] == 2 and "frame.fits" in job["message"]
        page = client.get(f"/jobs/{job['id']}").text
        assert "frame.fits" in page and "failed" in page
    assert not (root / "broken").exists()


def test_settings_from_the_generated_form_are_laid_over_the_chosen_file(root):
    """Changed settings only (over good.toml): the rest is left to the defaults and the instrument profile; orbit
    files chosen under the root; the console's Dask scheduler passed to the run."""
    from ssodetect.config import load_config

    (root / "orbits").mkdir()
    (root / "orbits" / "MPCORB.DAT").write_text("")
    with TestClient(create_app(root, start_workers=False, scheduler="tcp://127.0.0.1:8786")) as client:
        form_page = client.get("/launch").text
        assert 'name="cfg.detect.threshold"' in form_page and 'id="section-alerts"' in form_page
        assert "orbits/MPCORB.DAT" in form_page
        form = _form(_csrf(client), config="good.toml", orbits="orbits/MPCORB.DAT")
        form.update({"cfg.detect.threshold": "5.0", "cfg.detect.background_box": "64", "cfg.alerts.enabled.shown": "1",
                     "cfg.alerts.enabled": "on"})
        assert client.post("/launch", data=form, follow_redirects=False).status_code == 303
    with Registry(root) as reg:
        argv = json.loads(reg.job(1)["argv"])
    saved = argv[argv.index("--config") + 1]
    assert saved.startswith(str(root / ".ssodetect-console" / "configs"))
    config = load_config(saved)
    assert config.detect.threshold == 5.0 and config.report.station == "C65"
    assert config.detect.model_fields_set == {"threshold"} and config.alerts.model_fields_set == set()
    assert argv[argv.index("--orbits") + 1] == str(root / "orbits" / "MPCORB.DAT")
    assert argv[argv.index("--scheduler") + 1] == "tcp://127.0.0.1:8786"


def test_a_watch_folder_in_the_console_shows_a_visit_that_never_completes(root, tmp_path):
    from ssodetect.console.watch import Watcher

    inbox = tmp_path / "inbox"
    (inbox / "v1").mkdir(parents=True)
    for path in sorted((root / "frames").glob("exp_*.fits"))[:2]:  # 2 of the visit's 4 exposures, never more
        shutil.copy(path, inbox / "v1" / path.name)
    watcher = Watcher(inbox, root, exposures=4, settle=0.0, timeout=1.0, poll=0.2)
    with TestClient(create_app(root, workers=1, watchers=[watcher])) as client:
        t0 = time.time()
        while "incomplete visit:" not in (page := client.get("/").text) and time.time() - t0 < 30:
            time.sleep(0.3)
        assert 'id="watches"' in page and str(inbox) in page
        assert re.search(r'status-incomplete">incomplete</td>\s*<td>v1</td>.*?incomplete visit: 2 of 4 exposures', page,
                         re.S), page[-3000:]
    assert not (root / "v1").exists()  # not run


def test_a_run_launched_from_the_console_computes_on_its_dask_cluster(root):
    """`serve --scheduler`: the run launched from the form computes its CCDs on that cluster."""
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        with TestClient(create_app(root, workers=1, scheduler=cluster.scheduler_address)) as client:
            sent = client.post("/launch", data=_form(_csrf(client), out="ondask"), follow_redirects=False)
            assert sent.status_code == 303
            job = _wait(client, int(sent.headers["location"].rsplit("/", 1)[1]))
            assert job["status"] == "done", job["message"]
    log_text = (root / "ondask" / "run.log").read_text()
    assert f"per-CCD work on dask scheduler {cluster.scheduler_address}" in log_text, log_text[:3000]
    assert json.loads((root / "ondask" / "manifest.json").read_text())["results"]["n_objects"] > 0


def test_a_cancelled_job_that_ignores_sigterm_is_killed_after_the_grace(tmp_path, monkeypatch):
    """A run busy inside one long library call never saw SIGTERM: the cancelled job stayed 'running' and blocked its
    worker.  After ``CANCEL_GRACE_S`` its process group gets SIGKILL (the worker's loop then records the job as
    cancelled, as for any cancelled run)."""
    import subprocess
    import sys

    from ssodetect.console import worker as worker_module

    monkeypatch.setattr(worker_module, "CANCEL_GRACE_S", 0.5)
    with Registry(tmp_path) as reg:
        job_id = reg.enqueue("busy", ["config", "--plain"])
        reg.claim()
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                                 "signal.SIG_IGN); print('ready', flush=True); time.sleep(120)"],
                                stdout=subprocess.PIPE, start_new_session=True)
    assert stubborn.stdout.readline().strip() == b"ready"
    pool = worker_module.Workers(tmp_path)
    pool._procs[job_id] = stubborn
    try:
        assert pool.cancel(job_id)
        assert stubborn.wait(timeout=20) == -9
    finally:
        if stubborn.poll() is None:
            stubborn.kill()
        stubborn.stdout.close()
