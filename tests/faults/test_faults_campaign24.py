"""Fault campaign 24 (about 50 cases on commit bbef3cf): the defects found, fixed and tested here."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from astropy.io import fits

from faultkit import cli, copy_run, snapshot
from ssodetect.config import Config, load_config
from ssodetect.errors import InputError
from ssodetect.io import scan_inputs
from ssodetect.io.outputs import RECORD, directory_kind


def test_a_folder_of_scores_is_never_replaced_by_another_command(good_run, tmp_path, capsys):
    """D1: ``ml predict --out sc/scores.ecsv`` then ``simulate sc`` (or ``run --out sc``) replaced the folder, the
    scores gone without a word: scores are no kind, and the folder's record made them look the new command's own.
    A folder holding another command's products of no kind is refused, the scores kept."""
    pytest.importorskip("torch")
    folder = tmp_path / "sc"
    res = cli(capsys, "ml", "predict", good_run.out, "--out", folder / "scores.ecsv")
    assert res.code == 0, res.err
    before = snapshot(folder)
    res = cli(capsys, "simulate", "--size", "128", "--n-exposures", "2", folder)
    assert res.code == 2 and res.errors == [
        f"ssodetect: error: {folder}: holds files another ssodetect command wrote (scores.ecsv), not a simulated "
        "scene, and would lose them; choose another output directory"], res.err
    assert snapshot(folder) == before


def test_scores_are_refused_deeper_inside_another_commands_directory_or_through_a_link(good_run, scene, tmp_path,
                                                                                       capsys):
    """D2: only the immediate parent's kind was checked (a run's ``logs/`` through a link, a scene's sub-folder):
    the scores landed there and the owner's next command was refused."""
    pytest.importorskip("torch")
    run = copy_run(good_run.out, tmp_path / "R")
    (run / "logs" / "deeper").mkdir()
    link = tmp_path / "lnk"
    os.symlink(run / "logs", link)
    before = snapshot(run)
    for target in (run / "logs" / "deeper" / "s.ecsv", link / "s.ecsv"):
        res = cli(capsys, "ml", "predict", run, "--out", target)
        assert res.code == 2 and "inside a run (" in res.errors[0], res.err
    assert snapshot(run) == before


def test_observer_positions_in_another_unit_on_every_frame_are_refused(tmp_path):
    """D3: positions in metres on every frame (7.15e6 "km" for a low orbit) gave ADES positions 1000x too large, with
    only a warning that suggested mixed units.  A path faster than a spacecraft moves is refused, naming both
    frames."""
    frames = []
    for k in range(3):
        phase = 2.0 * np.pi * k * 95.0 / 6000.0
        header = fits.Header()
        header["DATE-OBS"] = f"2021-11-12T23:{45 + k:02d}:{(50 + 35 * k) % 60:02d}"
        header["EXPTIME"] = 60.0
        for axis, value in zip("XYZ", 7.15e6 * np.array([np.cos(phase), np.sin(phase), 0.1])):
            header[f"OBSPOS_{axis}"] = float(value)
        path = tmp_path / f"f{k}.fits"
        fits.PrimaryHDU(np.zeros((16, 16), np.float32), header).writeto(path)
        frames.append(path)
    with pytest.raises(InputError, match=r"km/s; a spacecraft moves at most 100 km/s\): positions in another unit "
                                         r"than km\?"):
        scan_inputs(frames, Config().io)


def test_a_position_with_a_tiny_coordinate_and_an_unsigned_record(tmp_path):
    """D4: ``observer_position = [7000, 1e-12, 0]`` was refused as outside any sensible range (a coordinate's round-
    off); a record written by hand (not signed with the user's key) made its folder "a run"."""
    path = tmp_path / "c.toml"
    path.write_text("[report]\nobserver_position = [7000.0, 1e-12, 0.0]\n")
    assert load_config(path).report.observer_position == [7000.0, 1e-12, 0.0]
    user = tmp_path / "user"
    (user / "steps").mkdir(parents=True)
    (user / "steps" / "x.json").write_text("{}")
    (user / RECORD).write_text(json.dumps({"files": {"steps/x.json": "0" * 64}}))
    assert directory_kind(user) is None
