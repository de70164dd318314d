"""The eighth fault campaign: memory that grew with a header's exposure time, compressed-image cards that crashed
the reader, sky frames other than ICRS taken as ICRS, implausible header numbers used as they were, settings with
invisible characters, a lock released before the alert was sent, warnings forgotten on a re-run.

A refused command exits 2 with one line naming the file or setting and writes nothing; a problem that does not stop
the work is a warning naming the file, and the command exits 1.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
from astropy.io import fits

from faultkit import cli, copy_inputs, raw_card, set_header, snapshot


_PEAK = """
import resource, sys
from ssodetect.cli import main
code = main(sys.argv[1:])
print("PEAK", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, code)
"""


@pytest.mark.parametrize("longest", [None, 100000.0])
def test_an_exposure_time_of_a_million_seconds_keeps_memory_bounded(scene, tmp_path, longest):
    """N1: EXPTIME = 1e6 s on every frame made the blend measurement's stamps grow with the predicted trail length
    (11 GB).  Predictions longer than ``streaks.max_length`` are not measured (counted), and the overlapping
    exposures are named in a warning.  Campaign 9's D2: with ``max_length = 1e12`` the bound was gone (exit 3,
    MemoryError); the setting now stops at 1e5 px and the blend step at 2000 px."""
    src = copy_inputs(scene, tmp_path / "in")
    for path in sorted(src.glob("exp_*.fits")):
        set_header(path, 0, EXPTIME=1e6)
    out = tmp_path / "out"
    extra = []
    if longest is not None:
        (tmp_path / "c.toml").write_text(f"[streaks]\nmax_length = {longest}\n")
        extra = ["--config", str(tmp_path / "c.toml")]
    done = subprocess.run([sys.executable, "-c", _PEAK, "run", str(src), "--out", str(out), "--refcat",
                           str(scene / "refcat.ecsv"), "--to-step", "blends", "-q", *extra],
                          capture_output=True, text=True, timeout=600)
    peak_kb, code = (int(v) for v in done.stdout.split("PEAK")[-1].split())
    assert code == 1, done.stderr
    assert peak_kb < 1_500_000, peak_kb  # (11 GB before)
    overlap = [line for line in done.stderr.splitlines() if "overlap by" in line]
    assert len(overlap) == 3 and "exp_00.fits" in overlap[0] and "EXPTIME" in overlap[0], done.stderr
    log = (out / "run.log").read_text()
    assert "longer than streaks.max_length" in log
    counted = int(log.split(" longer than streaks.max_length")[0].rsplit(" ", 1)[-1])
    assert counted > 0


@pytest.mark.parametrize("frame, said", [
    ({"CTYPE1": "GLON-TAN", "CTYPE2": "GLAT-TAN"}, "CTYPE1/CTYPE2 = GLON/GLAT, not RA/DEC"),
    ({"CTYPE1": "DEC--TAN", "CTYPE2": "RA---TAN"}, "CTYPE1/CTYPE2 = DEC/RA, not RA/DEC"),
    ({"RADESYS": "FK4", "EQUINOX": 1950.0}, "RADESYS = FK4, EQUINOX = 1950"),
    ({"RADESYS": "FK5", "EQUINOX": 1975.0}, "RADESYS = FK5, EQUINOX = 1975"),
])
def test_a_header_wcs_not_in_icrs_is_named_not_used(scene, tmp_path, capsys, frame, said):
    """N7: a header WCS in galactic coordinates, or FK4 B1950, was read as ICRS right ascension and declination
    (positions off by up to a degree, exit 0).  Now that frame's WCS is unusable, named with its file and why; its
    detections are placed by registration onto the other exposures."""
    src = copy_inputs(scene, tmp_path / "in")
    if frame.get("CTYPE1") == "DEC--TAN":  # a valid WCS with its axes swapped
        header = fits.getheader(src / "exp_01.fits", 1)
        frame = {**frame, "CRVAL1": header["CRVAL2"], "CRVAL2": header["CRVAL1"]}
    set_header(src / "exp_01.fits", 1, **frame)
    outcome = cli(capsys, "run", src, "--out", tmp_path / "out", "--refcat", scene / "refcat.ecsv",
                  "--to-step", "astrometry")
    assert outcome.errors == [] and outcome.code == 1, outcome.err
    named = [line for line in outcome.warnings if said in line]
    assert named and all("exp_01.fits" in line for line in named), outcome.warnings
    assert not any(said in line for line in outcome.warnings if "exp_01.fits" not in line)


@pytest.mark.parametrize("tile", ["0", "-4", "'abc'"])
def test_a_compressed_image_with_a_tile_of_no_pixels_is_refused_naming_it(scene, tmp_path, capsys, tile):
    """N2: a ``.fits.fz`` whose ZTILE1 = 0 gave a RuntimeWarning naming no file, then exit 3 (OverflowError)."""
    src = copy_inputs(scene, tmp_path / "in")
    with fits.open(src / "exp_00.fits") as hdul:
        hdus = [fits.PrimaryHDU(header=hdul[0].header)] + [fits.CompImageHDU(h.data, header=h.header)
                                                            for h in hdul[1:] if h.data is not None]
        fits.HDUList(hdus).writeto(src / "exp_00.fits.fz")
    (src / "exp_00.fits").unlink()
    raw_card(src / "exp_00.fits.fz", 0, "ZTILE1", tile)
    before = snapshot(tmp_path)
    outcome = cli(capsys, "run", src, "--out", tmp_path / "out")
    assert outcome.code == 2 and len(outcome.errors) == 1 and len(outcome.err) == 1, outcome.err
    assert "exp_00.fits.fz" in outcome.errors[0] and f"ZTILE1 = {tile}" in outcome.errors[0]
    assert snapshot(tmp_path) == before


def test_ctrl_c_inside_a_compiled_kernel_is_an_interruption(scene, tmp_path, capsys, monkeypatch):
    """N3: SIGINT while a numba kernel ran surfaced as SystemError ("returned a result with an exception set",
    caused by the KeyboardInterrupt): exit 3, "internal error".  Now it is exit 130, "interrupted"."""
    import ssodetect.pipeline.run as run

    def kernel(*args, **kwargs):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise SystemError("<numba function> returned a result with an exception set") from exc

    monkeypatch.setattr(run, "scan_inputs", kernel)
    outcome = cli(capsys, "run", scene, "--out", tmp_path / "out")
    assert outcome.code == 130 and outcome.errors == ["ssodetect: interrupted"], outcome.err
    assert not (tmp_path / "out").exists()


def test_the_output_lock_is_held_while_the_alert_is_delivered(scene, tmp_path, capsys):
    """N4b: the lock on OUTDIR was given up at the commit, before the alert's delivery: a second run started during
    a slow delivery was refused for "files ssodetect did not write" (run.log, being appended) instead of "another
    command is writing it".  The lock is now held until the delivery is recorded, and given up after."""
    seen = tmp_path / "seen"
    seen.mkdir()
    config = tmp_path / "alert.toml"
    config.write_text(f'[alerts]\ncommand = ["sh", "-c", "ls -a {tmp_path} > {seen}/during.txt"]\n')
    out = tmp_path / "out"
    outcome = cli(capsys, "run", scene, "--out", out, "--config", config)
    assert outcome.code in (0, 1) and outcome.errors == [], outcome.err
    assert ".out.lock" in (seen / "during.txt").read_text().split()
    assert not (tmp_path / ".out.lock").exists()


def test_a_reference_wcs_that_is_no_header_is_one_line(scene, tmp_path, capsys):
    """N13: ``reference_wcs = "/etc/passwd"`` echoed ~56 lines of astropy's card warnings before its error.  N7 for
    the reference WCS: one in FK4 B1950 is refused, not read as ICRS."""
    junk = tmp_path / "passwd"
    junk.write_text("".join(f"user{k}:x:{1000 + k}:{1000 + k}:User {k},,,:/home/user{k}:/bin/bash\n"
                            for k in range(56)))
    fk4 = tmp_path / "fk4.head"
    header = fits.getheader(scene / "exp_00.fits", 1)
    cards = [f"{k:<8}= {header[k]!r}" if isinstance(header[k], str) else f"{k:<8}= {header[k]}"
             for k in header if k.startswith(("CTYPE", "CRVAL", "CRPIX", "CD1_", "CD2_", "CUNIT"))]
    fk4.write_text("\n".join([*cards, "RADESYS = 'FK4'", "EQUINOX = 1950.0", "END"]) + "\n")
    for path, said in ((junk, "no celestial WCS"), (fk4, "RADESYS = FK4, EQUINOX = 1950")):
        config = tmp_path / "c.toml"
        config.write_text(f"[astrometry]\nreference_wcs = \"{path}\"\n")
        outcome = cli(capsys, "run", scene, "--out", tmp_path / "out", "--config", config)
        assert outcome.code == 2 and len(outcome.err) == 1, outcome.err
        assert str(path) in outcome.errors[0] and said in outcome.errors[0], outcome.errors
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, said", [
    (["run", "{scene}", "--out", "{tmp}/out", "--station", "\n12"], "--station '\\n12': '\\n12' holds a control"),
    (["run", "{scene}", "--out", "{tmp}/out", "--config", ""], "'': an empty configuration file name"),
    (["watch", "{tmp}/nowhere", "--root", "{tmp}/root", "--once"], "nowhere: not a directory to watch"),
    (["watch", "{scene}", "--root", "{tmp}/root", "--timeout", "0"], "watch: --timeout 0.0: must be finite, above 0"),
    (["watch", "{scene}", "--root", "{tmp}/root", "--settle", "nan"], "watch: --settle nan: must be finite"),
])
def test_command_line_mistakes_name_the_problem_and_make_nothing(scene, tmp_path, capsys, argv, said):
    """N15: ``--station $'\\n12'`` printed "--station " and nothing more (the rest after the newline); N16: ``--config
    ''`` said ". : not a regular file"; N10: ``watch NONEXIST --root R`` made R before refusing; N20: ``--timeout 0``
    listed every bound instead of the one broken."""
    before = snapshot(tmp_path)
    outcome = cli(capsys, *[a.format(scene=scene, tmp=tmp_path) for a in argv])
    assert outcome.code == 2 and len(outcome.err) == 1 and said in outcome.errors[0], outcome.err
    assert snapshot(tmp_path) == before


def test_a_noise_map_without_noise_is_named_as_the_cause(scene, tmp_path, capsys):
    """N19: an RMS map of -5 everywhere masked every pixel, and the warning said "all NaN or masked" (the pixels
    were fine).  Now it names the RMS map."""
    src = copy_inputs(scene, tmp_path / "in")
    with fits.open(src / "exp_01.fits", mode="update") as hdul:
        rms = next(h for h in hdul if str(h.header.get("EXTNAME", "")).endswith("RMS"))
        rms.data[:] = -5.0
    outcome = cli(capsys, "run", src, "--out", tmp_path / "out", "--to-step", "detect")
    assert outcome.code == 1 and outcome.errors == [], outcome.err
    named = [line for line in outcome.warnings if "exp_01.fits" in line and "skipped" in line]
    assert len(named) == 1 and "its RMS map holds no usable noise" in named[0], outcome.warnings
