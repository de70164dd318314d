"""Fault campaign 16 (about 180 cases on commit 172a4fe): the defects found, fixed and tested here."""
from __future__ import annotations

import os

import pytest

from faultkit import Killed, cli, copy_run, snapshot
from ssodetect.io import outputs


@pytest.mark.parametrize("args, said", [
    (("--dither", "inf"), "dither: Input should be a finite number"),
    (("--dither", "1e30"), "dither: Input should be less than or equal to 3600"),
    (("--star-density", "1e12"), "--star-density: Input should be less than or equal to 10000000"),
    (("--known-orbits", "nope.dat"), "known_orbits and known_count go together"),
    (("--known-count", "2"), "known_orbits and known_count go together"),
])
def test_simulate_refuses_what_it_cannot_make(tmp_path, capsys, args, said):
    """D1-D3: an infinite or huge dither was an internal error (exit 3), a star density of 1e12 ran out of memory,
    and one of the two known-object options without the other placed none with exit 0.  Each is a one-line error
    (exit 2) before anything is written."""
    res = cli(capsys, "simulate", tmp_path / "s", "--size", 128, *args)
    assert res.code == 2 and len(res.errors) == 1 and said in res.errors[0], res.err
    assert "Value error" not in res.errors[0] and "(: " not in res.errors[0]
    assert not (tmp_path / "s").exists()


def test_a_kill_between_the_moves_of_a_report_leaves_a_run_every_command_takes(scene, good_run, tmp_path, capsys,
                                                                               monkeypatch, caplog):
    """D4: ``report`` moves its files into the run one by one and signed the record only after: killed between the
    moves, the run held files the record did not vouch for (``manifest.json``, ``report.html``) and a stage folder,
    and ``run`` and ``report`` both refused it until the user deleted files.  The record is signed first, each file
    ours as it was or as it is to be; the next ``report`` completes it, tidies the stage, and ``run``
    replaces the run.  D5: a report no longer says the run's own files 'changed since ssodetect wrote them'."""
    run = copy_run(good_run.out, tmp_path / "run")
    real = os.replace
    moved = []

    def replace(src, dst):
        if moved:
            raise Killed
        moved.append(dst)
        return real(src, dst)

    monkeypatch.setattr(outputs.os, "replace", replace)
    with pytest.raises(Killed):
        cli(capsys, "report", run)
    monkeypatch.setattr(outputs.os, "replace", real)
    stages = [p.name for p in run.iterdir() if p.name.startswith(".ssodetect.stage-")]
    assert len(moved) == 1 and len(stages) == 1
    # the products, moved or not, are all vouched for: only the dead command's stage is not (tidied next time)
    assert all(name.startswith(stages[0] + "/") for name in outputs.foreign_files(run, limit=100))
    with_stage = snapshot(run)
    with caplog.at_level("INFO", logger="ssodetect"):
        res = cli(capsys, "report", run)
    assert res.code in (0, 1) and not res.errors, res.err  # (exit 1: the scene's report warnings)
    assert not any(p.name.startswith(".ssodetect.stage-") for p in run.iterdir())
    assert "changed since ssodetect wrote them" not in caplog.text
    assert snapshot(run) != with_stage and outputs.foreign_files(run) == []
    res = cli(capsys, "run", scene, "--out", run)
    assert res.code in (0, 1) and not res.errors, res.err
