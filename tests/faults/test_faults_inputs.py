"""Fault injection into the inputs: damaged compression, unparseable or missing header values, degenerate pixels,
files that are not files, wrong header WCSs.

A refused input exits 2 with one line naming the file and the problem, and leaves an existing OUTDIR (a copy of
a good run) exactly as it was; a usable-but-odd input gives a warning naming the file and the run completes.
"""
from __future__ import annotations

import gzip
import os
import time
import shutil
import threading
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from faultkit import cli, cli_uncaptured, copy_inputs, copy_run, files, leftovers, recorded, snapshot


def _refused_unchanged(capsys, src, out, *names, extra=()):
    """``run SRC --out OUT`` exits 2 with one line naming ``names``; OUT and its parent are unchanged."""
    before, parent = snapshot(out), snapshot(out.parent)
    outcome = cli(capsys, "run", src, "--out", out, *extra)
    assert outcome.code == 2, outcome.err
    assert len(outcome.errors) == 1 and outcome.err[-1] == outcome.errors[0], outcome.err
    for name in names:
        assert str(name) in outcome.errors[0], (name, outcome.errors[0])
    assert "internal error" not in outcome.errors[0]
    assert snapshot(out) == before and snapshot(out.parent) == parent
    return outcome.errors[0]


@pytest.fixture()
def src(scene, tmp_path):
    """The scene's four frames in a directory of the user's."""
    return copy_inputs(scene, tmp_path / "in")


@pytest.fixture()
def out(good_run, tmp_path):
    """An earlier good run's output directory (which a refused run must leave as it was)."""
    return copy_run(good_run.out, tmp_path / "out")


# ----------------------------------------------------------------------------------------------------------
# gzip


def _gzip(path):
    target = path.with_name(path.name + ".gz")
    target.write_bytes(gzip.compress(path.read_bytes(), compresslevel=1))
    path.unlink()
    return target


@pytest.mark.parametrize("damage", ["CRC", "length", "truncated", "not gzip at all", "garbage inside"])
def test_damaged_gzip_frame(src, out, capsys, damage):
    target = _gzip(src / "exp_01.fits")
    data = bytearray(target.read_bytes())
    if damage == "CRC":
        data[-8] ^= 0xFF  # the CRC-32 of the trailer
    elif damage == "length":
        data[-1] ^= 0x01  # ISIZE of the trailer
    elif damage == "truncated":
        data = data[: len(data) * 2 // 3]
    elif damage == "not gzip at all":
        data = bytearray((src / "exp_00.fits").read_bytes())  # plain FITS under a .gz name
    else:
        data = bytearray(gzip.compress(b"\x00garbage, not FITS" * 100))
    target.write_bytes(bytes(data))
    line = _refused_unchanged(capsys, src, out, "exp_01.fits.gz")
    if damage != "garbage inside":
        assert "damaged gzip file" in line
    else:
        assert "FITS" in line


def test_crc_damage_is_caught_even_where_astropy_stops_reading_early(src, out, capsys):
    """Only the trailer is damaged; the compressed stream itself decodes: astropy alone reads the frame fine."""
    target = _gzip(src / "exp_02.fits")
    data = bytearray(target.read_bytes())
    data[-5] ^= 0x10
    target.write_bytes(bytes(data))
    with pytest.raises((OSError, EOFError, zlib.error)):
        gzip.decompress(bytes(data))
    line = _refused_unchanged(capsys, src, out, "exp_02.fits.gz", "damaged gzip file")
    assert "CRC" in line or "crc" in line.lower()


# ----------------------------------------------------------------------------------------------------------
# header values


def _set_card(path, keyword: str, value: str | None):
    """Rewrite the raw 80-byte card ``keyword`` of the primary header (bytes, not through astropy); None removes
    it by blanking the card (a valid all-space card)."""
    data = bytearray(path.read_bytes())
    pos = 0
    key = keyword.ljust(8).encode()
    while data[pos:pos + 8] != key:
        assert data[pos:pos + 8] != b"END     ", f"{keyword} not in the primary header"
        pos += 80
    card = (f"{keyword:<8}= {value:>20} / [s]" if value is not None else "").ljust(80).encode()
    assert len(card) == 80
    data[pos:pos + 80] = card
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("value", ["NaN", "nan", "INF", "-Infinity", "1E999", "-5.0", "'abc'", "1.0.0"])
def test_unusable_exptime_card(src, out, capsys, value):
    _set_card(src / "exp_02.fits", "EXPTIME", value)
    line = _refused_unchanged(capsys, src, out, "exp_02.fits")
    assert "EXPTIME" in line or "exposure time" in line, line


def test_exptime_nan_names_the_card(src, out, capsys):
    _set_card(src / "exp_02.fits", "EXPTIME", "NaN")
    line = _refused_unchanged(capsys, src, out, "exp_02.fits", "EXPTIME")
    assert "NaN" in line


@pytest.mark.parametrize("value", [None, "''", "' '"])
def test_absent_exptime_is_a_warning_naming_the_file(src, tmp_path, capsys, value):
    """No value (card removed, or an empty string): taken as 0 s with a warning naming the file, read at ingest."""
    _set_card(src / "exp_01.fits", "EXPTIME", value)
    outcome = cli(capsys, "run", src, "--out", tmp_path / "out", "--to-step", "ingest")
    assert outcome.code == 1 and outcome.errors == [], outcome.err
    named = [line for line in outcome.warnings if "no exposure time" in line]
    assert len(named) == 1 and "exp_01.fits" in named[0] and "EXPTIME" in named[0], outcome.warnings


def test_non_ascii_header_byte(src, out, capsys):
    """A byte > 127 inside a header card's comment: refused as a damaged file, named."""
    path = src / "exp_03.fits"
    data = bytearray(path.read_bytes())
    pos = data.index(b"EXPTIME =")
    data[pos + 60] = 0xE9
    path.write_bytes(bytes(data))
    _refused_unchanged(capsys, src, out, "exp_03.fits")


# ----------------------------------------------------------------------------------------------------------
# odd but usable frames: one run for both (a run is this module's main cost)


@pytest.fixture(scope="module")
def odd_run(scene, tmp_path_factory):
    """exp_01.fits without EXPTIME (card removed from the raw header) *and* with an all-zero CCD (an empty
    read-out, skipped), so that the other three exposures still link."""
    root = tmp_path_factory.mktemp("odd")
    src = copy_inputs(scene, root / "in")
    _set_card(src / "exp_01.fits", "EXPTIME", None)
    with fits.open(src / "exp_01.fits", mode="update") as hdul:
        assert "EXPTIME" not in hdul[0].header and "EXPTIME" not in hdul[1].header
        hdul["1-1.SCI"].data[:] = 0
    out = root / "out"
    return SimpleNamespace(out=out, outcome=cli_uncaptured("run", src, "--out", out))


def _completed(run):
    assert run.outcome.code == 1 and run.outcome.errors == [], run.outcome.err
    assert len(Table.read(run.out / "objects.ecsv")) > 0
    assert files(run.out) == recorded(run.out) and leftovers(run.out) == []


def test_missing_exptime_warns_and_the_run_completes(odd_run):
    _completed(odd_run)
    named = [line for line in odd_run.outcome.warnings if "no exposure time" in line]
    assert len(named) == 1 and "exp_01.fits" in named[0] and "EXPTIME" in named[0], odd_run.outcome.warnings


def test_all_zero_ccd_warns_and_the_run_completes(odd_run):
    _completed(odd_run)
    named = [line for line in odd_run.outcome.warnings if "same value" in line]
    assert len(named) == 1 and "exp_01.fits" in named[0] and "1-1" in named[0], odd_run.outcome.warnings
    obs = Table.read(odd_run.out / "observations.ecsv")
    assert len(obs) > 0 and 1 not in set(obs["exposure"])


# ----------------------------------------------------------------------------------------------------------
# pixels


def test_rms_of_another_shape_fails_mid_run_and_leaves_outdir(src, out, capsys):
    """Refused only when the pixels are read (inside the run, after the stage exists): OUT still unchanged."""
    with fits.open(src / "exp_02.fits", mode="update") as hdul:
        hdul["1-1.RMS"].data = hdul["1-1.RMS"].data[:100, :100].copy()
    line = _refused_unchanged(capsys, src, out, "exp_02.fits", "RMS")
    assert "shape" in line
    assert leftovers(out) == []


def test_image_cube_instead_of_an_image(src, out, capsys):
    with fits.open(src / "exp_03.fits", mode="update") as hdul:
        hdul["1-1.SCI"].data = np.zeros((2, 8, 8), np.float32)
    _refused_unchanged(capsys, src, out, "exp_03.fits")


# ----------------------------------------------------------------------------------------------------------
# files that are not frames


@pytest.mark.parametrize("kind", [
    "empty file", "directory", "header only", "text", "copy of another frame", "zero-length gzip", "empty .fz",
    "dangling link",
])
def test_odd_file_among_the_frames(src, out, capsys, kind):
    name = {"directory": "dir.fits", "dangling link": "dangling.fits", "zero-length gzip": "zero.fits.gz",
            "empty .fz": "empty.fz", "copy of another frame": "exp_00_copy.fits"}.get(kind, "odd.fits")
    path = src / name
    if kind in ("empty file", "zero-length gzip", "empty .fz"):
        path.write_bytes(b"")
    elif kind == "directory":
        path.mkdir()
        shutil.copy(src / "exp_00.fits", path / "inner.fits")
    elif kind == "dangling link":
        path.symlink_to(src / "nowhere.fits")
    elif kind == "header only":
        fits.PrimaryHDU().writeto(path)
    elif kind == "text":
        path.write_text("SIMPLE  = T\n" * 50)
    else:
        shutil.copy(src / "exp_00.fits", path)
    _refused_unchanged(capsys, src, out, name)


@pytest.mark.parametrize("given", ["/dev/null", "directory named .fits"])
def test_odd_path_given_as_a_frame(src, out, tmp_path, capsys, given):
    if given == "/dev/null":
        _refused_unchanged(capsys, "/dev/null", out, "/dev/null")
    else:
        empty = tmp_path / "frames.fits"
        empty.mkdir()
        _refused_unchanged(capsys, empty, out, "frames.fits")


@pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
def test_fifo_named_like_a_frame(src, out, capsys):
    fifo = src / "pipe.fits"
    os.mkfifo(fifo)
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("outcome", cli(capsys, "run", src, "--out", out)),
                              daemon=True)
    worker.start()
    worker.join(2)
    hung = worker.is_alive()
    for _ in range(20):  # unblock the reader (an empty stream) until the command returns
        if not worker.is_alive():
            break
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
        worker.join(0.5)
    assert not hung, "the run blocked on the FIFO"
    outcome = result["outcome"]
    assert outcome.code == 2 and "pipe.fits" in outcome.errors[0]


# ----------------------------------------------------------------------------------------------------------
# reference catalogue and configuration files


@pytest.mark.parametrize("kind", ["empty", "directory", "no columns", "missing", "binary junk", "truncated FITS"])
def test_bad_reference_catalogue(scene, out, tmp_path, capsys, kind):
    """(The fourth campaign's D8: a truncated FITS catalogue printed astropy's three-line warning before the error;
    now the error is the only line, and says it.)"""
    refcat = tmp_path / ("ref.fits" if kind == "truncated FITS" else "ref.ecsv")
    if kind == "truncated FITS":
        Table.read(scene / "refcat.ecsv").write(refcat)
        refcat.write_bytes(refcat.read_bytes()[:-3000])
        before = snapshot(out)
        outcome = cli(capsys, "run", scene, "--out", out, "--refcat", refcat)
        assert outcome.code == 2 and len(outcome.err) == 1, outcome.err
        assert "ref.fits" in outcome.errors[0] and "truncated" in outcome.errors[0], outcome.err
        assert snapshot(out) == before
        return
    if kind == "empty":
        refcat.write_text("")
    elif kind == "directory":
        refcat.mkdir()
    elif kind == "no columns":
        Table({"x": [1.0, 2.0], "y": [3.0, 4.0]}).write(refcat, format="ascii.ecsv")
    elif kind == "binary junk":
        refcat.write_bytes(os.urandom(3000))
    _refused_unchanged(capsys, scene, out, "ref.ecsv", extra=("--refcat", refcat))


@pytest.mark.parametrize("kind", ["binary junk", "directory", "unknown section", "wrong type", "flag mask overflow",
                                  "whole number too large", "logical for a number", "PSF width without bound"])
def test_bad_configuration_file(scene, out, tmp_path, capsys, kind):
    """(The fourth campaign's D5: ``min_area = 1e20`` as a whole number was an OverflowError inside sep.)"""
    config = tmp_path / "c.toml"
    if kind == "whole number too large":
        config.write_text("[detect]\ndeblend_nthresh = 99999999999999999999\n")
    elif kind == "logical for a number":  # (the sixth campaign: read as 1 sigma, the run drowned in detections)
        config.write_text("[detect]\nthreshold = true\n")
    elif kind == "PSF width without bound":  # (the sixth campaign: an internal error in the detection step)
        config.write_text("[detect]\npsf_fwhm = 1e300\n")
    elif kind == "binary junk":
        config.write_bytes(b"\xff\xfe\x00[x" * 40)
    elif kind == "directory":
        config.mkdir()
    elif kind == "unknown section":
        config.write_text("[no_such_section]\nx = 1\n")
    elif kind == "flag mask overflow":
        config.write_text("[io]\nflag_mask = 18446744073709551615\n")
    else:
        config.write_text("[detect]\nthreshold = \"high\"\n")
    _refused_unchanged(capsys, scene, out, "c.toml", extra=("--config", config))


@pytest.mark.parametrize("option, value", [("--workers", "0"), ("--workers", "100000"), ("--station", "abcd"),
                                           ("--station", "C5"), ("--station", "XYZ9"),
                                           ("--scheduler", "tcp://127.0.0.1:9"), ("--scheduler", "not a url"),
                                           ("--obs-id", "night\x1b[31m"), ("--keyword", "x" * 80)])
def test_bad_command_line_settings(scene, out, capsys, option, value):
    """Out-of-range workers, station codes that neither ADES nor the 80-column format can carry, a scheduler that is
    not there: exit 2 naming the option, not an internal error (nor an hour of Dask waiting for 100000 processes)."""
    if option == "--scheduler":  # (a run whose steps are all cached never connects: a new OUTDIR)
        pytest.importorskip("dask.distributed")
        out = out.parent / "new"
        out.mkdir()
    line = _refused_unchanged(capsys, scene, out, value if value.isprintable() else option, extra=(option, value))
    assert option in line or "scheduler" in line or "workers" in line


def test_a_listener_that_is_not_a_dask_scheduler(scene, out, tmp_path, capsys, monkeypatch):
    """An HTTP server where a scheduler was expected: a one-line error within the connection deadline, no hang."""
    import http.server
    import threading

    pytest.importorskip("dask.distributed")
    import ssodetect.pipeline.executor as executor

    monkeypatch.setattr(executor, "CONNECT_DEADLINE", 2.0)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    new = out.parent / "new"
    new.mkdir()
    try:
        t0 = time.perf_counter()
        line = _refused_unchanged(capsys, scene, new, "dask scheduler",
                                  extra=("--scheduler", f"tcp://127.0.0.1:{server.server_port}"))
        assert time.perf_counter() - t0 < 30.0 and "cannot connect" in line or "no Dask scheduler" in line
    finally:
        server.shutdown()
        server.server_close()


def test_a_station_in_the_configuration_file_is_checked(scene, out, tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text('[report]\nstation = "My backyard"\n')
    line = _refused_unchanged(capsys, scene, out, "c.toml", extra=("--config", config))
    assert "My backyard" in line and "MPC observatory code" in line


# ----------------------------------------------------------------------------------------------------------
# header WCSs off by ~20" and no reference catalogue


def test_wrong_header_wcs_without_a_catalogue_is_replaced_by_a_registration(good_run, scene):
    """The session scene's header WCSs are off by up to 20" and 0.5 deg; without a reference catalogue they are
    checked against one another and replaced by a registration onto one exposure (a warning per frame), and
    the moving objects are found."""
    from ssodetect.evaluate import evaluate_run

    outcome = good_run.outcome
    assert outcome.code == 1 and outcome.errors == [], outcome.err
    moved = [line for line in outcome.warnings if "its header WCS puts the stars" in line]
    assert len(moved) >= 2, outcome.warnings
    assert all("exp_0" in line and ".fits" in line for line in moved)
    obs = Table.read(good_run.out / "observations.ecsv")
    assert "frame" in set(obs["wcs"])
    ev = evaluate_run(obs, Table.read(scene / "truth.ecsv"), pixels=True)
    assert ev.n_objects >= 20 and ev.n_false == 0 and ev.completeness_bright >= 0.8, ev


@pytest.mark.parametrize("name", ["ünï", "new\nline"])
def test_an_input_folder_named_with_odd_characters_runs_to_the_end(scene, tmp_path, capsys, name):
    """The campaign's D7: a path with letters outside ASCII or a newline reached a FITS header at the report step
    (exit 3 after the whole run); it is written as printable ASCII there, the path kept everywhere else."""
    from astropy.io import fits

    folder = tmp_path / name
    shutil.copytree(scene, folder)
    outcome = cli(capsys, "run", folder, "--out", tmp_path / "out")
    assert outcome.code in (0, 1) and outcome.errors == [], outcome.err
    with fits.open(tmp_path / "out" / "overview.fits") as hdul:
        assert hdul[1].header["FILE"].endswith(".fits") and "?" in hdul[1].header["FILE"]
    assert (tmp_path / "out" / "report.html").is_file()


def _fifo_guard(path, after: float = 15.0):
    """A thread that, after ``after`` seconds, opens the FIFO ``path`` for writing and closes it (a reader stuck on
    it then sees the end instead of hanging the suite)."""
    def release():
        deadline = time.time() + after + 30.0
        time.sleep(after)
        while time.time() < deadline:
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                time.sleep(0.2)  # nobody reading: the command did not open it (as it should not)
                continue
    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("role", ["--refcat", "--config", "truth"])
def test_a_fifo_given_as_a_file_is_refused_at_once(good_run, scene, tmp_path, capsys, role):
    """The second campaign's N1: a FIFO as reference catalogue, configuration or truth table made the command wait
    forever. Refused in one line (exit 2) within seconds, nothing written."""
    fifo = tmp_path / ("refcat.ecsv" if role == "--refcat" else "settings.toml" if role == "--config" else "truth.ecsv")
    os.mkfifo(fifo)
    _fifo_guard(fifo)
    t0 = time.time()
    if role == "truth":
        run = copy_run(good_run.out, tmp_path / "run")
        before = snapshot(run)
        outcome = cli(capsys, "evaluate", run, fifo)
        assert snapshot(run) == before
    else:
        outcome = cli(capsys, "run", scene, "--out", tmp_path / "out", role, fifo)
        assert not (tmp_path / "out").exists()
    assert time.time() - t0 < 10.0
    assert outcome.code == 2 and len(outcome.errors) == 1 and str(fifo) in outcome.errors[0], outcome.err
    assert "not a regular file" in outcome.errors[0]


@pytest.mark.parametrize("extra, words", [(["--rate-min", "nan"], "finite"), (["--rate-min", "10", "--rate-max", "1"],
                                                                              "rate-min < rate-max"),
                                          (["--bright", "inf"], "finite")])
def test_evaluate_refuses_rates_that_are_not_a_range(good_run, scene, tmp_path, capsys, extra, words):
    """The second campaign's N6: NaN or inverted rate ranges were scored as 0/0 and written."""
    run = copy_run(good_run.out, tmp_path / "run")
    before = snapshot(run)
    outcome = cli(capsys, "evaluate", run, scene / "truth.ecsv", *extra)
    assert outcome.code == 2 and words in outcome.errors[0], outcome.err
    assert snapshot(run) == before


def test_deep_nesting_and_damaged_fits_products_are_clean_errors(good_run, scene, tmp_path, capsys):
    """N3/N4: a configuration nested 100,000 deep and a truncated cutouts.fits / empty overview.fits under
    `ssodetect report` were internal errors (exit 3)."""
    deep = tmp_path / "deep.toml"
    deep.write_text("a = " + "[" * 100000 + "]" * 100000 + "\n")
    outcome = cli(capsys, "run", scene, "--out", tmp_path / "out", "--config", deep)
    assert outcome.code == 2 and str(deep) in outcome.errors[0], outcome.err
    for name, damage in (("cutouts.fits", lambda b: b[:20000]), ("overview.fits", lambda b: b"")):
        run = copy_run(good_run.out, tmp_path / name)
        (run / name).write_bytes(damage((run / name).read_bytes()))
        outcome = cli(capsys, "report", run)
        assert outcome.code == 2 and name in outcome.errors[0], outcome.err


def test_an_outdir_through_a_symlink_loop_is_refused_before_any_work(scene, tmp_path, capsys):
    """N5: the whole pipeline ran, then 'Symlink loop' (exit 3)."""
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    t0 = time.time()
    outcome = cli(capsys, "run", scene, "--out", tmp_path / "loop1" / "out")
    assert outcome.code == 2 and "loop1" in outcome.errors[0] and time.time() - t0 < 5.0, outcome.err


# ----------------------------------------------------------------------------------------------------------
# the third campaign's cases (campaign on 1463984)

_DEEP = "[" * 100000 + "]" * 100000


@pytest.mark.parametrize("name", ["steps/detect.json", ".ssodetect-products.json", "manifest.json"])
def test_json_nested_without_end_in_outdir_is_no_internal_error(good_run, scene, tmp_path, capsys, name):
    """B09-B16: a step record, the products record or manifest.json nested 100,000 deep ended run, report and
    evaluate with "internal error: RecursionError" (exit 3).  Now each makes OUTDIR not ours (the step record is
    changed since ssodetect wrote it): a one-line refusal naming it, nothing changed.  The step cache itself reads
    such a record as a damaged entry, not an internal error."""
    from ssodetect.pipeline.steps import StepCache

    out = copy_run(good_run.out, tmp_path / "out")
    (out / name).write_text(_DEEP)
    before = snapshot(out)
    outcome = cli(capsys, "run", scene, "--out", out)
    assert outcome.code == 2 and len(outcome.errors) == 1, outcome.err
    assert not any("internal error" in e for e in outcome.errors) and str(out) in outcome.errors[0], outcome.err
    assert snapshot(out) == before
    if name.startswith("steps/"):
        products, why = StepCache(out, None).load("detect", "any key")
        assert products is None and why, why


def test_an_orbit_file_nested_without_end_is_a_clean_error(scene, out, tmp_path, capsys):
    """C104: a JSON orbit file nested 100,000 deep was an internal error (exit 3)."""
    orbits = tmp_path / "orbits.json"
    orbits.write_text(_DEEP)
    line = _refused_unchanged(capsys, scene, out, "orbits.json", extra=("--orbits", orbits))
    assert "orbit" in line


@pytest.mark.parametrize("value", ["1E999", "0.0", "-2.0", "'abc'", "1E300"])
def test_an_unusable_gain_card_is_a_warning_naming_the_file(src, tmp_path, capsys, value):
    """C10: GAIN = 1e999 was read as infinity and silently replaced by the default gain (now an infinite card is
    refused like a NaN one, naming it: campaign 9's D6); N9: GAIN = 1e300 was used as it was."""
    with fits.open(src / "exp_01.fits", mode="update") as hdul:
        for hdu in hdul:
            hdu.header.remove("GAIN", ignore_missing=True, remove_all=True)
        hdul[0].header["GAIN"] = 1.0
        hdul.flush(output_verify="ignore")
    data = bytearray((src / "exp_01.fits").read_bytes())
    pos = data.index(b"GAIN    =")
    data[pos:pos + 80] = f"GAIN    = {value:>20} / [e-/ADU]".ljust(80).encode()
    (src / "exp_01.fits").write_bytes(bytes(data))
    outcome = cli(capsys, "run", src, "--out", tmp_path / "out", "--to-step", "ingest")
    if value == "1E999":
        assert outcome.code == 2 and "exp_01.fits" in outcome.errors[0] and "GAIN = 1E999" in outcome.errors[0]
        return
    assert outcome.code == 1 and outcome.errors == [], outcome.err
    named = [line for line in outcome.warnings if "GAIN" in line and "default gain" in line]
    assert len(named) == 1 and "exp_01.fits" in named[0], outcome.warnings


def test_a_catalogue_with_infinite_proper_motions_is_named(scene, tmp_path, capsys):
    """C116: pmra = inf on some rows gave only anonymous numpy RuntimeWarnings; now those rows are left out with a
    warning naming the catalogue and the column, and no numpy warning is printed."""
    refcat = tmp_path / "ref.ecsv"
    table = Table.read(scene / "refcat.ecsv")
    table["pmra"] = np.asarray(table["pmra"], float)
    table["pmra"][:5] = np.inf
    table.write(refcat, format="ascii.ecsv")
    outcome = cli(capsys, "run", scene, "--out", tmp_path / "out", "--refcat", refcat, "--to-step", "astrometry")
    assert outcome.errors == [] and outcome.code in (0, 1), outcome.err
    named = [line for line in outcome.warnings if "ref.ecsv" in line and "infinite pmra" in line]
    assert len(named) == 1 and "5 rows" in named[0], outcome.warnings
    assert not any("RuntimeWarning" in line for line in outcome.err), outcome.err


@pytest.mark.parametrize("broken", ["CDELT = 0", "CRVAL1 = 'nan' (text)", "CRVAL1 = T (logical)",
                                    "CRVAL1 = (150.1, 2.0) (complex)"])
def test_a_frame_with_an_unusable_wcs_is_named_and_its_fate_told(scene, src, tmp_path, capsys, broken):
    """C11/C13/C14/C17: one frame's header WCS unusable (CDELT1 = 0): the warnings named no file and the summary said
    "detections kept with their header WCS", untrue for it.  Now the file is named, and the summary says whether its
    detections were kept (registered onto the other exposures) or left out.  The fourth campaign's D4: CRVAL1 given
    as the text 'nan' was removed as no number and defaulted to 0 (a WCS at RA 0, used silently)."""
    with fits.open(src / "exp_01.fits", mode="update") as hdul:
        header = hdul[1].header
        import re

        if broken == "CDELT = 0":
            for key in [k for k in header if re.fullmatch(r"(PC|CD)\d_\d", k)]:
                del header[key]
            header["CDELT1"], header["CDELT2"] = 0.0, 0.0
        else:
            header["CRVAL1"] = "nan" if "text" in broken else True if "logical" in broken else complex(150.1, 2.0)
        hdul.flush(output_verify="ignore")
    sparse = tmp_path / "sparse.ecsv"  # too few stars to solve (or rescue) any exposure: the campaign's sparse field
    Table.read(scene / "refcat.ecsv")[:4].write(sparse, format="ascii.ecsv")
    outcome = cli(capsys, "run", src, "--out", tmp_path / "out", "--refcat", sparse, "--to-step", "astrometry")
    assert outcome.errors == [] and outcome.code == 1, outcome.err
    summary = [line for line in outcome.warnings if "CCD exposures not solved" in line]
    assert len(summary) == 1 and "exp_01.fits" in summary[0], outcome.warnings
    # that frame is named as left out (no WCS to place it by, none from a registration); the others kept theirs
    assert "3 kept with their header WCS or registered, 1 left out" in summary[0], summary[0]
    assert "exp_01.fits, left out)" in summary[0] and "exp_00.fits, left out" not in summary[0], summary[0]
    failed = [line for line in outcome.warnings if "astrometric solution failed" in line]
    assert failed and all(".fits" in line for line in failed), failed


# ----------------------------------------------------------------------------------------------------------
# the fourth campaign's cases (campaign on 3a58820)

def test_a_frame_without_its_sci_extension_is_refused_and_a_ccd_without_one_is_named(scene, src, out, capsys):
    """D3: a MEF whose only CCD lacked its SCI extension was left out with an INFO line ("4 files, 3 exposures"):
    the exposures renumbered, an observation lost.  Now a file with no SCI image is refused (naming it), and a CCD
    with only its noise or flag map beside others is a warning naming the file and the CCD."""
    frame = src / "exp_01.fits"
    with fits.open(scene / "exp_01.fits") as hdul:
        names = [str(hdu.header.get("EXTNAME", "")) for hdu in hdul]
        assert any(n.endswith(".SCI") for n in names) and any(n.endswith(".RMS") for n in names), names
        without = fits.HDUList([hdu.copy() for hdu, n in zip(hdul, names) if not n.endswith(".SCI")])
        lone = hdul[next(k for k, n in enumerate(names) if n.endswith(".RMS"))].copy()
        lone.header["EXTNAME"] = "9-9.RMS"
        beside = fits.HDUList([hdu.copy() for hdu in hdul] + [lone])
    without.writeto(frame, overwrite=True)
    line = _refused_unchanged(capsys, src, out, frame)
    assert "SCI" in line
    beside.writeto(frame, overwrite=True)
    outcome = cli(capsys, "run", src, "--out", out.parent / "again", "--to-step", "detect")
    assert outcome.code == 1 and outcome.errors == [], outcome.err
    named = [w for w in outcome.warnings if str(frame) in w and "9-9" in w and "SCI" in w]
    assert len(named) == 1, outcome.warnings


@pytest.mark.parametrize("damage", ["NAXIS = 999", "SIMPLE = F", "tile-compressed with damaged tiles"])
def test_frames_astropy_cannot_take_apart_are_one_line_errors(scene, src, out, capsys, damage):
    """D5: NAXIS = 999 (KeyError 'NAXIS3'), SIMPLE = F (AttributeError of a non-standard HDU) and a .fz file whose
    tiles do not decompress (CfitsioException, in the detect step) were internal errors (exit 3)."""
    frame = src / "exp_01.fits"
    if damage == "tile-compressed with damaged tiles":
        with fits.open(scene / "exp_01.fits") as hdul:
            packed = fits.HDUList([fits.PrimaryHDU(header=hdul[0].header)]
                                  + [fits.CompImageHDU(data=h.data, header=h.header) if h.is_image and h.data is not None
                                     else h.copy() for h in hdul[1:]])
        frame.unlink()
        frame = src / "exp_01.fits.fz"
        packed.writeto(frame)
        data = bytearray(frame.read_bytes())
        for k in range(len(data) // 2, len(data) // 2 + 4000, 7):
            data[k] ^= 0xFF
        frame.write_bytes(bytes(data))
    else:
        data = bytearray(frame.read_bytes())
        if damage == "SIMPLE = F":
            data[:30] = b"SIMPLE  =                    F"
        else:
            at = data.index(b"NAXIS   =", data.index(b"XTENSION"))
            data[at:at + 30] = b"NAXIS   =                  999"
        frame.write_bytes(bytes(data))
    _refused_unchanged(capsys, src, out, frame)


def test_evaluate_with_a_table_that_is_no_truth_table_and_an_undecodable_path(good_run, scene, tmp_path, capsys):
    """D5: ``evaluate RUN refcat.ecsv`` was KeyError 'on_detector' (exit 3); ``--out`` with bytes that are not UTF-8
    was UnicodeEncodeError (exit 3)."""
    outcome = cli(capsys, "evaluate", good_run.out, scene / "refcat.ecsv", "--no-write")
    assert outcome.code == 2 and len(outcome.errors) == 1 and "refcat.ecsv" in outcome.errors[0], outcome.err
    assert "truth table" in outcome.errors[0] and "on_detector" in outcome.errors[0]
    bad = os.fsdecode(bytes(tmp_path) + b"/bad\xffname")
    outcome = cli(capsys, "run", scene, "--out", bad)
    assert outcome.code == 2 and len(outcome.errors) == 1 and "UTF-8" in outcome.errors[0], outcome.err
    assert sorted(os.listdir(tmp_path)) == []


# ----------------------------------------------------------------------------------------------------------
# the fifth campaign's cases (campaign on 442b094)

@pytest.mark.parametrize("where", ["calibration bias in the configuration", "profile file",
                                   "reference WCS in the configuration"])
def test_a_pipe_named_as_a_calibration_or_profile_file_is_refused_before_any_work(src, out, tmp_path, capsys, where):
    """D3/D4: ``[calibrate] bias = [a pipe]`` took the lock and a stage and blocked in open(); ``--profile`` with a
    pipe blocked for ever.  Now both are refused, naming the pipe, before any work."""
    import threading

    pipe = tmp_path / ("pipe.toml" if where == "profile file" else "pipe.fits")
    os.mkfifo(pipe)
    if where == "profile file":
        extra = ("--profile", pipe)
    else:  # (the sixth campaign: a reference WCS that is a pipe blocked the run, /dev/zero was read for ever)
        config = tmp_path / "c.toml"
        config.write_text(f'[calibrate]\nbias = ["{pipe}"]\n' if "bias" in where else
                          f'[astrometry]\nreference_wcs = "{pipe}"\n')
        extra = ("--config", config)
    result: dict = {}
    worker = threading.Thread(target=lambda: result.setdefault(
        "line", _refused_unchanged(capsys, src, out, pipe, extra=extra)), daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "blocked on the pipe"
    assert "not a regular file" in result["line"]


def test_damaged_layouts_and_arguments_are_one_line_errors(scene, src, out, tmp_path, capsys):
    """D5/D6/D8: ``--scheduler 'tcp://[::1'`` (ValueError), an image HDU whose XTENSION says BINTABLE (KeyError
    TFIELDS) were internal errors; a frame followed by gigabytes of padding was read into memory (13.8 GB for
    50 GB) before astropy refused it.  The padding is now measured from the headers alone."""
    outcome = cli(capsys, "run", src, "--out", out, "--scheduler", "tcp://[::1")
    assert outcome.code == 2 and len(outcome.errors) == 1 and "scheduler" in outcome.errors[0], outcome.err
    frame = src / "exp_01.fits"
    data = bytearray(frame.read_bytes())
    at = data.index(b"XTENSION")
    data[at:at + 30] = b"XTENSION= 'BINTABLE'          "
    frame.write_bytes(bytes(data))
    assert "not an image" in _refused_unchanged(capsys, src, out, frame)
    shutil.copy(scene / "exp_01.fits", frame)
    from ssodetect.io.frames import MAX_TRAILING_BYTES

    size = frame.stat().st_size
    os.truncate(frame, size + MAX_TRAILING_BYTES + 2880 * 10)  # sparse: no disk used
    line = _refused_unchanged(capsys, src, out, frame)
    assert f"{MAX_TRAILING_BYTES + 2880 * 10} bytes after its last HDU" in line


def test_decompression_bombs_are_refused_in_bounded_memory(scene, src, out, tmp_path, capsys):
    """Sixth campaign: a 100 kB ``.fits.gz`` holding a frame and then gigabytes of zeros was decompressed whole
    into memory.  Its padding is now counted in the decompressed stream, and an HDU that declares more pixels
    than any image here may have (a gzip of a declared 10^10 zeros is a few MB) is refused from its header."""
    import resource

    from ssodetect.io.frames import MAX_HDU_PIXELS, MAX_TRAILING_BYTES

    frame = src / "exp_01.fits"
    target = src / "exp_01.fits.gz"
    with gzip.open(target, "wb", compresslevel=1) as handle:
        handle.write(frame.read_bytes())
        zeros = bytes(1 << 22)
        for _ in range((MAX_TRAILING_BYTES >> 22) + 2):  # 8 MB past the limit
            handle.write(zeros)
    frame.unlink()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    line = _refused_unchanged(capsys, src, out, target)
    assert "decompresses to more than" in line and "after its last HDU" in line
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 3 * MAX_TRAILING_BYTES >> 10  # kB
    side = 1 << 17  # 2^34 pixels declared
    header = fits.Header({"SIMPLE": True, "BITPIX": 8, "NAXIS": 2, "NAXIS1": side, "NAXIS2": side})
    with gzip.open(target, "wb", compresslevel=1) as handle:
        handle.write(header.tostring().encode("ascii"))
        handle.write(bytes(1 << 20))  # the start of its data: what astropy would allocate the whole of
    line = _refused_unchanged(capsys, src, out, target)
    assert f"declares {side * side} pixels" in line and str(MAX_HDU_PIXELS) in line
    plain = src / "exp_01.fits"
    target.unlink()
    plain.write_bytes(header.tostring().encode("ascii"))  # uncompressed and short: refused from its header too
    assert "declares" in _refused_unchanged(capsys, src, out, plain)


def test_a_gzip_frame_named_fits_and_a_float_flag_map_with_nan(scene, src, tmp_path, capsys):
    """D11: a gzip-compressed frame named .fits was called truncated (its compressed size against its layout);
    now it is read (and its CRC checked).  D12: a float FLG map with NaN printed four RuntimeWarnings naming no
    file; now one warning names the file and those pixels are masked."""
    import gzip as gz

    frame = src / "exp_01.fits"
    frame.write_bytes(gz.compress((scene / "exp_01.fits").read_bytes()))
    outcome = cli(capsys, "run", src, "--out", tmp_path / "a", "--to-step", "detect")
    assert outcome.errors == [] and outcome.code in (0, 1), outcome.err
    data = bytearray(frame.read_bytes())
    data[-6] ^= 0xFF  # its CRC no longer matches
    frame.write_bytes(bytes(data))
    assert "gzip" in _refused_unchanged(capsys, src, tmp_path / "a", frame)
    with fits.open(scene / "exp_02.fits") as hdul:
        names = [str(h.header.get("EXTNAME", "")) for h in hdul]
        if not any(n.endswith(".FLG") for n in names):
            pytest.skip("the scene's frames carry no flag map")
        k = next(i for i, n in enumerate(names) if n.endswith(".FLG"))
        flg = hdul[k].data.astype(np.float32)
        flg[:5, :5] = np.nan
        hdul[k] = fits.ImageHDU(flg, header=hdul[k].header, name=names[k])
        shutil.copy(scene / "exp_01.fits", src / "exp_01.fits")
        hdul.writeto(src / "exp_02.fits", overwrite=True)
    outcome = cli(capsys, "run", src, "--out", tmp_path / "b")  # every step that reads the pixels reads the map
    assert outcome.errors == [] and not any("RuntimeWarning" in line for line in outcome.err), outcome.err
    named = [w for w in outcome.warnings if "exp_02.fits" in w and "FLG" in w and "25 " in w]
    assert len(named) == 1, outcome.warnings  # said once (sixth campaign: printed three times), in run.log too
    assert sum("FLG of CCD" in line for line in (tmp_path / "b" / "run.log").read_text().splitlines()) == 1


def test_a_time_keyword_thousands_of_years_off_is_named_and_not_used(scene, src, tmp_path, capsys):
    """Sixth campaign: ``MJD-OBS = 1e7`` (the year 29237) printed four ERFA "dubious year" lines naming no file, and
    put one exposure 27 millennia from the others.  Now the keyword is named, with its file, as unusable, and the
    frame's DATE-OBS gives its time; with no other time keyword the frame is refused, named."""
    frame = src / "exp_01.fits"
    with fits.open(frame, mode="update") as hdul:
        hdul[0].header["MJD-OBS"] = 1e7
        assert "DATE-OBS" in hdul[0].header
    outcome = cli(capsys, "run", src, "--out", tmp_path / "a", "--to-step", "detect")
    assert outcome.code == 1 and outcome.errors == [], outcome.err
    assert not any("Erfa" in line or "dubious" in line for line in outcome.err), outcome.err
    named = [w for w in outcome.warnings if "exp_01.fits" in w and "MJD-OBS" in w and "year 29237" in w]
    assert len(named) == 1 and "DATE-OBS" in named[0], outcome.warnings
    assert not any("apart" in w for w in outcome.warnings), outcome.warnings
    with fits.open(frame, mode="update") as hdul:
        for key in [k for k in hdul[0].header if k.startswith(("DATE", "MJD", "JD", "TIME", "UT"))]:
            del hdul[0].header[key]
        hdul[0].header["MJD-OBS"] = 1e7
    line = _refused_unchanged(capsys, src, tmp_path / "b", frame)
    assert "no usable observation time" in line and "year 29237" in line



@pytest.mark.parametrize("card, value, said", [("MAGZERO", 1e30, "MAGZERO = 1e+30 is not a zero point"),
                                               ("SATURATE", -1.0, "SATURATE = -1.0 is not a saturation level")])
def test_an_absurd_zero_point_or_saturation_level_is_named_and_not_used(scene, src, tmp_path, capsys, card, value,
                                                                         said):
    """Seventh campaign: MAGZERO = 1e30 on one frame was used silently (its magnitudes vanished from the reports,
    its reference stars all "saturated"), SATURATE = -1 masked every pixel ("all NaN or masked; skipped").  Now the
    keyword is named with its file and the default taken (saturation: not masked from it)."""
    frame = src / "exp_01.fits"
    with fits.open(frame, mode="update") as hdul:
        hdul[0].header[card] = value
    outcome = cli(capsys, "run", src, "--out", tmp_path / "a", "--to-step", "detect")
    assert outcome.code == 1 and outcome.errors == [], outcome.err
    named = [w for w in outcome.warnings if "exp_01.fits" in w and said in w]
    assert len(named) == 1, outcome.warnings
    assert not any("masked; skipped" in w for w in outcome.warnings), outcome.warnings


def test_two_extensions_of_one_name_are_refused(src, out, capsys):
    """Seventh campaign's D12: a second HDU named 1-1.SCI (a stray constant image) was read instead of the CCD's,
    which was then skipped as constant."""
    frame = src / "exp_01.fits"
    with fits.open(frame) as hdul:
        sci = next(h for h in hdul if str(h.header.get("EXTNAME", "")).endswith(".SCI"))
        extra = fits.ImageHDU(np.zeros_like(sci.data) + 7.0, header=sci.header.copy())
        name = sci.header["EXTNAME"]
        hdul.append(extra)
        hdul.writeto(src / "tmp.fits")
    os.replace(src / "tmp.fits", frame)
    line = _refused_unchanged(capsys, src, out, frame)
    assert "both named" in line and name in line


def test_a_compressed_image_whose_size_lies_and_empty_paths_are_one_line_errors(scene, src, out, tmp_path, capsys):
    """Seventh campaign: a .fz frame whose ZNAXIS1 disagrees with its tiles was an IndexError (exit 3); an empty
    input argument scanned the working directory, an empty --out named an empty path."""
    frame = src / "exp_01.fits"
    with fits.open(frame) as hdul:
        hdus = [fits.PrimaryHDU(header=hdul[0].header)]
        for h in hdul[1:]:
            hdus.append(fits.CompImageHDU(np.asarray(h.data, np.float32), header=h.header))
        fits.HDUList(hdus).writeto(src / "exp_01.fz")
    frame.unlink()
    data = bytearray((src / "exp_01.fz").read_bytes())
    at = data.index(b"ZNAXIS1 =")
    data[at:at + 30] = b"ZNAXIS1 =               400000"
    (src / "exp_01.fz").write_bytes(bytes(data))
    outcome = cli(capsys, "run", src, "--out", out)
    assert outcome.code == 2 and len(outcome.errors) == 1 and "exp_01.fz" in outcome.errors[0], outcome.err
    assert "internal error" not in outcome.errors[0]
    outcome = cli(capsys, "run", "", "--out", tmp_path / "b")
    assert outcome.code == 2 and outcome.errors == ["ssodetect: error: '': an empty input path"], outcome.err
    outcome = cli(capsys, "run", scene, "--out", "")
    assert outcome.code == 2 and len(outcome.errors) == 1 and "empty output" in outcome.errors[0], outcome.err


def test_a_distortion_that_folds_the_image_is_an_unusable_wcs_not_an_internal_error(scene, src, tmp_path, capsys):
    """Seventh campaign's D1: SIP coefficients of 0.01 on one frame were astropy's NoConvergence in the astrometry
    step (exit 3)."""
    frame = src / "exp_01.fits"
    with fits.open(frame, mode="update") as hdul:
        for h in hdul[1:]:
            if str(h.header.get("EXTNAME", "")).endswith(".SCI"):
                h.header.update(CTYPE1="RA---TAN-SIP", CTYPE2="DEC--TAN-SIP", A_ORDER=2, B_ORDER=2, A_2_0=1e-2,
                                B_0_2=-1e-2)
    outcome = cli(capsys, "run", src, "--out", tmp_path / "a", "--refcat", scene / "refcat.ecsv", "--to-step",
                  "astrometry")
    assert outcome.code == 1 and outcome.errors == [], outcome.err
    assert any("exp_01.fits" in w and "cannot be inverted" in w for w in outcome.warnings), outcome.warnings


def test_catalogue_columns_in_other_units_are_converted(scene, tmp_path, caplog):
    """Seventh campaign's D23: a catalogue in radians (``unit: rad`` declared) was read as degrees ("no star near any
    CCD's header footprint"); a unit that is no angle is refused, and so is a catalogue with no usable row."""
    from astropy import units as u

    from ssodetect.astrometry.refcat import load_reference_catalogue
    from ssodetect.errors import InputError

    ref = Table.read(scene / "refcat.ecsv")
    rad = ref.copy()
    rad["ra"] = np.radians(np.asarray(ref["ra"], float)) * u.rad
    rad["dec"] = np.radians(np.asarray(ref["dec"], float)) * u.rad
    rad.write(tmp_path / "rad.ecsv")
    back = load_reference_catalogue(tmp_path / "rad.ecsv")
    assert np.allclose(back["ra"], ref["ra"], atol=1e-9) and np.allclose(back["dec"], ref["dec"], atol=1e-9)
    rad["ra"].unit = u.m
    rad.write(tmp_path / "m.ecsv")
    with pytest.raises(InputError, match="column ra is in m"):
        load_reference_catalogue(tmp_path / "m.ecsv")
    ref["phot_g_mean_mag"] = np.nan
    ref.write(tmp_path / "nan.ecsv")
    with pytest.raises(InputError, match="no row with a finite, plausible position"):
        load_reference_catalogue(tmp_path / "nan.ecsv")
    # eighth campaign's N19: a catalogue of 0 rows, or of declinations of 100 deg, was "another part of the sky"
    ref[:0].write(tmp_path / "empty.ecsv")
    with caplog.at_level("WARNING", logger="ssodetect"):
        assert len(load_reference_catalogue(tmp_path / "empty.ecsv")) == 0
    assert any("empty.ecsv: the reference catalogue holds no star (0 rows)" in r.getMessage() for r in caplog.records)
    far = Table.read(scene / "refcat.ecsv")
    far["dec"] = 100.0
    far.write(tmp_path / "dec100.ecsv")
    with pytest.raises(InputError, match=r"dec100.ecsv: no row with a finite, plausible position and magnitude"):
        load_reference_catalogue(tmp_path / "dec100.ecsv")
    # campaign 9's D3, D7, D8: magnitudes of 1e30 (a zero point of 1e30 fitted, exit 0), epochs of -1e9 and proper
    # motions of 1e12 mas/yr (every star moved off the field, blamed on the pointing); a later campaign's negative
    # position errors (accepted in silence); on some rows: those ignored
    for column, value in (("phot_g_mean_mag", 1e30), ("ref_epoch", -1e9), ("pmra", 1e12), ("ra_error", -3.0)):
        odd = Table.read(scene / "refcat.ecsv")
        values = np.asarray(odd[column] if column in odd.colnames else np.zeros(len(odd)), float).copy()
        values[:5] = value
        odd[column] = values
        odd.write(tmp_path / "odd.ecsv", overwrite=True)
        caplog.clear()
        with caplog.at_level("WARNING", logger="ssodetect"):
            assert len(load_reference_catalogue(tmp_path / "odd.ecsv")) == len(odd) - 5
        assert any(f"5 rows with {column} outside" in r.getMessage() for r in caplog.records), column
        odd[column] = value
        odd.write(tmp_path / "odd.ecsv", overwrite=True)
        with pytest.raises(InputError, match="no row with a finite, plausible position and magnitude"):
            load_reference_catalogue(tmp_path / "odd.ecsv")


def test_a_frame_laid_out_unlike_the_others_is_named(scene, src, tmp_path, capsys):
    """Seventh campaign's D25: exp_01 without EXTNAMEs (its SCI, RMS and FLG read as three CCDs hdu1-hdu3, none of them
    in another exposure) ran without a word about it."""
    frame = src / "exp_01.fits"
    with fits.open(frame, mode="update") as hdul:
        for h in hdul[1:]:
            for key in ("EXTNAME", "CCDID", "DETECTOR"):
                h.header.remove(key, ignore_missing=True)
    outcome = cli(capsys, "run", src, "--out", tmp_path / "a", "--to-step", "ingest")
    assert outcome.code == 1 and outcome.errors == [], outcome.err
    assert any("exp_01.fits" in w and "fewer than 3" in w for w in outcome.warnings), outcome.warnings


@pytest.mark.parametrize("damage, said", [("BITPIX = 24", "BITPIX = 24, not a FITS value"),
                                          ("END card lost", "has no END card")])
def test_a_header_astropy_misreports_is_named_for_what_it_is(src, out, capsys, damage, said):
    """Seventh campaign's D17: BITPIX = 24 was "non-ASCII characters are present", a lost END card a message cut off
    after "non-standard convention:"."""
    frame = src / "exp_01.fits"
    data = bytearray(frame.read_bytes())
    if damage.startswith("BITPIX"):
        at = data.index(b"BITPIX  =")
        data[at:at + 30] = b"BITPIX  =                   24"
    else:
        at = data.index(b"END" + b" " * 77, 2880)  # the first extension's
        data[at:at + 3] = b"   "
    frame.write_bytes(bytes(data))
    assert said in _refused_unchanged(capsys, src, out, frame)
