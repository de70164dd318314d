"""Fault campaign 14 (the whole CLI on the previous stop's commit, about 250 cases): the defects found, fixed and
tested here (D1, D2, D8 in tests/test_ml.py; D3 in tests/faults/test_faults_campaign10.py)."""
from __future__ import annotations

import sqlite3

import pytest

from faultkit import cli, copy_run, snapshot
from ssodetect.errors import InputError
from ssodetect.pipeline.registry import REGISTRY_NAME, Registry

#: (1) Ceres in MPCORB.DAT form (as in tests/test_known.py).
CERES = ("00001    3.4   0.15 K205V 162.68631   73.73161   80.28698   10.58862  0.0775571  0.21406009"
         "   2.7676569  0 MPO492748  6751 115 1801-2019 0.60 M-v 30h Williams   0000      (1) Ceres"
         "              20190915")


def test_orbit_lines_that_hold_no_orbit_and_impossible_elements_are_said(tmp_path, caplog):
    """D4: an MPCORB line damaged in its mean anomaly (or cut short) was skipped in silence; a negative semi-major
    axis on an ellipse was taken, and its positions were NaN."""
    from ssodetect.known import read_orbits

    damaged = CERES[:26] + "xxxxxxxxx" + CERES[35:]
    negative = CERES[:92] + "-2.7676569" + CERES[102:]
    path = tmp_path / "o.dat"
    path.write_text("MPCORB header text\n" + "-" * 160 + "\n" + "\n".join([CERES, damaged, CERES[:80], negative, ""])
                    + "\n")
    with caplog.at_level("WARNING"):
        table = read_orbits(path)
    assert len(table) == 1 and str(table["designation"][0]) == "(1) Ceres"
    assert "o.dat: 2 line(s) that hold no MPCORB orbit (damaged or cut short) left out (first: line 4)" in caplog.text
    assert "o.dat: 1 of 2 orbits without usable elements (q > 0, e >= 0" in caplog.text
    # a header's text is no data line
    caplog.clear()
    path.write_text("MPCORB header text\nmore text\n" + "-" * 160 + "\n" + CERES + "\n")
    with caplog.at_level("WARNING"):
        assert len(read_orbits(path)) == 1
    assert "hold no MPCORB orbit" not in caplog.text


@pytest.mark.parametrize("damage, said", [
    ("DROP TABLE runs; CREATE TABLE runs (x INTEGER)", "its table runs lacks outdir"),
    ("DROP TABLE jobs", "its table jobs is missing"),
])
def test_a_registry_with_damaged_tables_is_refused_in_one_line(good_run, tmp_path, capsys, damage, said):
    """D5: a registry whose tables were dropped or remade was an internal error (exit 3) in ``runs`` and a traceback
    in ``serve``; now one line naming it, exit 2."""
    root = tmp_path / "root"
    copy_run(good_run.out, root / "night")
    with Registry(root) as reg:
        reg.sync()
    db = sqlite3.connect(root / REGISTRY_NAME)
    db.executescript(damage)
    db.close()
    before = snapshot(root)
    outcome = cli(capsys, "runs", root)
    assert outcome.code == 2 and len(outcome.errors) == 1, outcome.err
    assert REGISTRY_NAME in outcome.errors[0] and said in outcome.errors[0] and "remove it" in outcome.errors[0]
    with pytest.raises(InputError, match=said):
        Registry(root)
    assert snapshot(root) == before


def test_a_registry_holding_text_where_numbers_belong_lists_them_as_unknown(good_run, tmp_path, capsys):
    """D5: ``n_objects = 'abc'`` in an edited registry was an internal error in ``runs`` and printed as a value in
    ``runs --json``."""
    import json

    root = tmp_path / "root"
    copy_run(good_run.out, root / "night")
    with Registry(root) as reg:
        reg.sync()
    db = sqlite3.connect(root / REGISTRY_NAME)
    db.execute("UPDATE runs SET n_objects = 'abc', duration_s = 'zz'")
    db.commit()
    db.close()
    outcome = cli(capsys, "runs", root)
    assert outcome.code == 0, outcome.err
    assert "night" in outcome.out[1] and " - " in outcome.out[1]
    outcome = cli(capsys, "runs", root, "--json")
    row = json.loads(outcome.out[0])
    assert row["n_objects"] is None and row["duration_s"] is None


def test_a_report_without_its_cutouts_says_the_stamps_are_missing(good_run, tmp_path, capsys, caplog):
    """D6: ``report`` on a run whose cutouts.fits was gone redrew the page without the stamps, exit 0, no word."""
    out = copy_run(good_run.out, tmp_path / "run")
    (out / "cutouts.fits").unlink()
    with caplog.at_level("WARNING"):
        outcome = cli(capsys, "report", out)
    assert outcome.code == 1, outcome.err
    assert "cutouts.fits: absent, so the report page shows no stamps" in caplog.text


def test_an_unusable_cache_key_is_named_not_the_output_directory(good_run, scene, tmp_path, capsys, monkeypatch):
    """D7: a cache key of mode 0644 made a rerun into an earlier run's directory fail with "not signed with your key
    (written by another user...)", blaming the directory; the message names the key."""
    out = copy_run(good_run.out, tmp_path / "out")
    key = tmp_path / "key" / "cache.key"
    key.parent.mkdir()
    import os
    from pathlib import Path

    key.write_bytes(Path(os.environ["SSODETECT_CACHE_KEY"]).read_bytes())
    key.chmod(0o644)
    monkeypatch.setenv("SSODETECT_CACHE_KEY", str(key))
    before = snapshot(out)
    outcome = cli(capsys, "run", scene, "--out", out)
    assert outcome.code == 2 and len(outcome.errors) == 1, outcome.err
    assert f"your cache key {key} is not usable now" in outcome.errors[0]
    assert snapshot(out) == before


def test_serve_refuses_a_scheduler_nothing_listens_on(tmp_path, capsys):
    """D9: ``serve --scheduler tcp://127.0.0.1:1`` started (every run launched from it then failed), where ``run``
    refuses that address at once."""
    pytest.importorskip("starlette")
    outcome = cli(capsys, "serve", "--root", tmp_path, "--scheduler", "tcp://127.0.0.1:1")
    assert outcome.code == 2 and len(outcome.errors) == 1, outcome.err
    assert "dask scheduler tcp://127.0.0.1:1: cannot connect" in outcome.errors[0]
