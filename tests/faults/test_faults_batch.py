"""Fault injection into ``ssodetect batch``: hostile field names and manifests, fields that fail, directories in
the way.  Nothing may be written outside the batch directory; a failing field is marked failed and the others run.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
from astropy.table import Table

from faultkit import RECORD, cli, cli_uncaptured, copy_run, snapshot

from ssodetect.pipeline.batch import field_complete


def _toml_string(value: str) -> str:
    """A TOML basic string holding ``value`` (control characters escaped)."""
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _manifest(path, *fields):
    """Write a manifest of ``fields``: (name, [inputs]) or raw TOML text of one field table."""
    blocks = []
    for field in fields:
        if isinstance(field, str):
            blocks.append("[[field]]\n" + field)
        else:
            name, inputs = field
            listed = ", ".join(_toml_string(str(p)) for p in inputs)
            blocks.append(f"[[field]]\nname = {_toml_string(name)}\ninputs = [{listed}]\n")
    path.write_text("\n".join(blocks))
    return path


def _refused(outcome, *names):
    assert outcome.code == 2, outcome.err
    assert len(outcome.err) == 1 and outcome.err[0].startswith("ssodetect: error: "), outcome.err
    for name in names:
        assert str(name) in outcome.err[0], (name, outcome.err[0])
    return outcome.err[0]


# ----------------------------------------------------------------------------------------------------------
# field names


BAD_NAMES = ["../x", "{abs}", ".", "..", ".hidden", "a/b", "a/../../x", "a\\b", "", "x\ny", "tab\there", "nul\0",
             "batch_summary.ecsv", "n" * 201, "del\x7fchar", "c1\x85next"]


@pytest.mark.parametrize("name", BAD_NAMES, ids=[repr(n)[:24] for n in BAD_NAMES])
def test_field_name_outside_the_batch_directory_is_refused(scene, tmp_path, capsys, name):
    name = name.format(abs=tmp_path / "abs")
    manifest = _manifest(tmp_path / "m.toml", ("fine", [scene]), (name, [scene]))
    before = snapshot(tmp_path)
    line = _refused(cli(capsys, "batch", manifest, "--out", tmp_path / "deep" / "batch"), manifest)
    assert ("field name" in line and repr(name) in line) or (name == "" and "needs a name" in line), line
    assert snapshot(tmp_path) == before  # no batch directory, no x, abs, a/b, lock file...


def test_hidden_directory_as_a_field_is_refused(scene, tmp_path, capsys):
    hidden = copy_run(scene, tmp_path / ".secret")
    before = snapshot(tmp_path)
    _refused(cli(capsys, "batch", hidden, "--out", tmp_path / "batch"), ".secret")
    assert snapshot(tmp_path) == before


def test_duplicate_field_names_are_refused(scene, tmp_path, capsys):
    manifest = _manifest(tmp_path / "m.toml", ("same", [scene]), ("same", [scene]))
    before = snapshot(tmp_path)
    _refused(cli(capsys, "batch", manifest, "--out", tmp_path / "batch"), "same", "unique")
    assert snapshot(tmp_path) == before




@pytest.mark.parametrize("text", [
    "not = [toml",
    "",
    'name = "a"\n',                                       # no inputs
    'name = "a"\ninputs = []\n',
    'name = "a"\ninputs = 5\n',
    'name = "a"\ninputs = [1, 2]\n',
    'name = "a"\ninputs = ["x"]\nrefcat = 5\n',
    'name = ["a"]\ninputs = ["x"]\n',
], ids=["not TOML", "empty", "no inputs", "empty inputs", "inputs a number", "inputs numbers", "refcat a number",
        "name a list"])
def test_malformed_manifest_is_refused(tmp_path, capsys, text):
    manifest = tmp_path / "m.toml"
    manifest.write_text(("[[field]]\n" + text) if text and text != "not = [toml" else text)
    before = snapshot(tmp_path)
    line = _refused(cli(capsys, "batch", manifest, "--out", tmp_path / "batch"), manifest)
    assert "internal error" not in line
    assert snapshot(tmp_path) == before


def test_batch_directory_is_a_file(scene, tmp_path, capsys):
    (tmp_path / "batch").write_text("the user's\n")
    before = snapshot(tmp_path)
    _refused(cli(capsys, "batch", scene, "--out", tmp_path / "batch"), tmp_path / "batch", "not a directory")
    assert snapshot(tmp_path) == before


def test_batch_directory_held_by_another_batch(tmp_path, capsys):
    batch = tmp_path / "batch"
    batch.mkdir()
    manifest = _manifest(tmp_path / "m.toml", ("bad", [tmp_path / "nope"]))
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys
        from ssodetect.io.outputs import OutputLock
        lock = OutputLock(sys.argv[1])
        print("locked", flush=True)
        sys.stdin.read()
        lock.release()
    """), str(batch)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(batch)
        _refused(cli(capsys, "batch", manifest, "--out", batch), batch, "another ssodetect command")
        assert snapshot(batch) == before
    finally:
        holder.communicate("", timeout=60)


# ----------------------------------------------------------------------------------------------------------
# failing fields beside good ones


@pytest.fixture(scope="module")
def batch(scene, tmp_path_factory):
    """A batch of one good field and two bad ones (missing inputs; a directory with a junk frame)."""
    root = tmp_path_factory.mktemp("batch")
    junk = root / "junk"
    junk.mkdir()
    (junk / "frame.fits").write_text("not FITS")
    manifest = _manifest(root / "m.toml", ("ok", [scene]), ("missing", [root / "nope"]), ("junk", [junk]))
    out = root / "batch"
    outcome = cli_uncaptured("batch", manifest, "--out", out)
    return SimpleNamespace(root=root, manifest=manifest, out=out, outcome=outcome, snapshot=snapshot(out),
                           listing=sorted(p.name for p in root.iterdir()))


def _status(out):
    summary = Table.read(out / "batch_summary.ecsv")
    return {str(r["field"]): (str(r["status"]), str(r["message"])) for r in summary}


def test_failed_fields_are_marked_and_the_others_run(batch):
    assert batch.outcome.code == 1, batch.outcome.err
    status = _status(batch.out)
    assert status["ok"][0] == "done"
    assert status["missing"][0] == "failed" and "nope" in status["missing"][1]
    assert status["junk"][0] == "failed" and "frame.fits" in status["junk"][1]
    assert any("missing" in line and "nope" in line for line in batch.outcome.out)
    assert field_complete(batch.out / "ok") and len(Table.read(batch.out / "ok" / "objects.ecsv")) > 0
    assert not (batch.out / "missing").exists() and not (batch.out / "junk").exists()
    assert sorted(p.name for p in batch.out.iterdir()) == [RECORD, "batch_summary.ecsv", "ok"]
    assert batch.listing == ["batch", "junk", "m.toml"]  # nothing beside the batch directory


def test_rerun_skips_the_complete_field_and_fails_the_others_again(batch, tmp_path, capsys):
    out = copy_run(batch.out, tmp_path / "batch")
    ok_before = snapshot(out / "ok")
    outcome = cli(capsys, "batch", batch.manifest, "--out", out)
    assert outcome.code == 1, outcome.err
    status = _status(out)
    assert status["ok"][0] == "skipped" and status["missing"][0] == "failed" and status["junk"][0] == "failed"
    assert snapshot(out / "ok") == ok_before


def test_users_file_in_an_unfinished_field_fails_that_field_only(batch, tmp_path, capsys):
    """A field whose products were altered (so it is run again) and that now holds the user's notes: the field
    fails naming the file, its directory is left as it was; the batch goes on (exit 1)."""
    out = copy_run(batch.out, tmp_path / "batch")
    (out / "ok" / "notes.txt").write_text("the user's\n")
    (out / "ok" / "objects.ecsv").write_text("# edited\n")
    before = snapshot(out / "ok")
    outcome = cli(capsys, "batch", batch.manifest, "--out", out)
    assert outcome.code == 1, outcome.err
    status = _status(out)
    assert status["ok"][0] == "failed" and "notes.txt" in status["ok"][1], status
    assert snapshot(out / "ok") == before


def test_field_directory_of_the_users_is_not_replaced(scene, tmp_path, capsys):
    out = tmp_path / "batch"
    (out / "f").mkdir(parents=True)
    (out / "f" / "thesis.tex").write_text("the user's\n")
    manifest = _manifest(tmp_path / "m.toml", ("f", [scene]))
    before = snapshot(out / "f")
    outcome = cli(capsys, "batch", manifest, "--out", out)
    assert outcome.code == 1, outcome.err
    status = _status(out)
    assert status["f"][0] == "failed" and "thesis.tex" in status["f"][1]
    assert snapshot(out / "f") == before


def test_field_directory_linked_outside_the_batch_is_not_written_through(scene, tmp_path, capsys):
    """BATCH/f is a link to a directory of the user's elsewhere: nothing there is written or removed."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "data.txt").write_text("the user's\n")
    out = tmp_path / "batch"
    out.mkdir()
    (out / "f").symlink_to(elsewhere, target_is_directory=True)
    manifest = _manifest(tmp_path / "m.toml", ("f", [scene]))
    before = snapshot(elsewhere)
    outcome = cli(capsys, "batch", manifest, "--out", out)
    assert outcome.code == 1, outcome.err
    assert _status(out)["f"][0] == "failed"
    assert snapshot(elsewhere) == before


@pytest.mark.parametrize("taken", ["a directory", "a file of the user's"])
def test_summary_path_taken_by_a_directory(scene, tmp_path, capsys, taken):
    """BATCH/batch_summary.ecsv is a directory (of the user's): refused naming it; the directory is kept.  The
    fifth campaign's D9: a file of the user's there was refused only after every field had run (their directories
    written) with "nothing was written"; now before any work."""
    out = tmp_path / "batch"
    if taken == "a directory":
        (out / "batch_summary.ecsv").mkdir(parents=True)
        (out / "batch_summary.ecsv" / "mine.txt").write_text("x")
    else:
        out.mkdir()
        (out / "batch_summary.ecsv").write_text("mine\n")
    manifest = _manifest(tmp_path / "m.toml", ("good", [scene]))
    before = snapshot(out)
    outcome = cli(capsys, "batch", manifest, "--out", out)
    assert outcome.code == 2, outcome.err
    assert len(outcome.errors) == 1 and "internal error" not in outcome.errors[0], outcome.err
    assert snapshot(out) == before
    assert str(out / "batch_summary.ecsv") in outcome.errors[0], outcome.errors


def test_fields_waiting_on_a_cluster_without_workers_are_given_up():
    """The third campaign's D20: every Dask worker killed until the nannies gave up; the batch waited for ever.  Now
    the fields still waiting once the cluster has had no worker for the grace period are cancelled and returned
    (then marked failed); those done stay done.  A fake cluster: one field done, one never starting."""
    from ssodetect.pipeline.batch import wait_for_fields

    class FakeFuture:
        def __init__(self, finished):
            self.finished, self.cancelled = finished, False

        def done(self):
            return self.finished or self.cancelled

        def cancel(self):
            self.cancelled = True

    class FakeClient:
        def __init__(self, workers):
            self.workers = workers

        def scheduler_info(self):
            return {"workers": {f"w{k}": {} for k in range(self.workers)}}

    done, stuck = FakeFuture(True), FakeFuture(False)
    abandoned = wait_for_fields(FakeClient(0), [done, stuck], grace=0.3, poll=0.05)
    assert abandoned == {stuck} and stuck.cancelled and not done.cancelled
    # with a worker alive the fields are waited for (here: until the fake field finishes)
    import threading

    slow = FakeFuture(False)
    threading.Timer(0.4, lambda: setattr(slow, "finished", True)).start()
    assert wait_for_fields(FakeClient(1), [slow], grace=0.1, poll=0.05) == set() and not slow.cancelled


def test_a_field_failing_with_an_internal_error_is_one_line_without_a_traceback(scene, tmp_path, capsys,
                                                                                monkeypatch):
    """The fourth campaign's D8: a field whose run raised an unexpected error was marked failed, but ``batch`` printed
    its ~90-line traceback without ``-v``.  Now one line names the field and the error; the traceback needs -v."""
    import ssodetect.pipeline.batch as batch_module

    real = batch_module.run_field

    def crash(field, outdir, config):
        if field.name == "bad":
            raise RuntimeError("a bug in this field")
        return real(field, outdir, config)

    monkeypatch.setattr(batch_module, "run_field", crash)
    manifest = _manifest(tmp_path / "m.toml", ("bad", [scene]), ("good", [scene]))
    outcome = cli(capsys, "batch", manifest, "--out", tmp_path / "batch")
    assert outcome.code == 1, outcome.err
    assert not any("Traceback" in line for line in outcome.err), outcome.err
    named = [line for line in outcome.err if "bad" in line and "RuntimeError" in line and "a bug in this field" in line]
    assert len(named) == 1, outcome.err
    assert _status(tmp_path / "batch")["good"][0] == "done"
