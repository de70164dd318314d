"""Watch folders: a visit is run once it has landed complete, and its alert sent; an incomplete one is reported."""
from __future__ import annotations

import json
import os
import shutil
import sys

from ssodetect.cli import main
from ssodetect.console.watch import Watcher, visit_state
from ssodetect.config import IOConfig
from ssodetect.pipeline.registry import Registry


def test_a_visit_is_queued_once_complete_and_settled(scene, tmp_path):
    inbox, root = tmp_path / "inbox", tmp_path / "root"
    (inbox / "v1").mkdir(parents=True)
    root.mkdir()
    frames = sorted(scene.glob("exp_*.fits"))
    watcher = Watcher(inbox, root, exposures=4, settle=5.0, timeout=600.0)
    for k, path in enumerate(frames[:3]):
        shutil.copy(path, inbox / "v1" / path.name)
    (inbox / "v1" / "exp_03.fits").write_bytes(frames[3].read_bytes()[:20000])  # still being written
    n, newest, unreadable = visit_state(inbox / "v1", IOConfig())
    assert n == 3 and unreadable == 1
    assert watcher.check(now=newest + 100.0) == []  # three exposures: not complete
    shutil.copy(frames[3], inbox / "v1" / frames[3].name)
    n, newest, unreadable = visit_state(inbox / "v1", IOConfig())
    assert n == 4 and unreadable == 0
    assert watcher.check(now=newest + 1.0) == []  # complete, but files changed a second ago
    jobs = watcher.check(now=newest + 6.0)
    assert len(jobs) == 1 and watcher.check(now=newest + 60.0) == []  # queued once
    with Registry(root) as reg:
        job = reg.job(jobs[0])
    argv = json.loads(job["argv"])
    assert job["status"] == "queued" and argv[:4] == ["run", str(inbox / "v1"), "--out", str(root / "v1")]
    # a visit that never completes is reported once, not run; a folder name that is not plain is skipped
    (inbox / "v2").mkdir()
    shutil.copy(frames[0], inbox / "v2" / frames[0].name)
    (inbox / "bad name").mkdir()
    shutil.copy(frames[0], inbox / "bad name" / frames[0].name)
    watcher.check(now=newest + 10.0)
    assert watcher.check(now=newest + 10_000.0) == []
    with Registry(root) as reg:
        v2 = [j for j in reg.jobs() if j["outdir"] == "v2"]
        assert len(v2) == 1 and v2[0]["status"] == "incomplete" and "1 of 4 exposures" in v2[0]["message"]
        assert not any(j["outdir"] == "bad name" for j in reg.jobs())


def test_a_visit_changed_after_its_run_is_said_not_skipped_silently(scene, tmp_path, caplog):
    """Campaign 30: frames added to a visit folder after its run (or another night copied under its name) were
    skipped without a word, exit 0.  The visit is still not run again (its directory holds its run), but a warning
    names it once per change (``watch --once`` exits 1); an unchanged visit stays quiet; a folder named like a run
    of another command's job is said too."""
    inbox, root = tmp_path / "inbox", tmp_path / "root"
    (inbox / "v1").mkdir(parents=True)
    root.mkdir()
    frames = sorted(scene.glob("exp_*.fits"))
    for path in frames:
        shutil.copy(path, inbox / "v1" / path.name)
    watcher = Watcher(inbox, root, exposures=4, settle=0.0, timeout=600.0)
    _, newest, _ = visit_state(inbox / "v1", IOConfig())
    assert len(watcher.check(now=newest + 10.0)) == 1
    assert watcher.check(now=newest + 20.0) == [] and watcher.warned == []  # unchanged: quiet
    late = inbox / "v1" / "exp_04.fits"
    shutil.copy(frames[0], late)
    os.utime(late, (newest + 30.0, newest + 30.0))
    with caplog.at_level("WARNING", logger="ssodetect.console.watch"):
        assert watcher.check(now=newest + 40.0) == []
        assert watcher.check(now=newest + 50.0) == []
    assert len(watcher.warned) == 1 and "files changed after its run" in watcher.warned[0]
    assert sum("files changed after its run" in r.getMessage() for r in caplog.records) == 1  # said once
    # a folder named like another job's run (the launch form's)
    with Registry(root) as reg:
        reg.enqueue("night2", ["run", str(tmp_path / "elsewhere"), "--out", str(root / "night2")], "console")
    (inbox / "night2").mkdir()
    shutil.copy(frames[0], inbox / "night2" / frames[0].name)
    watcher.check(now=newest + 60.0)
    assert any("already has a run named 'night2'" in w for w in watcher.warned)


def test_watch_once_runs_the_visit_and_sends_its_alert(scene, tmp_path, capsys, monkeypatch):
    inbox, root = tmp_path / "inbox", tmp_path / "root"
    shutil.copytree(scene, inbox / "v1", ignore=shutil.ignore_patterns("*.ecsv", ".*"))
    delivered = tmp_path / "alert_copy.json"
    config = tmp_path / "alerts.toml"
    command = [sys.executable, "-c", f"import shutil, sys; shutil.copy(sys.argv[1], {str(delivered)!r})"]
    config.write_text(f"[alerts]\ncommand = {json.dumps(command)}\n[report]\nstation = \"C65\"\n")
    monkeypatch.chdir(tmp_path)  # relative folders: the runs still find their inputs and land under the root
    assert main(["watch", "inbox", "--root", "root", "--settle", "0", "--once", "--config", str(config),
                 "--refcat", str(scene / "refcat.ecsv"), "-q"]) == 0
    assert "1 visit(s) run: job 1 done" in capsys.readouterr().out
    alert = json.loads(delivered.read_text())
    assert alert["n_objects"] > 0 and (root / "v1" / "report.html").is_file() and not (root / "root").exists()
    manifest = json.loads((root / "v1" / "manifest.json").read_text())
    assert "watch" in manifest["keywords"] and any(k.startswith("landed=") for k in manifest["keywords"])


def test_watch_refuses_bad_settings_and_says_why_a_visit_was_not_run(scene, tmp_path, capsys):
    """The campaign's D9-D11: a root that is a file and non-finite times are one-line errors (exit 2); `--once` names
    each visit it leaves and why (an unreadable frame), exit 1."""
    inbox = tmp_path / "inbox"
    (inbox / "v1").mkdir(parents=True)
    frames = sorted(scene.glob("exp_*.fits"))
    for path in frames[:3]:
        shutil.copy(path, inbox / "v1" / path.name)
    (inbox / "v1" / frames[3].name).write_bytes(frames[3].read_bytes()[:20000])  # truncated
    afile = tmp_path / "afile"
    afile.write_text("x")
    for extra in (["--root", str(afile)], ["--root", str(tmp_path / "r"), "--settle", "nan"],
                  ["--root", str(tmp_path / "r"), "--timeout", "inf"]):
        assert main(["watch", str(inbox), *extra, "--once", "-q"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("ssodetect: error:"), err
    assert main(["watch", str(inbox), "--root", str(tmp_path / "r"), "--once", "--settle", "0"]) == 1
    captured = capsys.readouterr()
    assert "no complete visit to run" in captured.out
    assert "visit v1 not run: 3 of 4 exposures, 1 file(s) unreadable" in captured.err, captured.err


def test_watch_once_names_a_visit_holding_a_fifo(scene, tmp_path, capsys):
    """The second campaign's N7: a FIFO among a visit's frames made it silently skipped (exit 0)."""
    import os

    inbox = tmp_path / "inbox"
    (inbox / "v1").mkdir(parents=True)
    for path in sorted(scene.glob("exp_*.fits"))[:3]:
        shutil.copy(path, inbox / "v1" / path.name)
    os.mkfifo(inbox / "v1" / "exp_03.fits")
    assert main(["watch", str(inbox), "--root", str(tmp_path / "r"), "--once", "--settle", "0"]) == 1
    assert "visit v1 not run: 0 of 4 exposures, 1 file(s) unreadable" in capsys.readouterr().err
