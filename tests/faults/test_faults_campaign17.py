"""Fault campaign 17 (209 cases on commit 81f715f): the defects found, fixed and tested here (D7, evaluate's exit
status with warnings, in tests/test_cli.py)."""
from __future__ import annotations

import os
import time

import pytest

from faultkit import Killed, cli, copy_run, run_killed_at_exchange, snapshot
from ssodetect.io import outputs
from ssodetect.io.outputs import RECORD, STAGE_MARKER
from ssodetect.pipeline.registry import Registry


@pytest.mark.parametrize("args, said", [
    (("--distortion", "1e6"), "distortion: Input should be less than or equal to 100"),
    (("--fast-rate-max", "1e6"), "--fast-rate-max: Input should be less than or equal to 36000"),
    (("--pointing-error", "1e30"), "--pointing-error: Input should be less than or equal to 3600"),
    (("--rotation-error", "1e9"), "--rotation-error: Input should be less than or equal to 180"),
])
def test_simulate_bounds_what_broke_the_wcs(tmp_path, capsys, args, said):
    """D1: a distortion or fastest rate of 1e6 was an internal error (the WCS did not converge), pointing and rotation
    errors of 1e30 and 1e9 wrote headers anywhere on the sky with exit 0: each is a one-line error, exit 2."""
    res = cli(capsys, "simulate", tmp_path / "s", "--size", 128, *args)
    assert res.code == 2 and len(res.errors) == 1 and said in res.errors[0], res.err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("args, said", [
    (("ml", "dataset", "SCENE", "--out", "d", "-n", "10", "--seed", "-1"), "seed: Input should be greater than"),
    (("ml", "dataset", "SCENE", "--out", "d", "-n", "1000000000"), "n_sequences: Input should be less than"),
    (("ml", "train", "nowhere", "--out", "t", "--seed", "-1"), "seed = -1 is out of range"),
    (("ml", "train", "nowhere", "--out", "t", "--seed", str(10**23)), "is out of range"),
])
def test_ml_refuses_seeds_and_sizes_it_cannot_take(scene, tmp_path, capsys, monkeypatch, args, said):
    """D5, D9: a negative or huge seed was an internal error (exit 3); ``-n 1000000000`` grew by 350 MB/s until the
    machine ran out.  One-line errors, exit 2, nothing written."""
    monkeypatch.chdir(tmp_path)
    res = cli(capsys, *[str(scene) if a == "SCENE" else a for a in args])
    assert res.code == 2 and len(res.errors) == 1 and said in res.errors[0], res.err
    assert not (tmp_path / "d").exists() and not (tmp_path / "t").exists()


def test_runs_search_is_a_substring_not_a_pattern(good_run, tmp_path):
    """D6: ``runs --search '%'`` (or ``a%a``, ``_``) listed every run: LIKE's wildcards were not escaped."""
    root = tmp_path / "root"
    for name in ("alpha", "beta"):
        copy_run(good_run.out, root / name)
    with Registry(root) as reg:
        reg.sync()
        assert [r["outdir"] for r in reg.runs(search="alp")] == ["alpha"]
        for pattern in ("%", "a%a", "_lpha", "\\"):
            assert reg.runs(search=pattern) == [], pattern


def test_a_loop_of_links_is_named_as_one(tmp_path, capsys):
    """D8: a loop of symbolic links given as input was 'a link to loop2, which does not exist'."""
    (tmp_path / "loop2").symlink_to("loop1")
    (tmp_path / "loop1").symlink_to("loop2")
    res = cli(capsys, "run", tmp_path / "loop1", "--out", tmp_path / "o")
    assert res.code == 2 and res.errors == [f"ssodetect: error: {tmp_path / 'loop1'}: a loop of symbolic links "
                                            "(through loop2)"], res.err
    (tmp_path / "dangling").symlink_to("nothere")
    res = cli(capsys, "run", tmp_path / "dangling", "--out", tmp_path / "o")
    assert res.code == 2 and "a link to nothere, which does not exist" in res.errors[0]


def test_what_a_kill_in_an_atomic_write_or_a_swap_leaves_is_taken_up_not_refused(scene, good_run, tmp_path, capsys):
    """D2, D4: a kill while the products record was written left ``..ssodetect-products.json.XXXXXXXX.tmp``, and
    one between a replacement's swap and the removal of its stage marker left the marker in OUTDIR (before: it was
    removed first, and a kill before the swap left an unmarked stage beside OUTDIR for ever).  Both blocked the next
    ``run`` as files ssodetect did not write.  They are taken as ours: ``report`` removes them, ``run`` replaces
    them with the run.  A file of the user's named like a temporary of another file is still theirs."""
    run = copy_run(good_run.out, tmp_path / "run")
    dead = [run / f".{RECORD}.ab12cd34.tmp", run / ".report.html.zz99yy88.tmp", run / STAGE_MARKER]
    # (the marker as a replacement's stage left it: signed for the stage's name; campaign 18 D4: a user's file of
    # that name is theirs)
    marker = outputs.stage_marker_text(tmp_path / f".{outputs.sibling_name('run')}.stage-ab12cd34", 2**22 + 7)

    def leave():
        for path in dead:
            path.write_text(marker if path.name == STAGE_MARKER else "left by a killed command")

    leave()
    assert outputs.foreign_files(run) == []
    res = cli(capsys, "report", run)  # young ones are left (a writer without this directory's lock may be at work)
    assert res.code in (0, 1) and not res.errors and all(path.exists() for path in dead), res.err
    for path in dead:
        os.utime(path, (time.time() - 2 * outputs.LEFTOVER_AGE,) * 2)
    res = cli(capsys, "report", run)
    assert res.code in (0, 1) and not res.errors, res.err
    assert not any(path.exists() for path in dead)
    leave()
    res = cli(capsys, "run", scene, "--out", run)
    assert res.code in (0, 1) and not res.errors, res.err
    assert not any(path.exists() for path in dead) and outputs.foreign_files(run) == []
    # the user's own file named like a temporary (of a file that is not ours) blocks, and is left alone
    mine = run / ".notes.txt.ab12cd34.tmp"
    mine.write_text("mine")
    before = snapshot(run)
    res = cli(capsys, "run", scene, "--out", run)
    assert res.code == 2 and ".notes.txt.ab12cd34.tmp" in res.errors[0] and snapshot(run) == before



def test_a_kill_before_a_replacements_swap_leaves_a_marked_stage_the_next_run_removes(scene, good_run, tmp_path,
                                                                                        capsys, monkeypatch):
    """D4: the replacement's stage lost its marker before the record was written and the swap made: killed there,
    a full copy of the products stayed beside OUTDIR, never removed.  It keeps its marker now; the next run on that
    OUTDIR removes it."""
    run = copy_run(good_run.out, tmp_path / "run")

    def killed(*_args, **_kwargs):
        raise Killed

    run_killed_at_exchange(capsys, monkeypatch, scene, run, killed)
    stages = [p for p in tmp_path.iterdir() if p.name.startswith(".run.stage-")]
    assert len(stages) == 1 and (stages[0] / STAGE_MARKER).is_file()
    res = cli(capsys, "run", scene, "--out", run)
    assert res.code in (0, 1) and not res.errors, res.err
    assert not any(p.name.startswith(".run.stage-") for p in tmp_path.iterdir())
