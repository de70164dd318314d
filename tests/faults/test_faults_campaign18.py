"""Fault campaign 18 (about 165 cases on commit 023cfd2) and what campaign 17 left: the defects found, fixed and
tested here."""
from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from faultkit import Killed, cli, copy_run, run_killed_at_exchange, snapshot
from ssodetect.errors import InputError
from ssodetect.io import outputs
from ssodetect.io.outputs import STAGE_MARKER, OutputLock



def test_ml_train_waits_for_no_one_a_directory_another_command_writes(tmp_path, monkeypatch):
    """``ssodetect ml train`` wrote its checkpoint and products into --out without the directory's lock: two trainings
    into one directory wrote one checkpoint turn about.  A directory another command holds is refused (one line
    naming it), nothing in it touched; once free, the training takes it."""
    pytest.importorskip("torch")
    from ssodetect.ml import train as train_module

    out = tmp_path / "t"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    monkeypatch.setattr(train_module, "_load_all",
                        lambda paths: (np.zeros((10, 1)), Table({"label": [0.0, 1.0] * 5}), {}))
    reached = []
    monkeypatch.setattr(train_module, "_train", lambda *args, **kwargs: reached.append(True) or {"overall": {}})
    monkeypatch.setattr(train_module, "_check_out", lambda out, datasets: None)
    lock = OutputLock(out, inside=True)
    try:
        with pytest.raises(InputError, match="another ssodetect command is writing it"):
            train_module.train([tmp_path / "ds"], out)
    finally:
        lock.release()
    assert not reached and sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    train_module.train([tmp_path / "ds"], out)
    assert reached == [True] and not list(tmp_path.glob(".*.lock"))


def test_an_old_temporary_left_deep_in_a_run_is_removed_and_a_young_one_left(good_run, tmp_path, capsys):
    """Campaign 17 left: the temporaries of atomic writes a killed command left below the top of OUTDIR (``steps/``)
    were never removed.  ``report`` removes those an hour old at any depth and leaves young ones (a writer without
    the directory's lock may be at work); a user's file named like a temporary of a file that is not ours stays."""
    import os
    import time

    run = copy_run(good_run.out, tmp_path / "run")
    step = sorted(p.name for p in (run / "steps").iterdir() if p.suffix == ".pkl")[0]
    dead = run / "steps" / f".{step}.ab12cd34.tmp"
    young = run / "steps" / f".{step}.ef56gh78.tmp"
    for path in (dead, young):
        path.write_text("left by a killed command")
    os.utime(dead, (time.time() - 2 * outputs.LEFTOVER_AGE,) * 2)
    assert outputs.foreign_files(run) == []
    res = cli(capsys, "report", run)
    assert res.code in (0, 1) and not res.errors, res.err
    assert not dead.exists() and young.exists()
    mine = run / "steps" / ".notes.txt.ab12cd34.tmp"
    mine.write_text("mine")
    os.utime(mine, (time.time() - 2 * outputs.LEFTOVER_AGE,) * 2)
    res = cli(capsys, "report", run)
    assert mine.read_text() == "mine"


def test_a_kill_just_after_a_replacements_swap_leaves_the_old_run_the_next_run_removes(scene, good_run, tmp_path,
                                                                                       capsys, monkeypatch):
    """D2: killed just after the swap, before it was marked, the old run stayed in the stage's place beside OUTDIR,
    unmarked, never removed (a whole run's size).  The next run on OUTDIR removes it: the new run holds a note
    (signed) of the stage's name and the old run's inode.  A directory of the user's named like a stage stays, and
    so does a copy of a run named so (campaign 19: it had been taken for the old run)."""
    run = copy_run(good_run.out, tmp_path / "run")
    real = outputs._exchange

    def killed(a, b):
        real(a, b)
        raise Killed

    run_killed_at_exchange(capsys, monkeypatch, scene, run, killed)
    stages = [p for p in tmp_path.iterdir() if p.name.startswith(".run.stage-")]
    assert len(stages) == 1 and not (stages[0] / STAGE_MARKER).exists() and (stages[0] / "steps").is_dir()
    assert outputs.foreign_files(run) == []  # (the new run's marker and note are leftovers of ours)
    res = cli(capsys, "report", run)  # (any command on OUTDIR: one adding files too)
    assert res.code in (0, 1) and not res.errors, res.err
    assert not any(p.name.startswith(".run.stage-") for p in tmp_path.iterdir())
    assert not (run / outputs.SWAP_NOTE).exists() and not (run / STAGE_MARKER).exists()
    mine = tmp_path / ".run.stage-abcd1234"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    copy = copy_run(good_run.out, tmp_path / ".run.stage-backup01")
    before = snapshot(mine), snapshot(copy)
    for _ in range(2):
        res = cli(capsys, "run", scene, "--out", run)
        assert res.code in (0, 1) and not res.errors, res.err
    assert (snapshot(mine), snapshot(copy)) == before


def test_files_named_like_ours_but_not_ours_are_the_users(good_run, scene, tmp_path, capsys):
    """D4: a user's ``.ssodetect-stage`` in OUTDIR and ``steps/.notes.pkl.XXXXXXXX.tmp`` (named like a temporary of a
    product of an earlier version) were taken as leftovers of ours and went with a ``--rerun``.  They are the user's
    now: the run refuses to replace OUTDIR, naming them, and leaves everything as it was."""
    for name in (STAGE_MARKER, "steps/.mynotes.pkl.abcdefgh.tmp"):
        run = copy_run(good_run.out, tmp_path / name.replace("/", "_"))
        (run / name).write_text("mine")
        assert outputs.foreign_files(run) == [name]
        before = snapshot(run)
        res = cli(capsys, "run", scene, "--out", run, "--rerun")
        assert res.code == 2 and len(res.errors) == 1 and name in res.errors[0], res.err
        assert snapshot(run) == before


@pytest.mark.parametrize("args, said", [
    (("--lr", "1e300"), "lr = 1e+300 is out of range"),
    (("--epochs", "100000000000"), "epochs = 100000000000 is out of range"),
    (("--batch", "10000000"), "batch = 10000000 is out of range"),
])
def test_ml_train_bounds_its_schedule(tmp_path, capsys, monkeypatch, args, said):
    """D5: ``--lr 1e300`` was an internal error (exit 3: torch overflowed); ``--epochs 1e11`` ran until stopped by
    hand.  One-line errors, exit 2, before any dataset is read, nothing written."""
    monkeypatch.chdir(tmp_path)
    res = cli(capsys, "ml", "train", "nowhere", "--out", "t", *args)
    assert res.code == 2 and len(res.errors) == 1 and said in res.errors[0], res.err
    assert not (tmp_path / "t").exists()


def test_a_stack_search_too_large_to_run_is_refused(scene, tmp_path, capsys):
    """D1: ``[stack] rate_max = 1e6`` grew to 24 GB and was killed by the kernel's OOM killer (no exit code of ours,
    a stage and a lock left).  The setting is bounded (exit 2 before any work); rates within the bounds that still
    make more than MAX_VELOCITIES trajectories per pixel (small pixels, a long span) are refused by the search,
    naming the setting, before any image is made."""
    from ssodetect.errors import ConfigError
    from ssodetect.stack.candidates import MAX_VELOCITIES, search
    from ssodetect.stack.search import velocity_count

    config = tmp_path / "c.toml"
    config.write_text("[stack]\nenabled = true\nrate_max = 1e6\n")
    res = cli(capsys, "run", scene, "--out", tmp_path / "o", "--config", config)
    assert res.code == 2 and len(res.errors) == 1 and "rate_max" in res.errors[0], res.err
    assert not (tmp_path / "o").exists()
    times = np.array([0.0, 0.3, 0.6, 0.9])
    assert velocity_count(1.0, 999.0, 0.9, 0.2355) > MAX_VELOCITIES
    diff = np.zeros((4, 32, 32), np.float32)
    with pytest.raises(ConfigError, match="lower \\[stack\\] rate_max"):
        search(diff, np.ones_like(diff), times, 0.1, 0.0, rate_min=1.0, rate_max=999.0)


def test_one_lock_for_a_directory_whose_parent_appears_meanwhile(tmp_path, monkeypatch):
    """D3: the lock beside OUTDIR is named after the nearest directory that exists: a run on ``new/out`` started
    before ``new`` existed locked ``./.new__out.lock``, a second started after locked ``new/.out.lock``, and both
    wrote OUTDIR.  A second lock in the user's cache, named by the whole path, refuses the second; released, the
    directory is free again and no lock file stays."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = OutputLock(tmp_path / "new" / "out")
    try:
        (tmp_path / "new").mkdir()
        with pytest.raises(InputError, match="another ssodetect command is writing it"):
            OutputLock(tmp_path / "new" / "out")
    finally:
        first.release()
    again = OutputLock(tmp_path / "new" / "out")
    again.release()
    assert not list((tmp_path / "cache" / "ssodetect" / "locks").iterdir())
    assert not [p for p in tmp_path.rglob("*.lock")]


def test_evaluate_says_when_there_is_too_little_to_score(good_run, scene):
    """D6: with no mover bright enough or no 50 % point, ``evaluate`` printed "nan % of 0 movers" and "V = nan ...
    (difference +nan mag)".  It says what is missing instead; the numbers it has are printed as before."""
    from ssodetect.evaluate import evaluate_run, format_evaluation

    obs = Table.read(good_run.out / "observations.ecsv")
    truth = Table.read(scene / "truth.ecsv")
    text = format_evaluation(evaluate_run(obs[:0], truth, bright_limit=5.0))
    assert "nan" not in text, text
    assert "no mover that bright" in text and "50 % completeness: not reached" in text
    text = format_evaluation(evaluate_run(obs, truth))
    assert "nan" not in text and "% of" in text, text


class _Evil:
    def __reduce__(self):
        return (print, ("the pickle ran",))


def test_a_model_file_that_asks_for_code_is_refused_in_one_line(tmp_path, capsys):
    """D6: ``ml predict --model evil.pt`` (a plain pickle) printed torch's warning about its pickle protocol before
    the error: two lines.  Now the error alone (and the pickle does not run)."""
    pytest.importorskip("torch")
    import warnings

    from ssodetect.ml.model import load_model

    import pickle

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"arch": _Evil()}, protocol=4))  # (not torch.save's protocol: torch warns)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(InputError, match="not an ssodetect model"):
            load_model(path)
    assert not caught and "the pickle ran" not in capsys.readouterr().out


def test_evaluate_on_a_run_stopped_early_says_so(good_run, scene, tmp_path, capsys):
    """D6: ``evaluate`` on a run stopped with ``--to-step`` said "cannot read run observations ([Errno 2] ...)"
    where ``report`` says the run is not finished; now both say so."""
    out = tmp_path / "partial"
    res = cli(capsys, "run", scene, "--out", out, "--to-step", "link")
    assert res.code in (0, 1), res.err
    res = cli(capsys, "evaluate", out, scene / "truth.ecsv")
    assert res.code == 2 and res.errors == [f"ssodetect: error: {out}: not a finished ssodetect run "
                                            "(observations.ecsv is missing)"], res.err


def test_temporaries_named_like_unrecorded_files_of_ours_are_the_users(good_run, scene, tmp_path, capsys):
    """Campaign 19 D1: ``.model.pt.backup01.tmp`` in a run and ``logs/.complete.json.notes123.tmp`` were taken for
    temporaries of ours (names of files written before they are recorded) and went with the next run.  Those names
    count as ours only at the top of the directory that writes them (a training's, a batch field's run): the run
    refuses to replace OUTDIR, naming them, and leaves everything as it was."""
    for name in (".model.pt.backup01.tmp", "logs/.complete.json.notes123.tmp"):
        run = copy_run(good_run.out, tmp_path / name.replace("/", "_"))
        (run / name).write_text("mine")
        assert outputs.foreign_files(run) == [name]
        before = snapshot(run)
        res = cli(capsys, "run", scene, "--out", run)
        assert res.code == 2 and len(res.errors) == 1 and name in res.errors[0], res.err
        assert snapshot(run) == before
    assert outputs._leftover(".complete.json.ab12cd34.tmp", set(), good_run.out)  # a field's, killed writing it


def test_a_stack_grid_too_fine_is_refused_without_building_it(scene, tmp_path, capsys):
    """Campaign 19 D3: ``[stack] grid_fraction = 1e-300`` looped building the grid's rings until the memory ran out
    (before the count was checked).  The setting is bounded (exit 2), and the count is had in closed form beyond a
    million rings."""
    import time

    from ssodetect.stack.candidates import MAX_VELOCITIES
    from ssodetect.stack.search import velocity_count

    config = tmp_path / "c.toml"
    config.write_text("[stack]\nenabled = true\ngrid_fraction = 1e-300\n")
    res = cli(capsys, "run", scene, "--out", tmp_path / "o", "--config", config)
    assert res.code == 2 and len(res.errors) == 1 and "grid_fraction" in res.errors[0], res.err
    t0 = time.perf_counter()
    assert velocity_count(5.0, 100.0, 0.92, 1.7, exptime=0.157, fraction=1e-300) > MAX_VELOCITIES
    assert velocity_count(5.0, 100.0, 0.92, 1.7, exptime=0.0, fraction=1e-6) > MAX_VELOCITIES
    assert time.perf_counter() - t0 < 5.0
    assert velocity_count(5.0, 100.0, 0.92, 1.7, exptime=0.157, fraction=0.5) == 6668  # (the rings themselves)


def test_evaluate_refuses_a_users_evaluation_before_printing(good_run, scene, tmp_path, capsys):
    """Campaign 19: with the user's ``evaluation.ecsv`` in the run, ``evaluate`` printed the whole evaluation, then
    failed (exit 2).  It refuses first: one line, nothing printed, nothing written."""
    run = copy_run(good_run.out, tmp_path / "run")
    (run / "evaluation.ecsv").write_text("mine")
    before = snapshot(run)
    res = cli(capsys, "evaluate", run, scene / "truth.ecsv")
    assert res.code == 2 and len(res.errors) == 1 and "evaluation.ecsv: a file ssodetect did not write" in res.errors[0]
    assert res.out == [] and snapshot(run) == before


def test_a_cache_that_cannot_hold_the_second_lock_is_said(tmp_path, monkeypatch, caplog):
    """Campaign 19 D4: with ``$XDG_CACHE_HOME`` a file, the second lock was skipped at debug level: two commands on
    a directory whose parent appeared meanwhile could both run, and nothing said so.  It is a warning now."""
    (tmp_path / "cache").write_text("a file")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with caplog.at_level("WARNING", logger="ssodetect"):
        lock = OutputLock(tmp_path / "out")
        lock.release()
    assert "no lock in the user's cache" in caplog.text


def test_a_dead_stage_beside_a_complete_batch_field_is_removed(scene, tmp_path, capsys):
    """Campaign 19 D5: a batch killed in field f1 whose process was still visible when the resume looked left
    ``BATCH/.f1.stage-XXXXXXXX`` for good: once the field is complete no command looks at its stages again.  A later
    batch removes the dead stages of its complete fields (signed marker, process gone); a directory of the user's
    named like one stays."""
    manifest = tmp_path / "m.toml"
    manifest.write_text(f'[[field]]\nname = "f1"\ninputs = ["{scene}"]\n')
    out = tmp_path / "B"
    res = cli(capsys, "batch", manifest, "--out", out)
    assert res.code in (0, 1), res.err
    dead = out / ".f1.stage-ab12cd34"
    dead.mkdir(mode=0o700)
    (dead / STAGE_MARKER).write_text(outputs.stage_marker_text(dead, 2**22 + 7))
    (dead / "observations.ecsv").write_text("half written")
    mine = out / ".f1.stage-mine0001"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    res = cli(capsys, "batch", manifest, "--out", out)
    assert res.code in (0, 1), res.err
    assert not dead.exists() and (mine / "notes.txt").read_text() == "mine"


def test_a_directory_given_as_the_model_is_named_so(tmp_path):
    """Campaign 19 (wording): ``ml predict --model DIR`` said "model file not found" of a directory that exists."""
    pytest.importorskip("torch")
    from ssodetect.ml.model import load_model

    with pytest.raises(InputError, match="a directory, not a model file"):
        load_model(tmp_path)
