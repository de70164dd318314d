"""Fault injection around the output directory: whole replacement, foreign files, the lock, stale working
directories, links, permissions and failures at any point of a run.

Every case checks the exit status, the one-line message (naming the directory and the file or problem) and
what OUTDIR and its parent hold before and after.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from faultkit import RECORD, cli, copy_inputs, copy_run, files, leftovers, recorded, snapshot, write_record
from ssodetect.io.outputs import STAGE_MARKER, stage_marker_text

#: Products of a complete run that every rerun of the scene writes again.
CORE = {"objects.ecsv", "observations.ecsv", "manifest.json", "config.toml", "run.log", RECORD}


def _refused(outcome, *names):
    """Exit 2 with exactly one line, the error, naming every one of ``names``."""
    assert outcome.code == 2, outcome.err
    assert len(outcome.err) == 1, outcome.err
    line = outcome.err[0]
    assert line.startswith("ssodetect: error: ")
    for name in names:
        assert str(name) in line, (name, line)
    return line


def _complete(out):
    """``out`` holds one whole run: every file recorded, every recorded file there, nothing of ours beside it."""
    assert CORE <= files(out)
    assert files(out) == recorded(out)
    assert leftovers(out) == []


# ----------------------------------------------------------------------------------------------------------
# files ssodetect did not write


@pytest.mark.parametrize("extra", [
    "notes.txt",                 # the user's own note beside the products
    "known.ecsv",                # a product name this run did not write (known objects off)
    "steps/notes.txt",           # hidden in a products sub-directory
    "logs/mine.log",
    ".hidden",                   # a dot file
    "mine/deep/data.fits",       # a tree of the user's
])
def test_foreign_file_in_an_earlier_run_is_refused(good_run, scene, tmp_path, capsys, extra):
    out = copy_run(good_run.out, tmp_path / "out")
    target = out / extra
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("mine, not ssodetect's\n")
    (tmp_path / "beside.txt").write_text("x")
    before, parent_before = snapshot(out), snapshot(tmp_path)
    line = _refused(cli(capsys, "run", scene, "--out", out), out, extra)
    assert "did not write" in line
    assert snapshot(out) == before and snapshot(tmp_path) == parent_before
    assert leftovers(out) == []


@pytest.mark.parametrize("name", ["report.html", "config.toml", "known.ecsv", "notes.txt", "manifest.json"])
def test_user_directory_holding_a_product_name_is_refused(scene, tmp_path, capsys, name):
    """A directory with no record of ours (the user's), holding a file named like one of our products."""
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_text("{}\n" if name.endswith(".json") else "the user's\n")
    before = snapshot(tmp_path)
    _refused(cli(capsys, "run", scene, "--out", out), out, name)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("dropped", ["report.html", "config.toml"])
def test_recorded_run_with_an_unrecorded_product_name_is_refused(good_run, scene, tmp_path, capsys, dropped):
    """Our directory, but the record does not list ``dropped``: the file there is not ours to replace."""
    out = copy_run(good_run.out, tmp_path / "out")
    record = json.loads((out / RECORD).read_text())
    write_record(out, [f for f in record["files"] if f != dropped])
    before = snapshot(out)
    _refused(cli(capsys, "run", scene, "--out", out), out, dropped)
    assert snapshot(out) == before and leftovers(out) == []


def test_link_inside_outdir_to_the_users_data_is_refused(good_run, scene, tmp_path, capsys):
    """OUT/steps replaced by a link to a directory of the user's: never followed, never removed."""
    out = copy_run(good_run.out, tmp_path / "out")
    data = tmp_path / "data"
    data.mkdir()
    (data / "precious.fits").write_bytes(b"\0" * 2880)
    for name in os.listdir(out / "steps"):
        os.unlink(out / "steps" / name)
    (out / "steps").rmdir()
    (out / "steps").symlink_to(data, target_is_directory=True)
    before, data_before = snapshot(out), snapshot(data)
    _refused(cli(capsys, "run", scene, "--out", out), out, "steps")
    assert snapshot(out) == before and snapshot(data) == data_before


# ----------------------------------------------------------------------------------------------------------
# our own directory: rerun, whole replacement


def test_rerun_into_its_own_outdir_replaces_it_whole(good_run, scene, tmp_path, capsys):
    out = copy_run(good_run.out, tmp_path / "out")
    (tmp_path / "beside.txt").write_text("the user's, beside OUT\n")
    outcome = cli(capsys, "run", scene, "--out", out)
    assert outcome.code in (0, 1) and outcome.errors == [], outcome.err
    assert outcome.steps()["detect"] == "cached" and outcome.steps()["link"] == "cached"
    _complete(out)
    assert files(out) == files(good_run.out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["beside.txt", "out"]
    assert (tmp_path / "beside.txt").read_text() == "the user's, beside OUT\n"


def test_product_not_written_again_disappears_and_nothing_else(good_run, scene, tmp_path, capsys):
    """Alerts switched off: the earlier alert.json goes with the earlier run; every other product is there."""
    out = copy_run(good_run.out, tmp_path / "out")
    assert (out / "alert.json").exists()
    config = tmp_path / "noalert.toml"
    config.write_text("[alerts]\nenabled = false\n")
    outcome = cli(capsys, "run", scene, "--out", out, "--config", config)
    assert outcome.code in (0, 1) and outcome.errors == [], outcome.err
    assert files(out) == files(good_run.out) - {"alert.json"}
    _complete(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["noalert.toml", "out"]


def test_deleted_record_is_recognised_from_the_manifest(good_run, scene, tmp_path, capsys):
    """The user deleted .ssodetect-products.json: manifest.json's product list still marks the run as ours."""
    out = copy_run(good_run.out, tmp_path / "out")
    (out / RECORD).unlink()
    outcome = cli(capsys, "run", scene, "--out", out)
    assert outcome.code in (0, 1) and outcome.errors == [], outcome.err
    _complete(out)


@pytest.mark.parametrize("forgery", ["no signature", "another key's signature", "the old signature"])
def test_a_forged_record_cannot_make_a_run_remove_the_users_file(good_run, scene, tmp_path, capsys, forgery):
    """Someone who can write OUT adds the user's notes to the products record: the record's signature (the user's
    key, kept outside OUT) does not verify, so nothing it lists is replaced; the run is refused, OUT unchanged."""
    import hashlib
    import hmac

    out = copy_run(good_run.out, tmp_path / "out")
    (out / "notes.txt").write_text("the user's own notes")
    record = json.loads((out / RECORD).read_text())
    forged = dict(record["files"], **{"notes.txt": hashlib.sha256(b"the user's own notes").hexdigest()})
    if forgery == "no signature":
        record = {"files": forged}
    elif forgery == "another key's signature":
        mac = hmac.new(os.urandom(32), b"ssodetect products record\0" + json.dumps(sorted(forged.items())).encode(),
                       hashlib.sha256)
        record = {"files": forged, "hmac": mac.hexdigest()}
    else:
        record["files"] = forged
    (out / RECORD).write_text(json.dumps(record))
    before = snapshot(out)
    outcome = cli(capsys, "run", scene, "--out", out)
    if forgery == "no signature":  # read as an earlier version's record: the manifest's checksummed products count
        _refused(outcome, out, "notes.txt")
    else:
        _refused(outcome, out, RECORD)
        assert "not signed with your key" in outcome.errors[0]
    assert snapshot(out) == before and (out / "notes.txt").read_text() == "the user's own notes"


def test_a_forged_manifest_cannot_make_a_run_remove_the_users_file(good_run, scene, tmp_path, capsys):
    """No record; manifest.json edited to list the user's notes with their right checksum: an earlier version's
    manifest lists only the product names those versions wrote, so the notes stay foreign and the run is refused."""
    import hashlib

    out = copy_run(good_run.out, tmp_path / "out")
    (out / "mynotes.txt").write_text("precious\n")
    (out / RECORD).unlink()
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["products"]["mynotes.txt"] = {"bytes": 9, "sha256": hashlib.sha256(b"precious\n").hexdigest()}
    (out / "manifest.json").write_text(json.dumps(manifest))
    before = snapshot(out)
    _refused(cli(capsys, "run", scene, "--out", out, "--rerun"), out, "mynotes.txt")
    assert snapshot(out) == before and (out / "mynotes.txt").read_text() == "precious\n"


def test_a_record_of_an_earlier_version_is_judged_by_the_manifest(good_run, scene, tmp_path, capsys):
    """A record without a signature (versions before it): the run's products, checksummed in its manifest, are ours,
    and the directory is replaced as usual."""
    out = copy_run(good_run.out, tmp_path / "out")
    record = json.loads((out / RECORD).read_text())
    (out / RECORD).write_text(json.dumps({"files": record["files"]}))
    outcome = cli(capsys, "run", scene, "--out", out)
    assert outcome.code in (0, 1) and outcome.errors == [], outcome.err
    _complete(out)
    assert "hmac" in json.loads((out / RECORD).read_text())


def test_garbled_record_never_loses_data(good_run, scene, tmp_path, capsys):
    """A record that is not JSON: refused (its name in the message, OUT unchanged) or replaced as a whole."""
    out = copy_run(good_run.out, tmp_path / "out")
    (out / RECORD).write_text("{not json")
    before = snapshot(out)
    outcome = cli(capsys, "run", scene, "--out", out)
    if outcome.code == 2:
        _refused(outcome, out, RECORD)
        assert snapshot(out) == before
    else:
        assert outcome.code in (0, 1) and outcome.errors == [], outcome.err
        _complete(out)


@pytest.mark.parametrize("spelling", ["{out}/", "{out}/.", "{out}//", "{parent}/./x/../out"])
def test_other_spellings_of_our_outdir(good_run, scene, tmp_path, capsys, spelling):
    out = copy_run(good_run.out, tmp_path / "out")
    (tmp_path / "x").mkdir()
    outcome = cli(capsys, "run", scene, "--out", spelling.format(out=out, parent=tmp_path), "--to-step", "ingest")
    assert outcome.code in (0, 1) and outcome.errors == [], outcome.err
    _complete_partial = files(out)
    assert {"manifest.json", RECORD} <= _complete_partial and _complete_partial == recorded(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "x"]


def test_outdir_dot_is_the_working_directory(scene, tmp_path, capsys, monkeypatch):
    """``--out .`` from an empty directory: the products land there (the directory is exchanged under the
    process's feet) and nothing is left beside it."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    outcome = cli(capsys, "run", scene, "--out", ".", "--to-step", "ingest")
    assert outcome.code in (0, 1) and outcome.errors == [], outcome.err
    assert {"manifest.json", RECORD} <= files(work) and files(work) == recorded(work)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_existing_empty_outdir_is_used(scene, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    outcome = cli(capsys, "run", scene, "--out", out, "--to-step", "ingest")
    assert outcome.code in (0, 1) and outcome.errors == [], outcome.err
    assert files(out) == recorded(out) and leftovers(out) == []


# ----------------------------------------------------------------------------------------------------------
# where OUTDIR cannot be


def test_outdir_is_a_file(scene, tmp_path, capsys):
    out = tmp_path / "out"
    out.write_text("a file of the user's\n")
    before = snapshot(tmp_path)
    line = _refused(cli(capsys, "run", scene, "--out", out), out)
    assert "not a directory" in line
    assert snapshot(tmp_path) == before


def test_outdir_below_a_file(scene, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    before = snapshot(tmp_path)
    _refused(cli(capsys, "run", scene, "--out", tmp_path / "file" / "out"), tmp_path / "file")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("fault", ["missing input", "junk FITS", "from-step without a run"])
def test_failed_run_creates_no_missing_parents(scene, tmp_path, capsys, fault):
    out = tmp_path / "a" / "b" / "out"
    args = [scene, "--out", out]
    name = "exp_"
    if fault == "missing input":
        args[0], name = tmp_path / "nope", "nope"
    elif fault == "junk FITS":
        src = copy_inputs(scene, tmp_path / "in")
        (src / "junk.fits").write_text("not FITS")
        args[0], name = src, "junk.fits"
    else:
        args += ["--from-step", "link"]
        name = "link"
    before = snapshot(tmp_path)
    _refused(cli(capsys, "run", *args), name)
    assert snapshot(tmp_path) == before  # no a/, a/b/, stage or lock file anywhere


def test_successful_run_creates_the_missing_parents(scene, tmp_path, capsys):
    out = tmp_path / "a" / "b" / "out"
    outcome = cli(capsys, "run", scene, "--out", out, "--to-step", "ingest")
    assert outcome.code in (0, 1) and outcome.errors == [], outcome.err
    assert files(out) == recorded(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"] and os.listdir(tmp_path / "a") == ["b"]
    assert os.listdir(tmp_path / "a" / "b") == ["out"]


# ----------------------------------------------------------------------------------------------------------
# input and output in the same place


def test_outdir_is_the_users_input_directory(scene, tmp_path, capsys):
    src = copy_inputs(scene, tmp_path / "in")
    before = snapshot(src)
    _refused(cli(capsys, "run", src, "--out", src), src, "holds the run's input")
    assert snapshot(src) == before


def test_outdir_is_a_simulated_input_directory(scene, tmp_path, capsys):
    src = copy_run(scene, tmp_path / "sim")
    frames = sorted(p.name for p in src.glob("exp_*.fits"))
    outcome = cli(capsys, "run", src, "--out", src, "--to-step", "ingest")  # the commit alone would do it
    assert sorted(p.name for p in src.glob("exp_*.fits")) == frames, "input frames deleted by the run"
    assert outcome.code == 2 and "holds the run's input" in outcome.err[0]


def test_outdir_is_the_parent_of_the_inputs(scene, tmp_path, capsys):
    parent = tmp_path / "field"
    src = copy_inputs(scene, parent / "in")
    before = snapshot(parent)
    _refused(cli(capsys, "run", src, "--out", parent), parent, "holds the run's input")
    assert snapshot(parent) == before


@pytest.mark.parametrize("where", ["a sub-directory of an earlier run", "the parent of an earlier run"])
def test_outdir_nested_with_an_earlier_run(good_run, scene, tmp_path, capsys, where):
    """Inside a run (OUT/steps: our files, but recorded by the run above, not by a record of its own) or above
    one (replacing the parent would take the earlier run with it): refused, nothing changed."""
    earlier = copy_run(good_run.out, tmp_path / "field" / "out")
    target, named = (earlier / "steps", "steps/") if where.startswith("a sub") else (tmp_path / "field", "out/")
    before = snapshot(tmp_path)
    line = _refused(cli(capsys, "run", scene, "--out", target), target)
    # (campaign 21: inside another command's directory, named as such; above one, its files not the new run's)
    assert ("inside a run" in line) if named == "steps/" else ("did not write" in line)
    if named == "out/":
        assert "out/" in line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("length", [200, 240, 255])
def test_long_outdir_name(scene, tmp_path, capsys, length):
    """A legal directory name near NAME_MAX (255): the stage and lock names beside it are longer still.  Either
    it works or it is refused in one line; nothing is left beside it."""
    out = tmp_path / ("o" * length)
    outcome = cli(capsys, "run", scene, "--out", out, "--to-step", "ingest")
    if outcome.code == 2:
        assert len(outcome.err) == 1 and "internal error" not in outcome.err[0], outcome.err
        assert not out.exists()
    else:
        assert outcome.code in (0, 1) and outcome.errors == [], outcome.err
        assert files(out) == recorded(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ([out.name] if out.exists() else [])


def test_a_run_directory_as_input(good_run, tmp_path, capsys):
    """The products of a run (cutouts.fits, overview.fits) given as the frames of the next, into itself."""
    out = copy_run(good_run.out, tmp_path / "out")
    before = snapshot(out)
    outcome = cli(capsys, "run", out, "--out", out)
    line = _refused(outcome)
    assert "holds the run's input" in line
    assert snapshot(out) == before and leftovers(out) == []


# ----------------------------------------------------------------------------------------------------------
# the lock and the working directories beside OUTDIR

_HOLDER = textwrap.dedent("""
    import sys
    from ssodetect.io.outputs import OutputLock
    lock = OutputLock(sys.argv[1])
    print("locked", flush=True)
    sys.stdin.read()
    lock.release()
""")


def test_outdir_held_by_another_command(good_run, scene, tmp_path, capsys):
    """Another process holds OUT's lock (an ``OutputLock`` taken in this process would be re-entrant): a run and a
    report (which adds files: the campaign's D4 found it taking another lock than a run's) are both refused."""
    out = copy_run(good_run.out, tmp_path / "out")
    before = snapshot(out)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        line = _refused(cli(capsys, "run", scene, "--out", out), out, "another ssodetect command", holder.pid)
        assert "lock" in line
        line = _refused(cli(capsys, "report", out), out, "another ssodetect command", holder.pid)
        assert snapshot(out) == before
    finally:
        holder.communicate("", timeout=60)
    assert holder.returncode == 0
    assert leftovers(out) == []
    outcome = cli(capsys, "run", scene, "--out", out)  # the lock given back: the next command runs
    assert outcome.code in (0, 1) and outcome.errors == [], outcome.err
    _complete(out)


def test_outdir_held_in_this_process(good_run, scene, tmp_path, capsys):
    from ssodetect.io.outputs import OutputLock

    out = copy_run(good_run.out, tmp_path / "out")
    before = snapshot(out)
    lock = OutputLock(out)
    try:
        outcome = cli(capsys, "run", scene, "--out", out, "--to-step", "ingest")
    finally:
        lock.release()
    assert snapshot(out) == before
    _refused(outcome, out, "another ssodetect command")


def _left_by_a_killed_command(directory):
    """Make ``directory`` what a killed command leaves: private (0700) and marked with the id of a process that is
    gone."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    directory.chmod(0o700)
    (directory / STAGE_MARKER).write_text(stage_marker_text(directory, child.pid))


def test_stale_working_directories_are_removed(good_run, scene, tmp_path, capsys):
    out = copy_run(good_run.out, tmp_path / "out")
    stage = tmp_path / ".out.stage-xyz_1234"  # named as tempfile.mkdtemp names them, marked as ours
    (stage / "steps").mkdir(parents=True)
    (stage / "steps" / "detect.pkl").write_bytes(b"half written")
    _left_by_a_killed_command(stage)
    previous = tmp_path / ".out.previous-abc_1234"
    copy_run(good_run.out, previous / "run")
    _left_by_a_killed_command(previous)
    (tmp_path / ".out.lock").write_text("99999")  # a killed command's lock file: no flock held on it
    # the live stage of a run into the sibling directory "out.stage-a" is another's (the campaign's D3)
    sibling = tmp_path / ".out.stage-a.stage-k2p9x0qz"
    sibling.mkdir()
    (sibling / "observations.ecsv").write_text("being written")
    outcome = cli(capsys, "run", scene, "--out", out)
    assert outcome.code in (0, 1) and outcome.errors == [], outcome.err
    _complete(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.stage-a.stage-k2p9x0qz", "out"]
    assert (sibling / "observations.ecsv").read_text() == "being written"


def _interrupted_commit(good_run, scene, tmp_path, capsys, monkeypatch):
    """No atomic exchange; the process dies after moving the old run aside and before moving the new one in:
    OUT is gone, the old run waits in ``.out.previous-*/run``.  Returns OUT and its snapshot before."""
    import ssodetect.io.outputs as outputs

    out = copy_run(good_run.out, tmp_path / "out")
    before = snapshot(out)
    real_rename = os.rename

    def rename(src, dst, *args, **kwargs):
        if ".stage-" in os.fspath(src) and os.fspath(dst) == str(out):
            raise OSError(errno.EIO, "injected: power lost", os.fspath(src))
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(outputs, "_exchange", lambda a, b: False)
    monkeypatch.setattr(os, "rename", rename)
    outcome = cli(capsys, "run", scene, "--out", out)
    monkeypatch.undo()
    assert outcome.code == 3 and len(outcome.errors) == 1 and "injected: power lost" in outcome.errors[0], outcome.err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if ".previous-" in p.name]  # the old run, aside
    junk = tmp_path / "junk.fits"
    junk.write_text("not FITS")
    return out, before, junk


def test_commit_interrupted_between_its_renames_is_repaired(good_run, scene, tmp_path, capsys, monkeypatch):
    """The next command (even one that fails on its input) puts the old run back, byte for byte."""
    out, before, junk = _interrupted_commit(good_run, scene, tmp_path, capsys, monkeypatch)
    outcome = cli(capsys, "run", junk, "--out", out)
    assert outcome.code == 2 and any("restored from" in line for line in outcome.warnings), outcome.err
    assert len(outcome.errors) == 1 and "junk.fits" in outcome.errors[0]
    assert snapshot(out) == before
    outcome = cli(capsys, "run", junk, "--out", out)  # and the command after it leaves nothing beside OUT
    assert outcome.code == 2 and outcome.warnings == [] and len(outcome.errors) == 1, outcome.err
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.fits", "out"]


def test_repairing_an_interrupted_commit_leaves_nothing_beside_outdir(good_run, scene, tmp_path, capsys, monkeypatch):
    out, before, junk = _interrupted_commit(good_run, scene, tmp_path, capsys, monkeypatch)
    outcome = cli(capsys, "run", junk, "--out", out)
    assert outcome.code == 2 and snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.fits", "out"]


def test_without_atomic_exchange_the_run_is_still_replaced_whole(good_run, scene, tmp_path, capsys, monkeypatch):
    import ssodetect.io.outputs as outputs

    monkeypatch.setattr(outputs, "_exchange", lambda a, b: False)
    out = copy_run(good_run.out, tmp_path / "out")
    (out / "alert.json").unlink()  # so that the new run's products differ from the old
    record = json.loads((out / RECORD).read_text())
    write_record(out, [f for f in record["files"] if f != "alert.json"])
    outcome = cli(capsys, "run", scene, "--out", out)
    assert outcome.code in (0, 1) and outcome.errors == [], outcome.err
    _complete(out)
    assert (out / "alert.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _failing_report(monkeypatch, exc):
    """The run's last step (``report``, never cached) raises ``exc``: every earlier step has done its work."""
    import ssodetect.pipeline.run as run_module

    real = run_module.pipeline_steps

    def boom(products, config, context):
        raise exc

    def steps(builtin, **kwargs):
        return [replace(s, run=boom) if s.name == "report" else s for s in real(builtin, **kwargs)]

    monkeypatch.setattr(run_module, "pipeline_steps", steps)


@pytest.mark.parametrize("exc, code, words", [
    (KeyboardInterrupt(), 130, "interrupted"),
    (RuntimeError("injected bug"), 3, "internal error: RuntimeError: injected bug"),
    (MemoryError(), 3, "MemoryError"),
])
def test_failure_late_in_a_run_leaves_outdir_as_it_was(good_run, scene, tmp_path, capsys, monkeypatch, exc, code,
                                                       words):
    out = copy_run(good_run.out, tmp_path / "out")
    before = snapshot(out)
    _failing_report(monkeypatch, exc)
    outcome = cli(capsys, "run", scene, "--out", out)
    assert outcome.code == code and len(outcome.errors) == 1 and words in outcome.errors[0], outcome.err
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_disk_full_late_in_a_run(good_run, scene, tmp_path, capsys, monkeypatch):
    out = copy_run(good_run.out, tmp_path / "out")
    before = snapshot(out)
    _failing_report(monkeypatch, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    outcome = cli(capsys, "run", scene, "--out", out)
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert outcome.code == 2 and len(outcome.errors) == 1, outcome.err
    assert "No space left on device" in outcome.errors[0] and str(out) in outcome.errors[0]  # where it was writing


def test_failure_of_the_exchange_itself(good_run, scene, tmp_path, capsys, monkeypatch):
    import ssodetect.io.outputs as outputs

    def exchange(a, b):
        raise OSError(errno.EXDEV, "injected: cross-device exchange", str(b))

    out = copy_run(good_run.out, tmp_path / "out")
    before = snapshot(out)
    monkeypatch.setattr(outputs, "_exchange", exchange)
    outcome = cli(capsys, "run", scene, "--out", out)
    assert outcome.code in (2, 3) and len(outcome.errors) == 1 and "cross-device" in outcome.errors[0], outcome.err
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ----------------------------------------------------------------------------------------------------------
# links and permissions


def test_symlinked_outdir(good_run, scene, tmp_path, capsys):
    real = copy_run(good_run.out, tmp_path / "real")
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    for _ in range(2):
        outcome = cli(capsys, "run", scene, "--out", link)
        assert outcome.code in (0, 1) and outcome.errors == [], outcome.err
        assert CORE <= files(link.resolve())
        assert leftovers(link) == [], leftovers(link)


def _has_root():
    return hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.mark.skipif(_has_root(), reason="root ignores directory permissions (see the emulated case below)")
def test_read_only_steps_directory(good_run, scene, tmp_path, capsys):
    out = copy_run(good_run.out, tmp_path / "out")
    os.chmod(out / "steps", 0o555)
    try:
        before = snapshot(out)
        line = _refused(cli(capsys, "run", scene, "--out", out), out / "steps")
        assert "not writable" in line
        assert snapshot(out) == before and leftovers(out) == []
    finally:
        os.chmod(out / "steps", 0o755)


def test_read_only_steps_directory_emulated(good_run, scene, tmp_path, capsys, monkeypatch):
    """As the read-only case, with ``os.access`` saying no for OUT/steps (the suite may run as root)."""
    import ssodetect.io.outputs as outputs

    out = copy_run(good_run.out, tmp_path / "out")
    steps = out / "steps"
    real_access = os.access

    class FakeOs:
        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def access(path, mode, **kwargs):
            if Path(path) == steps and mode & os.W_OK:
                return False
            return real_access(path, mode, **kwargs)

    monkeypatch.setattr(outputs, "os", FakeOs())
    before = snapshot(out)
    line = _refused(cli(capsys, "run", scene, "--out", out), steps)
    assert "not writable" in line
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("earlier", [True, False], ids=["over an earlier run", "into a new directory"])
def test_a_file_put_into_outdir_while_the_run_works_is_kept(good_run, scene, tmp_path, capsys, monkeypatch, earlier):
    """The campaign's D2: a file lands in OUTDIR (or OUTDIR is made, holding the user's data) during the run. The
    commit refuses, naming it; the file and the earlier run stay as they were; nothing is left beside OUTDIR."""
    import ssodetect.pipeline.run as run_module

    out = copy_run(good_run.out, tmp_path / "out") if earlier else tmp_path / "out"
    before = snapshot(out) if earlier else None
    real = run_module.write_reports

    def write_and_meddle(*args, **kwargs):
        out.mkdir(exist_ok=True)
        (out / "notes.txt").write_text("the user's notes")
        return real(*args, **kwargs)

    monkeypatch.setattr(run_module, "write_reports", write_and_meddle)
    outcome = cli(capsys, "run", scene, "--out", out)
    monkeypatch.undo()
    assert outcome.code == 2 and len(outcome.errors) == 1 and "notes.txt" in outcome.errors[0], outcome.err
    assert (out / "notes.txt").read_text() == "the user's notes"
    if earlier:
        after = snapshot(out)
        after.pop("notes.txt")
        assert after == before
    else:
        assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert leftovers(out) == []


@pytest.mark.parametrize("name", ["observations.ecsv", "objects.ecsv", "provenance.json"])
def test_report_of_a_damaged_product_is_a_clean_error(good_run, tmp_path, capsys, name):
    """The campaign's D8: `ssodetect report` on a run whose table was truncated: exit 2 naming the file."""
    out = copy_run(good_run.out, tmp_path / "out")
    path = out / name
    path.write_bytes(path.read_bytes()[:300])
    before = snapshot(out)
    _refused(cli(capsys, "report", out), path)
    assert snapshot(out) == before


def test_astrometry_into_a_directory_holding_a_users_file_is_refused_before_any_work(scene, tmp_path, capsys,
                                                                                    monkeypatch):
    """The campaign's D13: `ssodetect astrometry` solved every exposure before refusing OUTDIR; now it refuses
    first (nothing detected, nothing solved), naming the file, and leaves it as it was."""
    import ssodetect.pipeline.run as run_module

    out = tmp_path / "out"
    out.mkdir()
    (out / "exp_00.head").write_text("mine")
    monkeypatch.setattr(run_module, "_detect", lambda *a, **k: (_ for _ in ()).throw(AssertionError("work began")))
    _refused(cli(capsys, "astrometry", scene, "--refcat", scene / "refcat.ecsv", "--out", out), out, "exp_00.head")
    assert (out / "exp_00.head").read_text() == "mine" and leftovers(out) == []


def test_a_users_directory_named_like_a_stage_is_never_removed(good_run, scene, tmp_path, capsys):
    """The third campaign's A28/A29: a directory of the user's whose name matches a stage's (beside OUT, or inside it
    when a report adds files) holds no stage marker, so it is not ours: a run leaves it alone (and refuses an OUT
    holding one); a stage a killed report left inside OUT (marked) is removed by the next run."""
    out = copy_run(good_run.out, tmp_path / "out")
    beside = tmp_path / ".out.stage-userdata"
    beside.mkdir()
    (beside / "thesis.tex").write_text("mine")
    outcome = cli(capsys, "run", scene, "--out", out)
    assert outcome.code in (0, 1) and outcome.errors == [], outcome.err
    assert (beside / "thesis.tex").read_text() == "mine"
    inside = out / ".ssodetect.stage-abcdefgh"
    inside.mkdir()
    (inside / "notes.txt").write_text("mine too")
    outcome = cli(capsys, "report", out)
    assert (inside / "notes.txt").read_text() == "mine too"
    before = snapshot(out)
    _refused(cli(capsys, "run", scene, "--out", out), out, ".ssodetect.stage-abcdefgh")
    assert snapshot(out) == before
    # a killed report's stage inside OUT (marked): the next run removes it and replaces OUT
    (inside / "notes.txt").unlink()
    inside.rmdir()
    killed = out / ".ssodetect.stage-k1ll3d00"
    (killed / "report.html").parent.mkdir()
    (killed / "report.html").write_text("half written")
    _left_by_a_killed_command(killed)
    outcome = cli(capsys, "run", scene, "--out", out)
    assert outcome.code in (0, 1) and outcome.errors == [], outcome.err
    assert not killed.exists()
    _complete(out)


def test_a_record_copied_from_another_run_does_not_make_the_users_files_ours(good_run, scene, tmp_path, capsys):
    """The third campaign's B33: a signed record of another run (the same user's key) put beside the user's own
    report.html and config.toml: the record's checksums are of the other run's files, so these stay the user's.  The
    re-verification's N43b: the same with the user's own steps/detect.pkl, which the record lists too (a step-cache
    name is no exception: a file changed since the record is not ours)."""
    for mine in ("config.toml", "steps/detect.pkl"):
        out = tmp_path / mine.replace("/", "_")
        (out / "steps").mkdir(parents=True)
        if mine == "config.toml":
            (out / "report.html").write_text("<p>my own report</p>")
        (out / mine).write_text("# my own file\n")
        (out / RECORD).write_bytes((good_run.out / RECORD).read_bytes())
        before = snapshot(out)
        _refused(cli(capsys, "run", scene, "--out", out), out, mine)
        assert snapshot(out) == before


def test_a_product_edited_by_the_user_is_theirs(good_run, scene, tmp_path, capsys):
    """The third campaign's G08/G15: report.html edited in a finished run is no longer what ssodetect wrote; neither a
    run nor a report overwrites it (refused, named); put back as written, the run replaces it again."""
    out = copy_run(good_run.out, tmp_path / "out")
    written = (out / "report.html").read_bytes()
    (out / "report.html").write_text("<p>my annotated report</p>")
    before = snapshot(out)
    _refused(cli(capsys, "run", scene, "--out", out), out, "report.html")
    assert snapshot(out) == before
    outcome = cli(capsys, "report", out)
    assert outcome.code == 2 and "report.html" in outcome.errors[0], outcome.err
    assert (out / "report.html").read_text() == "<p>my annotated report</p>"
    (out / "report.html").write_bytes(written)
    outcome = cli(capsys, "run", scene, "--out", out)
    assert outcome.code in (0, 1) and outcome.errors == [], outcome.err


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="needs root to give a file to another user")
def test_a_manifest_someone_else_wrote_does_not_make_the_users_files_ours(good_run, scene, tmp_path, capsys):
    """The third campaign's A16: no record; a manifest.json of the old format, written by another user, lists the
    user's known.ecsv with its right checksum: it is not the user's own manifest, so nothing it lists is ours."""
    import hashlib

    out = copy_run(good_run.out, tmp_path / "out")
    (out / RECORD).unlink()
    (out / "known.ecsv").write_text("# my known objects\n")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["products"]["known.ecsv"] = {"sha256": hashlib.sha256(b"# my known objects\n").hexdigest()}
    (out / "manifest.json").write_text(json.dumps(manifest))
    os.chown(out / "manifest.json", 65534, 65534)  # nobody's
    before = snapshot(out)
    assert "did not write" in _refused(cli(capsys, "run", scene, "--out", out), out)
    assert snapshot(out) == before and (out / "known.ecsv").read_text() == "# my known objects\n"


def test_a_directory_named_and_marked_like_a_stage_but_not_left_by_a_command_is_kept(good_run, scene, tmp_path,
                                                                                      capsys):
    """The re-verification's N12/N16: a directory named like a stage with a marker file planted in it is removed
    only when it is private to the user (0700) and its marker names a process that is gone."""
    out = copy_run(good_run.out, tmp_path / "out")
    planted = tmp_path / ".out.stage-planted0"
    planted.mkdir(mode=0o755)
    planted.chmod(0o755)
    (planted / STAGE_MARKER).write_text("1\n")  # a live process (init), and the directory is open to others
    (planted / "thesis.tex").write_text("mine")
    live = tmp_path / ".out.stage-livepid0"
    live.mkdir()
    live.chmod(0o700)
    (live / STAGE_MARKER).write_text(f"{os.getppid()}\n")  # a command still running
    # the seventh campaign's D13: private, a dead process's id, the user's notes inside, the marker unsigned
    forged = tmp_path / ".out.stage-dead0001"
    forged.mkdir()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    forged.chmod(0o700)
    (forged / STAGE_MARKER).write_text(f"{child.pid}\n")
    (forged / "mynotes.txt").write_text("notes")
    outcome = cli(capsys, "run", scene, "--out", out)
    assert outcome.code in (0, 1) and outcome.errors == [], outcome.err
    assert (planted / "thesis.tex").read_text() == "mine" and live.is_dir()
    assert (forged / "mynotes.txt").read_text() == "notes"
    # the stage's marker is gone from the committed run and never listed as a product (the re-verification's N50)
    assert not (out / STAGE_MARKER).exists()
    assert STAGE_MARKER not in json.loads((out / "manifest.json").read_text())["products"]


def test_a_named_pipe_in_outdir_is_never_opened(good_run, scene, tmp_path, capsys):
    """The re-verification's N11/N46/N47/N49: a recorded product, the products record or a step record replaced by
    a named pipe blocked run and report for ever (the checksum and the JSON readers opened it).  Now a pipe in a
    product's place is not ours (the run is refused, naming it), and a pipe for the record is an unreadable record."""
    for name in ("report.html", "steps/detect.pkl", RECORD, "steps/detect.json"):
        out = copy_run(good_run.out, tmp_path / name.replace("/", "_"))
        (out / name).unlink()
        os.mkfifo(out / name)
        result: dict = {}

        def go():
            result["outcome"] = cli(capsys, "run", scene, "--out", out)

        import threading

        worker = threading.Thread(target=go, daemon=True)
        worker.start()
        worker.join(120)
        assert not worker.is_alive(), f"run blocked on a pipe named {name}"
        outcome = result["outcome"]
        assert outcome.code in (0, 1, 2) and not any("internal error" in e for e in outcome.errors), outcome.err
        if name == "report.html":
            _refused(outcome, out, "report.html")


# ----------------------------------------------------------------------------------------------------------
# the fourth campaign's cases (campaign on 3a58820)

@pytest.mark.parametrize("planted", ["a link to a file of the user's", "a file of the user's", "a named pipe",
                                     "a hard link to a file of the user's"])
@pytest.mark.parametrize("command", ["run", "batch"])
def test_a_file_planted_under_the_locks_name_is_never_written_or_removed(scene, tmp_path, capsys, planted, command):
    """D1: the lock beside OUTDIR (``.out.lock``) was opened following links and truncated: a link planted there
    (by anyone who can write OUTDIR's parent) made a run overwrite the file it points to with a process number,
    then remove the link; a user's file of that name was overwritten and removed; a pipe was an internal error."""
    parent = tmp_path / "p"
    parent.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    lock = parent / (".out.lock" if command == "run" else ".batch.lock")
    if planted == "a link to a file of the user's":
        lock.symlink_to(victim)
    elif planted == "a file of the user's":
        lock.write_text("my notes\n")
    elif planted == "a hard link to a file of the user's":
        os.link(victim, lock)
    else:
        os.mkfifo(lock)
    before = snapshot(tmp_path)
    if command == "run":
        outcome = cli(capsys, "run", scene, "--out", parent / "out", "--to-step", "detect")
    else:
        fields = tmp_path / "fields.toml"
        fields.write_text(f'[[field]]\nname = "a"\ninputs = ["{scene}"]\n')
        before = snapshot(tmp_path)
        outcome = cli(capsys, "batch", fields, "--out", parent / "batch")
    line = _refused(outcome, lock)
    assert "lock" in line
    assert snapshot(tmp_path) == before and victim.read_text() == "precious\n"


@pytest.mark.parametrize("name", ["cutouts.fits", "overview.fits", "objects.ecsv", "manifest.json"])
def test_report_and_evaluate_never_open_a_pipe_in_a_products_place(good_run, scene, tmp_path, capsys, name):
    """D2: ``report`` and ``evaluate`` blocked for ever on cutouts.fits or overview.fits replaced by a named pipe
    (the fifth campaign's D2 and D10: objects.ecsv blocked ``evaluate``; a pipe for manifest.json was passed over
    by ``report`` without a word).  Now the pipe is never opened so as to block: a one-line error naming it
    (exit 2), nothing written."""
    import threading

    out = copy_run(good_run.out, tmp_path / "out")
    (out / name).unlink()
    os.mkfifo(out / name)
    before = snapshot(out)
    for args in (("report", out), ("evaluate", out, scene / "truth.ecsv")):
        result: dict = {}
        worker = threading.Thread(target=lambda: result.setdefault("outcome", cli(capsys, *args)), daemon=True)
        worker.start()
        worker.join(120)
        assert not worker.is_alive(), f"{args[0]} blocked on a pipe named {name}"
        outcome = result["outcome"]
        assert outcome.code == 2 and len(outcome.errors) == 1 and name in outcome.errors[0], outcome.err
        assert snapshot(out) == before


@pytest.mark.parametrize("edit", ["ra NaN", "dec out of range", "ra column removed", "objects emptied"])
def test_report_and_evaluate_refuse_tables_changed_since_the_run(good_run, scene, tmp_path, capsys, edit):
    """The sixth campaign: ``report`` and ``evaluate`` on an observations.ecsv edited by hand (ra NaN, dec 123, the
    ra column gone) were internal errors (exit 3); an emptied objects.ecsv gave a page of "0 moving objects" beside
    ADES/MPC files with the observations.  Such a table is no longer the run's: refused, named, nothing written."""
    from astropy.table import Table

    out = copy_run(good_run.out, tmp_path / "out")
    name = "objects.ecsv" if edit == "objects emptied" else "observations.ecsv"
    table = Table.read(out / name, format="ascii.ecsv")
    if edit == "ra NaN":
        table["ra"][0] = np.nan
    elif edit == "dec out of range":
        table["dec"][0] = 123.0
    elif edit == "ra column removed":
        table.remove_column("ra")
    else:
        table = table[:0]
    table.write(out / name, format="ascii.ecsv", overwrite=True)
    before = snapshot(out)
    for args in (("report", out), ("evaluate", out, scene / "truth.ecsv")):
        outcome = cli(capsys, *args)
        assert outcome.code == 2 and len(outcome.errors) == 1, outcome.err
        assert name in outcome.errors[0] and "changed since" in outcome.errors[0], outcome.err
        assert snapshot(out) == before and leftovers(out) == []
