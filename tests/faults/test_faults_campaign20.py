"""Fault campaign 20 (about 135 cases on commit 5deb82a): the defects found, fixed and tested here."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from astropy.table import Table

from faultkit import cli, copy_run, snapshot, write_record
from ssodetect.config import load_config
from ssodetect.errors import ConfigError, InputError
from ssodetect.io.outputs import DIRECTORY_KINDS, check_directory_kind, directory_kind


def test_each_kind_of_output_directory_is_told_by_its_own_products(good_run, scene, tmp_path):
    """What a directory holds is told by names only one command writes: a run, a scene, a dataset, a model,
    calibration masters, astrometric solutions; an empty or foreign directory is of no kind."""
    assert directory_kind(good_run.out)[:2] == ("run", "a run")
    assert directory_kind(scene)[:2] == ("scene", "a simulated scene")
    for kind, _, names in DIRECTORY_KINDS:
        folder = tmp_path / kind
        folder.mkdir()
        (folder / names[0]).write_text("x")
        assert directory_kind(folder) is None  # (campaign 23: a name of the user's own tells nothing)
        write_record(folder, [names[0]])
        assert directory_kind(folder)[0] == kind
        check_directory_kind(folder, kind)  # its own kind: may be replaced
    (tmp_path / "empty").mkdir()
    assert directory_kind(tmp_path / "empty") is None and directory_kind(tmp_path / "missing") is None
    with pytest.raises(InputError, match=r"model: holds a trained model \(model.pt\), not a run, and would lose it"):
        check_directory_kind(tmp_path / "model", "run")


@pytest.mark.parametrize("command, said", [
    (["simulate", "--size", "200", "--n-exposures", "3"], "holds a run (manifest.json), not a simulated scene"),
    (["astrometry", "SCENE", "--refcat", "SCENE/refcat.ecsv", "--out"], "holds a run (manifest.json), not "
                                                                        "astrometric solutions"),
    (["ml", "dataset", "SCENE", "-n", "5", "--out"], "holds a run (manifest.json), not a training dataset"),
    (["batch", "SCENE", "--out"], "holds a run (manifest.json), not a batch of fields"),
])
def test_a_command_never_replaces_another_commands_run(good_run, scene, tmp_path, capsys, command, said):
    """D1: ``simulate``, ``astrometry`` and ``ml dataset`` replaced a run's directory as a whole (exit 0 or 1, the
    run gone without a word).  Refused first, in one line naming what the directory holds; nothing touched."""
    out = copy_run(good_run.out, tmp_path / "R")
    before = snapshot(out)
    argv = [str(scene) if a == "SCENE" else str(scene / "refcat.ecsv") if a == "SCENE/refcat.ecsv" else a
            for a in command]
    res = cli(capsys, *argv, out)
    assert res.code == 2 and res.errors == [f"ssodetect: error: {out}: {said}, and would lose it; choose another "
                                            "output directory"], res.err
    assert snapshot(out) == before


def test_a_run_never_replaces_a_scene_a_dataset_or_a_model(scene, tmp_path, capsys, monkeypatch):
    """D1: a run into a scene's directory, a dataset's or a trained model's deleted their files (the run's
    products replaced them).  Refused before any work; a training into a run's directory too (the run's next
    rerun had removed the model)."""
    from ssodetect.ml import train as train_module

    other = tmp_path / "S"
    shutil.copytree(scene, other)
    before = snapshot(other)
    res = cli(capsys, "run", scene, "--out", other)
    assert res.code == 2 and res.errors == [f"ssodetect: error: {other}: holds a simulated scene (truth.ecsv), not "
                                            "a run, and would lose it; choose another output directory"], res.err
    assert snapshot(other) == before
    model = tmp_path / "M"
    model.mkdir()
    (model / "model.pt").write_bytes(b"weights")
    write_record(model, ["model.pt"])
    res = cli(capsys, "run", scene, "--out", model)
    assert res.code == 2 and "holds a trained model (model.pt), not a run" in res.errors[0], res.err
    assert (model / "model.pt").read_bytes() == b"weights"
    run_dir = tmp_path / "R"
    run_dir.mkdir()
    (run_dir / "manifest.json").write_text("{}")
    write_record(run_dir, ["manifest.json"])
    with pytest.raises(InputError, match="holds a run \\(manifest.json\\), not a trained model"):
        train_module._check_out(run_dir, [tmp_path / "ds"])


def test_ml_predict_never_replaces_a_file_that_is_not_a_scores_table(good_run, scene, tmp_path, capsys):
    """D2: ``ml predict --out`` replaced the model it read, a scene's truth table or a frame (exit 0).  An existing
    file is replaced only when it is an earlier scores table; anything else is refused before the scoring."""
    pytest.importorskip("torch")
    out = copy_run(good_run.out, tmp_path / "R")
    sim = tmp_path / "S"
    shutil.copytree(scene, sim)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.ecsv").write_text("# %ECSV 1.0\n# ---\n# datatype:\n# - {name: a, datatype: int64}\na\n1\n")
    (mine / "frame.fits").write_bytes(b"SIMPLE  =                    T")
    before = snapshot(tmp_path)
    for target in (mine / "notes.ecsv", mine / "frame.fits"):
        res = cli(capsys, "ml", "predict", out, "--out", target)
        assert res.code == 2 and res.errors == [
            f"ssodetect: error: --out {target}: an existing file that is not a scores table of ml predict (a model, a "
            "frame, another command's table: never replaced by scores); give another file name"], res.err
    # campaign 21 (D2): nor a new file inside a scene's (or a dataset's) folder, which its next command replaces
    for target in (sim / "truth.ecsv", sim / "scores.ecsv"):
        res = cli(capsys, "ml", "predict", out, "--out", target)
        assert res.code == 2 and res.errors == [
            f"ssodetect: error: --out {target}: inside a simulated scene ({sim}), which its command replaces as a "
            "whole, the scores with it; write the scores elsewhere"], res.err
    assert snapshot(tmp_path) == before
    scores = tmp_path / "scores.ecsv"
    for _ in range(2):  # written, then replaced by the same command
        res = cli(capsys, "ml", "predict", out, "--out", scores)
        assert res.code == 0, res.err
    assert "ml_score" in Table.read(scores).colnames


def test_the_launch_form_takes_no_command_address_or_file_setting(tmp_path):
    """D3: the form's settings came from the whole configuration schema: ``cfg.alerts.command`` posted to /launch
    ran a shell command as the console's user, and path settings reached outside the root.  Those settings are
    neither shown nor taken (posted, they are refused: campaign 34, they had been ignored without a word); every text
    setting is classified (a new one fails here until it is); the profile is chosen among the built-in ones."""
    pytest.importorskip("starlette")
    from ssodetect.console.form import OFF_THE_FORM, TEXT_ON_THE_FORM, form_overrides, settings_from_schema
    from ssodetect.profiles import builtin_profiles

    sections = settings_from_schema()
    shown = {f"{s.section}.{s.key}": s for section in sections for s in section.settings}
    assert not set(shown) & OFF_THE_FORM
    text = {name for name, s in shown.items() if s.kind in ("str", "list-str")}
    assert text == set(TEXT_ON_THE_FORM), text ^ set(TEXT_ON_THE_FORM)
    assert shown["profile.name"].kind == "enum"
    assert set(shown["profile.name"].choices) == {"auto", "none", *builtin_profiles()}
    for key, value in (("alerts.command", "/bin/sh,-c,id"), ("alerts.url", "http://evil.example/x"),
                       ("known.orbits", "/etc/passwd"), ("execution.scheduler", "tcp://evil.example:8786")):
        with pytest.raises(ValueError, match=f"{key}: kept off the form"):
            form_overrides(sections, {f"cfg.{key}": value, "cfg.detect.threshold": "5.0"})
    assert form_overrides(sections, {"cfg.detect.threshold": "5.0"}) == {"detect": {"threshold": 5.0}}
    with pytest.raises(ValueError, match="profile.name = '/tmp/evil.toml': one of auto, none"):
        form_overrides(sections, {"cfg.profile.name": "/tmp/evil.toml"})


def test_a_console_without_a_token_answers_to_its_loopback_address_only(tmp_path):
    """D3 (DNS rebinding): a page of another site that a browser resolved to 127.0.0.1 could read the launch form's
    CSRF token and post to it.  A console without a token refuses a request naming another host; with a token, the
    token decides."""
    pytest.importorskip("starlette")
    pytest.importorskip("httpx2")
    from starlette.testclient import TestClient

    from ssodetect.console.app import create_app

    root = tmp_path / "root"
    root.mkdir()
    for base, status in (("http://127.0.0.1:8765", 200), ("http://localhost:8765", 200), ("http://[::1]:8765", 200),
                         ("http://evil.example:8765", 403), ("http://127.0.0.1.evil.example", 403)):
        with TestClient(create_app(root, start_workers=False), base_url=base) as client:
            assert client.get("/launch").status_code == status, base
    with TestClient(create_app(root, token="s3cret", start_workers=False), base_url="http://sso.example") as client:
        assert client.get("/launch").status_code == 401
        assert client.get("/launch?token=s3cret").status_code == 200


@pytest.mark.parametrize("labels, said", [([0.0] * 10, "0 mover and 10 negative"), ([1.0] * 9 + [0.0], "9 mover and 1 "
                                                                                                      "negative")])
def test_ml_train_refuses_a_dataset_of_one_class(tmp_path, monkeypatch, labels, said):
    """D4: a training on negatives alone printed "accuracy 1.0000, ROC AUC nan" and wrote a model that says "no
    mover" to everything (exit 0).  Fewer than MIN_PER_CLASS sequences of a class are refused, nothing written."""
    pytest.importorskip("torch")
    from ssodetect.ml import train as train_module

    monkeypatch.setattr(train_module, "_load_all", lambda paths: (np.zeros((len(labels), 1)),
                                                                  Table({"label": labels}), {}))
    monkeypatch.setattr(train_module, "_check_out", lambda out, datasets: None)
    with pytest.raises(InputError, match=f"{said} sequence\\(s\\): a classifier needs at least 2 of each"):
        train_module.train([tmp_path / "ds"], tmp_path / "model")
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("toml, said", [
    ('[alerts]\nurl = "http://"\n', "alerts.url: 'http://' is no http(s) URL with a host"),
    ('[alerts]\ncommand = [""]\n', "alerts.command: the command's first item, the program to run, is empty"),
    ('[io]\nexptime_keys = [""]\n', "io.exptime_keys: '' is no FITS keyword"),
    ('[io]\ndetector_keys = ["NOT A KEY AT ALL"]\n', "io.detector_keys: 'NOT A KEY AT ALL' is no FITS keyword"),
])
def test_settings_that_can_never_work_are_refused_when_the_file_is_read(tmp_path, toml, said):
    """D5: an alert URL without a host or an empty command failed only after the whole run (exit 1); a header
    keyword no header can hold was accepted and silently read nothing.  Refused at load, naming file and key."""
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(str(path)) and said in str(caught.value), str(caught.value)


def test_a_step_that_cannot_be_reused_names_the_setting_that_changed(scene, tmp_path, capsys):
    """D6: ``--from-step astrometry --keep-intermediate`` after a run without it said "its version, configuration or
    inputs changed", with nothing to tell that keeping intermediates was the change.  The setting is named."""
    out = tmp_path / "o"
    res = cli(capsys, "run", scene, "--out", out, "--refcat", scene / "refcat.ecsv", "--to-step", "detect")
    assert res.code in (0, 1), res.err
    record = json.loads((out / "steps" / "detect.json").read_text())
    assert record["config"]["intermediate"]["keep"] is False and isinstance(record["upstream"], dict)
    res = cli(capsys, "run", scene, "--out", out, "--refcat", scene / "refcat.ecsv", "--from-step", "astrometry",
              "--keep-intermediate")
    assert res.code == 2 and res.errors == [
        f"ssodetect: error: {out}: cannot start at step astrometry: step detect: changed since its products were "
        "stored: the settings intermediate.keep (run from an earlier step)"], res.err


def test_watch_says_what_it_skips_in_words_that_fit(scene, tmp_path, capsys):
    """D7: an empty visit folder was "1 file(s) unreadable (being written, or broken)" naming the folder; a folder
    ``-v2`` was refused by a rule ("letters, digits, . _ -") its name satisfies; ``--once`` with nothing to run
    printed "0 visit(s) run: "."""
    from ssodetect.console.watch import Watcher

    inbox, root = tmp_path / "inbox", tmp_path / "root"
    (inbox / "empty").mkdir(parents=True)
    (inbox / "-v2").mkdir()
    shutil.copy(next(scene.glob("exp_*.fits")), inbox / "-v2")
    root.mkdir()
    watcher = Watcher(inbox, root, exposures=3, settle=0.0, timeout=600.0)
    assert watcher.check() == []
    assert watcher.waiting == {"empty": "0 of 3 exposures"}, watcher.waiting
    assert watcher.warned == [f"{str(inbox / '-v2')!r}: a visit folder's name must be up to 100 letters, digits, '.', "
                              "'_' and '-', the first a letter or a digit (it names the run's directory): skipped"]
    res = cli(capsys, "watch", inbox, "--root", root, "--once", "--exposures", "3", "--settle", "0")
    assert res.code == 1 and res.out == ["no complete visit to run"], res.out
