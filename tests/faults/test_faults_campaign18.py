"""Fault campaign 18 and the hardening left from campaign 17: the defects found, fixed and tested here."""
from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from ssodetect.errors import InputError
from ssodetect.io.outputs import OutputLock


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

    from faultkit import cli, copy_run
    from ssodetect.io import outputs

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
