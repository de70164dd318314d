"""Batches of fields: one run per field, resumable, on Dask surviving a killed worker."""
from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np
import pytest
from astropy.table import Table

from ssodetect.cli import main
from ssodetect.config import Config
from ssodetect.pipeline.batch import COMPLETE, Field, field_complete, run_batch
from ssodetect.simulate import SimulationConfig, simulate


@pytest.fixture(scope="module")
def fields(tmp_path_factory):
    """Three small simulated fields (384^2, 4 exposures)."""
    root = tmp_path_factory.mktemp("fields")
    for seed in (41, 42, 43):
        simulate(SimulationConfig(seed=seed, nx=384, ny=384, movers_per_ccd=400.0, mover_mag_max=24.0,
                                  satellite=False), root / f"f{seed}")
    return root


def _objects(path):
    return Table.read(path / "objects.ecsv")


def test_batch_runs_every_field_and_resumes_after_interruption(fields, tmp_path, capsys):
    manifest = tmp_path / "fields.toml"
    manifest.write_text(f'[[field]]\nname = "a"\ninputs = ["{fields / "f41"}"]\n\n'
                        f'[[field]]\nname = "b"\ninputs = ["{fields / "f42"}"]\n')
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "frame.fits").write_text("not a FITS file")
    out = tmp_path / "batch"
    argv = ["batch", str(manifest), str(fields / "f43"), str(tmp_path / "junk"), "--out", str(out), "-q"]
    assert main(argv) == 1  # one field failed; the others ran
    summary = Table.read(out / "batch_summary.ecsv")
    status = dict(zip(summary["field"], summary["status"]))
    assert status == {"a": "done", "b": "done", "f43": "done", "junk": "failed"}
    assert "frame.fits" in str(summary["message"][summary["field"] == "junk"][0])
    assert all(field_complete(out / n) for n in ("a", "b", "f43")) and not (out / "junk").exists()
    provenance = json.loads((out / "f43" / "provenance.json").read_text())
    assert provenance["refcat"].endswith("refcat.ecsv")
    peaks = provenance["peak_rss_mb"]  # every stage timed also has the process's peak memory after it
    assert set(peaks) == set(provenance["timings_s"]) and all(50 < v < 4096 for v in peaks.values())
    assert list(peaks.values()) == sorted(peaks.values())
    first = {n: _objects(out / n) for n in ("a", "b", "f43")}
    assert all(len(t) > 3 for t in first.values())
    stamp_a = (out / "a" / "objects.ecsv").stat().st_mtime_ns
    # interrupted states: f43 cut off before its completion record; b's objects.ecsv edited after completion (no
    # longer what ssodetect wrote: the user's now, so b is refused, named, and the edit kept)
    (out / "b" / "objects.ecsv").write_text("# my edit\n")
    (out / "f43" / COMPLETE).unlink()
    (out / "f43" / "report.html").unlink()
    capsys.readouterr()
    assert main(argv[:3] + argv[4:]) == 1
    assert "1 run, 1 already complete, 1 failed" in capsys.readouterr().out
    summary = Table.read(out / "batch_summary.ecsv")
    assert dict(zip(summary["field"], summary["status"])) == {"a": "skipped", "b": "failed", "f43": "done"}
    assert "objects.ecsv" in str(summary["message"][summary["field"] == "b"][0])
    assert (out / "b" / "objects.ecsv").read_text() == "# my edit\n"
    assert (out / "a" / "objects.ecsv").stat().st_mtime_ns == stamp_a
    # the edit undone (the file removed): b is a partial field of ours again, run
    (out / "b" / "objects.ecsv").unlink()
    assert main(argv[:3] + argv[4:]) == 1  # every field ran; they warn (no station code set)
    for n in ("b", "f43"):
        again = _objects(out / n)
        assert np.array_equal(again["object"], first[n]["object"])
        assert np.allclose(again["ra"], first[n]["ra"], atol=1e-9) and np.allclose(again["dec"], first[n]["dec"], atol=1e-9)
    assert field_complete(out / "f43") and (out / "f43" / "report.html").is_file()
    # a bad manifest: one line naming it, exit 2, nothing run
    bad = tmp_path / "bad.toml"
    bad.write_text('[[field]]\nname = "x"\n')
    capsys.readouterr()
    assert main(["batch", str(bad), "--out", str(tmp_path / "never"), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.toml: field 1 needs a name and inputs" in err[0] and not (tmp_path / "never").exists()
    # a misspelt key is named, not ignored (the field would have run without its reference catalogue)
    bad.write_text(f'[[field]]\nname = "x"\ninputs = ["{fields / "f41"}"]\nrefact = "refcat.ecsv"\n')
    assert main(["batch", str(bad), "--out", str(tmp_path / "never"), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown key(s) refact" in err[0] and not (tmp_path / "never").exists()
    # a complete field whose input changed since (even with its modification time restored) or whose configuration changed
    # is run again; the others stay complete
    frame = sorted((fields / "f41").glob("*.fits"))[0]
    stat = frame.stat()
    frame.write_bytes(frame.read_bytes())  # rewritten in place, its modification time put back (cp -p, rsync -t)
    os.utime(frame, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert main(argv[:3] + argv[4:]) == 1  # every field ran; they warn (no station code set)
    summary = Table.read(out / "batch_summary.ecsv")
    assert dict(zip(summary["field"], summary["status"])) == {"a": "done", "b": "skipped", "f43": "skipped"}
    config = tmp_path / "other.toml"
    config.write_text("[link]\nmatch_sigma = 3.5\n")
    assert main(argv[:3] + argv[4:] + ["--config", str(config)]) == 1
    summary = Table.read(out / "batch_summary.ecsv")
    assert set(summary["status"]) == {"done"}
    # a completion record edited by hand is not believed, and not ssodetect's any more: the field fails naming it,
    # its directory untouched, the others are complete; moved away, the field runs again
    record = json.loads((out / "a" / COMPLETE).read_text())
    record["n_objects"] = 99
    edited = json.dumps(record)
    (out / "a" / COMPLETE).write_text(edited)
    assert main(argv[:3] + argv[4:]) == 1
    summary = Table.read(out / "batch_summary.ecsv")
    row = summary[summary["field"] == "a"][0]
    assert row["status"] == "failed" and COMPLETE in row["message"] and "changed since" in row["message"], row
    assert set(summary["status"][summary["field"] != "a"]) <= {"done", "skipped"}
    assert (out / "a" / COMPLETE).read_text() == edited
    (out / "a" / COMPLETE).unlink()
    assert main(argv[:3] + argv[4:]) == 1  # every field ran; they warn (no station code set)
    summary = Table.read(out / "batch_summary.ecsv")
    assert summary["status"][summary["field"] == "a"][0] == "done" and 99 not in list(summary["n_objects"])
    # a field directory that is a link planted in BATCH_DIR: refused (its products would land elsewhere)
    (tmp_path / "elsewhere").mkdir()
    (out / "planted").symlink_to(tmp_path / "elsewhere")
    planted = tmp_path / "planted.toml"
    planted.write_text(f'[[field]]\nname = "planted"\ninputs = ["{fields / "f41"}"]\n')
    assert main(["batch", str(planted), "--out", str(out), "-q"]) == 1
    summary = Table.read(out / "batch_summary.ecsv")
    assert summary["status"][0] == "failed" and "symbolic link" in summary["message"][0]
    assert list((tmp_path / "elsewhere").iterdir()) == []
    (out / "planted").unlink()
    # a directory that is not ours is never cleared
    (out / "b" / COMPLETE).unlink()
    (out / "b" / "notes.txt").write_text("mine")
    assert main(argv[:3] + argv[4:]) == 1 and (out / "b" / "notes.txt").is_file()


def test_batch_on_dask_loses_nothing_when_a_worker_is_killed(fields, tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    config = Config()
    config.execution.progress = False
    batch = [Field(n, (str(fields / n),)) for n in ("f41", "f42", "f43")]
    serial = run_batch(batch, tmp_path / "serial", config)
    assert list(serial["status"]) == ["done"] * 3
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        result = {}
        thread = threading.Thread(target=lambda: result.update(summary=run_batch(batch, tmp_path / "dask", config,
                                                                                 client=client)))
        thread.start()
        pids = client.run(os.getpid)
        killed = None
        deadline = time.time() + 60
        while killed is None and time.time() < deadline:
            busy = [w for w, tasks in client.processing().items() if tasks]
            if busy:
                time.sleep(0.5)  # let the field get under way
                os.kill(pids[busy[0]], signal.SIGKILL)
                killed = busy[0]
            time.sleep(0.05)
        thread.join(timeout=300)
    assert killed is not None and not thread.is_alive()
    summary = result["summary"]
    assert list(summary["status"]) == ["done"] * 3
    for name in ("f41", "f42", "f43"):
        a, b = _objects(tmp_path / "serial" / name), _objects(tmp_path / "dask" / name)
        assert np.array_equal(a["object"], b["object"])
        sep = np.hypot((a["ra"] - b["ra"]) * np.cos(np.radians(a["dec"])), a["dec"] - b["dec"]) * 3.6e6
        assert np.all(sep < 1.0)  # mas


def _mapped_bytes():
    """Bytes glibc holds in separate memory mappings (mallinfo2's hblkhd); None without glibc >= 2.33."""
    import ctypes
    import ctypes.util

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")]

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = Mallinfo2
    return int(libc.mallinfo2().hblkhd)


def _mapping_growth(size: int):
    """How much glibc's mapped memory grows while an array of ``size`` bytes is held (None without mallinfo2)."""
    before = _mapped_bytes()
    if before is None:
        return None
    probe = np.ones(size, np.uint8)
    grown = _mapped_bytes() - before
    del probe
    return grown


def test_serial_executor_keeps_large_arrays_in_the_heap_while_open():
    from ssodetect.pipeline.executor import SerialExecutor

    size = 64 * 2**20
    if _mapping_growth(size) is None:
        pytest.skip("not glibc >= 2.33")
    assert _mapping_growth(size) >= size  # glibc's default: a block this large gets its own mapping
    with SerialExecutor() as executor:
        assert _mapping_growth(size) < size  # from the heap, kept for the next CCD when freed
        assert executor.map(len, [[1], [1, 2]]) == [1, 2]
    assert _mapping_growth(size) >= size  # defaults restored on close


def test_local_dask_workers_keep_large_arrays_in_the_heap():
    pytest.importorskip("distributed")
    from ssodetect.pipeline.executor import DaskExecutor

    size = 64 * 2**20
    with DaskExecutor(workers=1) as executor:  # the probe runs on the worker's task thread
        grown = executor.client.submit(_mapping_growth, size, pure=False).result()
    if grown is None:
        pytest.skip("not glibc >= 2.33")
    assert grown < size  # from the heap, not a mapping of its own


class _DeadFuture:
    """A field's task whose worker died on every retry (what dask raises from ``result()``)."""

    def done(self):
        return True  # finished, in error

    def result(self):
        from types import SimpleNamespace

        from distributed.scheduler import KilledWorker

        raise KilledWorker("field-b", SimpleNamespace(address="tcp://127.0.0.1:1"), 3)


class _DoneFuture:
    def __init__(self, row):
        self.row = row

    def done(self):
        return True

    def result(self):
        return self.row


class _Client:
    """Runs the tasks here, except field ``b``, whose worker 'dies' on every try."""

    def submit(self, func, field, outdir, config, **kwargs):
        return _DeadFuture() if field.name == "b" else _DoneFuture(func(field, outdir, config))


def test_a_field_whose_worker_keeps_dying_is_marked_failed_and_the_others_run(fields, tmp_path):
    config = Config()
    config.execution.progress = False
    batch = [Field("a", (str(fields / "f41"),)), Field("b", (str(fields / "f42"),)), Field("c", (str(fields / "f43"),))]
    summary = run_batch(batch, tmp_path / "batch", config, client=_Client(), retries=2)
    status = {row["field"]: (row["status"], row["message"]) for row in summary}
    assert status["a"][0] == "done" and status["c"][0] == "done"
    assert status["b"][0] == "failed" and "3 tries" in status["b"][1] and "KilledWorker" in status["b"][1]
    assert field_complete(tmp_path / "batch" / "a") and not (tmp_path / "batch" / "b").exists()


def test_a_field_state_follows_every_named_file_including_the_reference_wcs(fields, tmp_path):
    """A batch field is complete only for the files it was run on: a reference WCS edited in place makes the field
    run again (campaign 29: its path was not in the state, so ``batch`` kept the old sky positions)."""
    from ssodetect.pipeline.batch import field_state

    head = tmp_path / "frame.head"
    head.write_text("CRVAL1  =                150.0\nEND\n")
    config = Config()
    config.astrometry.reference_wcs = str(head)
    field = Field(name="a", inputs=(str(fields / "f41"),))
    before = field_state(field, config)
    assert str(head.resolve()) in [f[0] for f in before["inputs"]]
    head.write_text("CRVAL1  =                150.05\nEND\n")
    assert field_state(field, config) != before


def test_a_field_state_follows_the_profile_it_runs_with(fields, tmp_path):
    """Campaign 30: the state held the configuration before the profile was applied, so a profile file edited (or
    another one chosen from SSODETECT_PROFILE_PATH) left a field 'complete' with the old settings' results."""
    from ssodetect.pipeline.batch import field_state

    profile = tmp_path / "mine.toml"
    text = '[profile]\ndescription = "mine"\n[match]\ntelescope = ["NOMATCH"]\n[settings.report]\nstation = "{}"\n'
    profile.write_text(text.format("500"))
    config = Config()
    config.profile.name = str(profile)
    field = Field(name="a", inputs=(str(fields / "f41"),))
    before = field_state(field, config)
    profile.write_text(text.format("568"))
    assert field_state(field, config) != before
    # no profile at all: other settings, another state
    config.profile.name = "none"
    assert field_state(field, config) != before
