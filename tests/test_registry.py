"""The SQLite run registry: rows from the runs' own manifests, newest first, kept in step with the directories."""
from __future__ import annotations

import json
import sqlite3

import pytest

from faultkit import copy_run
from ssodetect.cli import main
from ssodetect.errors import InputError
from ssodetect.pipeline.registry import REGISTRY_NAME, SCHEMA_VERSION, Registry


def _edit(run, **changes):
    path = run / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))
    return manifest


@pytest.fixture()
def root(good_run, tmp_path):
    """Three copies of the session's run (one a level deeper), dated apart; a partial run; a foreign manifest.json."""
    root = tmp_path / "root"
    for k, rel in enumerate(["night1", "deep/night2", "night3"]):
        run = copy_run(good_run.out, root / rel)
        _edit(run, started_utc=f"2026-01-0{k + 1}T00:00:00+00:00", finished_utc=f"2026-01-0{k + 1}T00:01:40+00:00",
              obs_id=f"OBS{k + 1}", run_id=f"run{k + 1}")
    partial = copy_run(good_run.out, root / "partial")
    manifest = _edit(partial, started_utc="2026-01-05T00:00:00+00:00", run_id="run5")
    _edit(partial, steps=[s for s in manifest["steps"] if s["step"] != "report"])
    (root / "other").mkdir()
    (root / "other" / "manifest.json").write_text('{"name": "a web app"}')
    return root


def test_runs_listed_newest_first_searched_and_kept_in_step(root, good_run):
    with Registry(root) as reg:
        counts = reg.sync()
        assert counts == {"added": 4, "updated": 0, "removed": 0, "unchanged": 0, "unreadable": 1, "damaged": 0}
        rows = reg.runs()
        assert [r["outdir"] for r in rows] == ["partial", "night3", "deep/night2", "night1"]
        assert [r["status"] for r in rows] == ["partial", "complete", "complete", "complete"]
        truth = json.loads((good_run.out / "manifest.json").read_text())["results"]
        assert rows[1]["n_objects"] == truth["n_objects"] and rows[1]["duration_s"] == pytest.approx(100.0)
        assert [r["outdir"] for r in reg.runs(search="obs2")] == ["deep/night2"]
        assert [r["outdir"] for r in reg.runs(status="complete", limit=1)] == ["night3"]
        # a run removed, another rerun (its manifest rewritten): the next sync follows
        (root / "night1" / "manifest.json").unlink()
        _edit(root / "night3", obs_id="RERUN")
        assert reg.sync() == {"added": 0, "updated": 1, "removed": 1, "unchanged": 2, "unreadable": 1, "damaged": 0}
        assert [r["obs_id"] for r in reg.runs()] == ["", "RERUN", "OBS2"]
        assert reg.rebuild()["added"] == 3 and reg.count() == 3


def test_registry_schema_is_versioned_and_a_foreign_file_is_refused(root):
    with Registry(root) as reg:
        reg.sync()
    db = sqlite3.connect(root / REGISTRY_NAME)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(InputError, match="newer than this version"):
        Registry(root)
    (root / REGISTRY_NAME).write_bytes(b"not a database at all" * 100)
    with pytest.raises(InputError, match="not a run registry"):
        Registry(root)


def test_runs_command(root, capsys, tmp_path, monkeypatch):
    """``runs ROOT`` lists without writing into ROOT (a campaign found its registry written there): the index of a
    ROOT that holds none is kept in the user's cache; a console's or watcher's registry in ROOT is used."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    assert main(["runs", str(root), "-q"]) == 0
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    assert len(list((tmp_path / "cache" / "ssodetect" / "registries").glob("*.sqlite"))) == 1
    # a cache that cannot be written (a read-only home): the index lives for the call only, ROOT still untouched
    (tmp_path / "blocked").write_text("a file, not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "blocked"))
    assert main(["runs", str(root), "-q"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "4 of 4 runs"
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert main(["runs", str(root), "-q"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("started (UTC)") and out[1].split()[1] == "partial" and out[-1] == "4 of 4 runs"
    assert main(["runs", str(root), "--json", "--search", "OBS1", "-q"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["run_id"] for r in rows] == ["run1"]
    assert main(["runs", str(root / "missing"), "-q"]) == 2
    assert main(["runs", str(root), "--limit", "0", "-q"]) == 2
    # a terminal escape in a manifest is not printed raw
    manifest = json.loads((root / "night1" / "manifest.json").read_text())
    manifest["obs_id"] = "\x1b[2J\x1b[31mEVIL"
    (root / "night1" / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(["runs", str(root), "-q"]) == 0
    assert "\x1b" not in capsys.readouterr().out
    # a console's registry in ROOT is the one used; damaged: one line, exit 2 (and removed, it is rebuilt)
    with Registry(root) as reg:
        reg.sync()
    path = root / REGISTRY_NAME
    data = bytearray(path.read_bytes())
    data[len(data) // 2:len(data) // 2 + 2000] = bytes(range(256)) * 7 + bytes(208)
    path.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["runs", str(root), "-q"]) == 2
    assert "remove it to rebuild it" in capsys.readouterr().err
    path.unlink()
    assert main(["runs", str(root), "-q"]) == 0


def test_a_run_that_would_end_before_it_began_has_no_duration(root):
    """Campaign 32 (wording): a hand-edited manifest finished before it started; ``runs`` showed a negative duration."""
    _edit(root / "night1", finished_utc="2025-12-31T00:00:00+00:00")
    with Registry(root) as reg:
        reg.sync()
        durations = {r["outdir"]: r["duration_s"] for r in reg.runs()}
    assert durations["night1"] is None and durations["night3"] == pytest.approx(100.0)
