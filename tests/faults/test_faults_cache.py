"""Fault injection into the step cache (OUT/steps/<name>.pkl + .json): a pickle is unpickled only when its HMAC
under the user's key matches its record.  Before that, the products record (signed with the same key) decides
what in OUT is ssodetect's: a tampered, replayed or damaged cache file is not, so a run refuses OUT without
loading anything; moved away, the step is computed again.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import pickle
import shutil

import pytest

from faultkit import cli, copy_run, files, leftovers, recorded, snapshot

from ssodetect.pipeline import run_pipeline


class _Evil:
    """Unpickling it creates the directory ``path`` (standing for any code an attacker would run)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def _evil_pickle(marker) -> bytes:
    payload = pickle.dumps({"sources": _Evil(marker)}, protocol=pickle.HIGHEST_PROTOCOL)
    pickle.loads(payload)  # the payload is live: loading it does run the attacker's call
    assert marker.is_dir()
    marker.rmdir()
    return payload


def _plant(out, step: str, payload: bytes, hmac_mode: str, key_path) -> dict:
    """Replace OUT/steps/<step>.pkl by ``payload`` and update its record the way an attacker who can write OUT
    but cannot read the user's key would."""
    pkl, rec = out / "steps" / f"{step}.pkl", out / "steps" / f"{step}.json"
    pkl.write_bytes(payload)
    record = json.loads(rec.read_text())
    record["sha256"] = hashlib.sha256(payload).hexdigest()
    record["bytes"] = len(payload)
    context = f"{step}:{record['key']}".encode() + b"\0"
    if hmac_mode == "forged with a guessed key":
        record["hmac"] = hmac.new(b"\0" * 32, context + payload, hashlib.sha256).hexdigest()
    elif hmac_mode == "forged with the record's own key field":
        record["hmac"] = hmac.new(record["key"].encode(), context + payload, hashlib.sha256).hexdigest()
    elif hmac_mode == "removed":
        del record["hmac"]
    elif hmac_mode == "null":
        record["hmac"] = None
    elif hmac_mode == "a number":
        record["hmac"] = 0
    elif hmac_mode == "a list":
        record["hmac"] = [record["hmac"]]
    else:
        assert hmac_mode == "kept"
    rec.write_text(json.dumps(record))
    return record


HMAC_MODES = ["kept", "forged with a guessed key", "forged with the record's own key field", "removed", "null",
              "a number", "a list"]


#: (step, how the record's signature is handled); astrometry is the cheapest cached step to compute again.
PLANTS = [("astrometry", mode) for mode in HMAC_MODES] + [("occupancy", "kept")]


def _refused_untouched(outcome, out, before, names) -> None:
    """The run refused OUT (exit 2, one line naming it and the changed files) and left it exactly as it was."""
    assert outcome.code == 2 and len(outcome.errors) == 1, outcome.err
    assert str(out) in outcome.errors[0] and "did not write" in outcome.errors[0], outcome.errors
    assert all(name in outcome.errors[0] for name in names), outcome.errors
    assert snapshot(out) == before and leftovers(out) == []


def _load(out, step: str):
    """The step cache's own check of OUT/steps/<step>.pkl (the second guard, behind the products record)."""
    from ssodetect.pipeline.steps import StepCache

    key = json.loads((out / "steps" / f"{step}.json").read_text())["key"]
    return StepCache(out, None).load(step, key)


@pytest.mark.parametrize("step, hmac_mode", PLANTS)
def test_malicious_step_pickle_is_never_unpickled(good_run, scene, tmp_path, capsys, _cache_key, step, hmac_mode):
    """A pickle planted with its cache record updated: the products record (signed with the user's key) no longer
    vouches for either file, so the run refuses OUT before loading anything; the step cache's own signature check
    refuses it too.  Once the user moves the two files away, the step is computed again."""
    out = copy_run(good_run.out, tmp_path / "out")
    marker = tmp_path / "PWNED"
    payload = _evil_pickle(marker)
    _plant(out, step, payload, hmac_mode, _cache_key)
    before = snapshot(out)
    outcome = cli(capsys, "run", scene, "--out", out)
    assert not marker.exists(), "the planted pickle was unpickled"
    _refused_untouched(outcome, out, before, [f"steps/{step}.pkl", f"steps/{step}.json"])
    products, why = _load(out, step)
    assert products is None and "not signed" in why and not marker.exists(), why
    for suffix in ("pkl", "json"):
        (out / "steps" / f"{step}.{suffix}").unlink()
    outcome = cli(capsys, "run", scene, "--out", out)
    assert outcome.code == 1 and outcome.errors == [], outcome.err
    steps = outcome.steps()
    assert steps[step] == "run", steps  # computed again
    others = {"detect", "astrometry", "link", "occupancy"} - {step}
    assert {steps[s] for s in others} == {"cached"}, steps  # their own pickles verify
    assert files(out) == files(good_run.out) == recorded(out) and leftovers(out) == []
    outcome = cli(capsys, "run", scene, "--out", out)  # and the new one is loaded by the next run
    assert outcome.steps()[step] == "cached" and not marker.exists()


@pytest.mark.parametrize("step", ["detect", "link"])
def test_malicious_pickle_with_from_step_is_refused_without_loading(good_run, scene, tmp_path, capsys, _cache_key,
                                                                    step):
    """``--from-step occupancy`` must load the earlier steps: OUT holding a planted one is refused (exit 2, naming
    it), nothing is unpickled, and OUT stays as it was."""
    out = copy_run(good_run.out, tmp_path / "out")
    marker = tmp_path / "PWNED"
    _plant(out, step, _evil_pickle(marker), "kept", _cache_key)
    before = snapshot(out)
    outcome = cli(capsys, "run", scene, "--out", out, "--from-step", "occupancy")
    assert not marker.exists()
    _refused_untouched(outcome, out, before, [f"steps/{step}.pkl"])


def test_genuine_pickle_replayed_under_another_steps_name_is_not_loaded(good_run, scene, tmp_path, capsys):
    """A signed pickle and its signature moved from one step to another: the products record no longer vouches for
    the files (refused), and the cache signature covers the step's name and key, so it does not verify there."""
    out = copy_run(good_run.out, tmp_path / "out")
    steps = out / "steps"
    shutil.copy(steps / "occupancy.pkl", steps / "astrometry.pkl")
    record = json.loads((steps / "astrometry.json").read_text())
    donor = json.loads((steps / "occupancy.json").read_text())
    record.update(sha256=donor["sha256"], hmac=donor["hmac"], bytes=donor["bytes"])
    (steps / "astrometry.json").write_text(json.dumps(record))
    before = snapshot(out)
    outcome = cli(capsys, "run", scene, "--out", out)
    _refused_untouched(outcome, out, before, ["steps/astrometry.pkl"])
    products, why = _load(out, "astrometry")
    assert products is None and "not signed" in why, why


#: damage to OUT/steps/astrometry.*: the files it leaves changed (refused until moved away; none: recomputed at once)
DAMAGES = {"pickle truncated": ["pkl"], "pickle empty": ["pkl"], "pickle is a link to another file": ["pkl"],
           "record not JSON": ["json"], "record empty list": ["json"], "record a number": ["json"],
           "record missing": []}


def _damage(out, damage: str) -> None:
    pkl, rec = out / "steps" / "astrometry.pkl", out / "steps" / "astrometry.json"
    if damage == "pickle truncated":
        pkl.write_bytes(pkl.read_bytes()[:100])
    elif damage == "pickle empty":
        pkl.write_bytes(b"")
    elif damage == "pickle is a directory":
        pkl.unlink()
        pkl.mkdir()
    elif damage == "pickle is a link to another file":
        pkl.unlink()
        pkl.symlink_to(out / "steps" / "link.pkl")
    elif damage == "record not JSON":
        rec.write_text("{")
    elif damage == "record empty list":
        rec.write_text("[]")
    elif damage == "record a number":
        rec.write_text("3")
    else:
        rec.unlink()


@pytest.mark.parametrize("damage", list(DAMAGES) + ["pickle is a directory"])
def test_damaged_cache_entry_is_refused_then_recomputed(good_run, scene, tmp_path, capsys, damage):
    """A changed cache file is not ssodetect's any more (it might be the user's): the run refuses OUT, naming it,
    and touches nothing; moved away, the step is computed again.  A missing record only makes the step run."""
    out = copy_run(good_run.out, tmp_path / "out")
    _damage(out, damage)
    changed = [f"steps/astrometry.{suffix}" for suffix in DAMAGES.get(damage, [])]
    if damage == "pickle is a directory":  # a directory of the user's where our file was: refused, named
        before = snapshot(out)
        outcome = cli(capsys, "run", scene, "--out", out)
        _refused_untouched(outcome, out, before, ["steps/astrometry.pkl"])
        (out / "steps" / "astrometry.pkl").rmdir()
    elif changed:
        before = snapshot(out)
        outcome = cli(capsys, "run", scene, "--out", out)
        _refused_untouched(outcome, out, before, changed)
        for name in changed:
            (out / name).unlink()
    outcome = cli(capsys, "run", scene, "--out", out)
    assert outcome.code == 1 and outcome.errors == [], outcome.err
    assert outcome.steps()["astrometry"] == "run" and outcome.steps()["link"] == "cached", outcome.out
    pkl = out / "steps" / "astrometry.pkl"
    assert pkl.is_file() and not pkl.is_symlink()
    assert files(out) == files(good_run.out) == recorded(out) and leftovers(out) == []


def test_products_signed_under_another_key_are_not_loaded(good_run, scene, tmp_path, quiet_config, monkeypatch):
    """Another user's cache key (or a new one): the earlier run's directory is not taken as theirs (its products
    record does not verify: refused, untouched, nothing loaded); their own runs are signed and reused."""
    from ssodetect.errors import InputError

    out = copy_run(good_run.out, tmp_path / "out")
    before = snapshot(out)
    monkeypatch.setenv("SSODETECT_CACHE_KEY", str(tmp_path / "keys" / "other.key"))
    with pytest.raises(InputError, match="not signed with your key"):
        run_pipeline([scene], out, quiet_config, to_step="astrometry")
    assert snapshot(out) == before
    assert (tmp_path / "keys" / "other.key").stat().st_size >= 32  # created for the new user
    assert oct((tmp_path / "keys" / "other.key").stat().st_mode & 0o777) == "0o600"
    mine = tmp_path / "mine"
    # up to astrometry: the two cached steps before the (slow) linking tell the story
    result = run_pipeline([scene], mine, quiet_config, to_step="astrometry")
    status = {r["step"]: r["status"] for r in result.steps}
    assert status["detect"] == "run" and status["astrometry"] == "run", status
    assert files(mine) == recorded(mine) and leftovers(mine) == []
    again = run_pipeline([scene], mine, quiet_config, to_step="astrometry")  # signed under the new key: loaded
    status = {r["step"]: r["status"] for r in again.steps}
    assert status["detect"] == "cached" and status["astrometry"] == "cached", status


@pytest.mark.parametrize("problem", ["too short", "a directory", "below a file", "world-writable", "a dangling link"])
def test_unusable_cache_key_warns_and_the_run_goes_on(scene, tmp_path, capsys, monkeypatch, problem):
    """(The fifth campaign's D7: a dangling link as the key was a RecursionError, exit 3.)"""
    key = tmp_path / "cache.key"
    if problem == "a dangling link":
        key.symlink_to(tmp_path / "nowhere" / "k")
    elif problem == "too short":
        key.write_bytes(b"12345")
    elif problem == "a directory":
        key.mkdir()
    elif problem == "world-writable":  # anyone could put their own key there and sign a pickle with it
        key.write_bytes(os.urandom(32))
        key.chmod(0o666)
    else:
        (tmp_path / "file").write_text("x")
        key = tmp_path / "file" / "cache.key"
    monkeypatch.setenv("SSODETECT_CACHE_KEY", str(key))
    out = tmp_path / "out"
    outcome = cli(capsys, "run", scene, "--out", out, "--to-step", "detect")
    assert outcome.code == 1 and outcome.errors == [], outcome.err
    said = [line for line in outcome.warnings if str(key) in line and "not be reused" in line]
    assert len(said) == 1, outcome.warnings  # once, though each step consults the key (sixth campaign: twice)
    assert "detect run" in " ".join(outcome.out), outcome.out
    assert {"steps/detect.pkl", "steps/detect.json"} <= files(out) and files(out) == recorded(out)
    # a key that dies with the process cannot sign the products record for a later one: it is left unsigned (judged
    # by the manifest), so the next run, with another throw-away key, still replaces the directory
    assert "hmac" not in json.loads((out / ".ssodetect-products.json").read_text())
    import ssodetect.keys as keys

    monkeypatch.setattr(keys, "_EPHEMERAL", os.urandom(32))
    again = cli(capsys, "run", scene, "--out", out, "--to-step", "detect")
    assert again.code == 1 and again.errors == [], again.err


def test_a_rerun_from_the_cache_says_the_cached_steps_warnings_again(good_run, scene, tmp_path, capsys):
    """The session's run warns (headers off by 20": registered onto one exposure; exit 1).  Its rerun loads every
    step: the same warnings, marked as the earlier run's, and the same exit status (not a clean 0)."""
    out = copy_run(good_run.out, tmp_path / "out")
    outcome = cli(capsys, "run", scene, "--out", out)
    assert all(status in ("cached", "off") for name, status in outcome.steps().items() if name not in
               ("ingest", "report")), outcome.steps()
    assert outcome.code == good_run.outcome.code == 1, outcome.err
    first = [w for w in good_run.outcome.warnings if "its header WCS puts the stars" in w]
    again = [w for w in outcome.warnings if "as its earlier run said" in w]
    assert first and len(again) >= len(first)
    assert all(any(w.split(": ", 1)[-1][:60] in a for a in again) for w in first)


def test_a_cache_key_inside_outdir_is_refused(scene, tmp_path, capsys, monkeypatch):
    """OUTDIR is replaced as a whole: a signing key kept inside it would be thrown away by every run (and every
    stored product with it)."""
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setenv("SSODETECT_CACHE_KEY", str(out / "cache.key"))
    outcome = cli(capsys, "run", scene, "--out", out, "--to-step", "detect")
    assert outcome.code == 2 and len(outcome.errors) == 1, outcome.err
    assert "cache.key" in outcome.errors[0] and "signing key" in outcome.errors[0]
    assert list(out.iterdir()) == []


def test_a_pickle_swapped_right_after_its_check_is_never_unpickled(good_run, tmp_path, monkeypatch):
    """The race of the fault campaign (D1): the file is exchanged for an attacker's pickle between the signature
    check and the load. Made deterministic: the swap happens inside the check. The bytes loaded are the bytes
    checked, so the genuine products come back and the attacker's code never runs."""
    from ssodetect.pipeline import steps as steps_module

    out = copy_run(good_run.out, tmp_path / "out")
    marker = tmp_path / "PWNED"
    payload = _evil_pickle(marker)
    pkl = out / "steps" / "astrometry.pkl"
    record = json.loads((out / "steps" / "astrometry.json").read_text())
    real_compare = hmac.compare_digest

    def compare_then_swap(a, b):
        pkl.write_bytes(payload)  # the attacker wins the race: the file on disk is now theirs
        return real_compare(a, b)

    monkeypatch.setattr(steps_module.hmac, "compare_digest", compare_then_swap)
    cache = next(obj for obj in vars(steps_module).values()
                 if isinstance(obj, type) and hasattr(obj, "load") and hasattr(obj, "record"))(out, None)
    products, why = cache.load("astrometry", record["key"])
    assert not marker.exists(), "the swapped pickle was unpickled"
    assert why == "" and "detections" in products and pkl.read_bytes() == payload


@pytest.mark.parametrize("command", ["report", "evaluate"])
def test_report_under_another_key_is_refused_before_any_work(good_run, scene, tmp_path, capsys, monkeypatch, command):
    """The sixth campaign: ``report`` or ``evaluate`` on a run whose products record another key signed did all the
    work, left its stage (6-8 files) inside OUTDIR, then refused to replace the products.  Now refused at once."""
    out = copy_run(good_run.out, tmp_path / "out")
    before = snapshot(out)
    monkeypatch.setenv("SSODETECT_CACHE_KEY", str(tmp_path / "keys" / "other.key"))
    args = ("report", out) if command == "report" else ("evaluate", out, scene / "truth.ecsv")
    outcome = cli(capsys, *args)
    assert outcome.code == 2 and len(outcome.errors) == 1 and "not signed with your key" in outcome.errors[0], \
        outcome.err
    assert snapshot(out) == before and leftovers(out) == []


def test_a_key_whose_write_fails_leaves_no_empty_key_behind(tmp_path, monkeypatch, caplog):
    """Campaign 30: the key file was created, then written; a full disk (or a kill in between) left an empty file
    that disabled the step cache for every later run.  It is now written beside and linked into place: a failed
    write leaves nothing, and the next run makes a good key."""
    import ssodetect.keys as keys

    path = tmp_path / "conf" / "cache.key"
    monkeypatch.setenv("SSODETECT_CACHE_KEY", str(path))
    real_urandom = keys.os.urandom

    def full_disk(n):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keys.os, "urandom", full_disk)
    with caplog.at_level("WARNING", logger="ssodetect.keys"):
        key, persistent = keys.cache_key()
    assert not persistent and "No space left on device" in caplog.text
    assert not path.exists() and not [p for p in path.parent.iterdir()], "a partial key or temporary file was left"
    monkeypatch.setattr(keys.os, "urandom", real_urandom)
    key, persistent = keys.cache_key()
    assert persistent and len(key) == 32 and path.read_bytes() == key
    assert path.stat().st_mode & 0o777 == 0o600
    assert keys.cache_key() == (key, True)
