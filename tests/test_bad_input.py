"""Bad input: one-line error naming the file, non-zero exit, no output written."""
import shutil

import pytest

import numpy as np
from astropy.io import fits

from ssodetect.cli import main
from ssodetect.config import load_config
from ssodetect.pipeline import run_pipeline


def _run_cli(capsys, *args):
    code = main(["run", *map(str, args), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def _copy(scene, tmp_path):
    dest = tmp_path / "in"
    shutil.copytree(scene, dest)
    return dest


def test_not_fits(scene, tmp_path, capsys):
    src = _copy(scene, tmp_path)
    (src / "junk.fits").write_text("this is not FITS")
    out = tmp_path / "out"
    code, err = _run_cli(capsys, src, "--out", out)
    assert code == 2 and len(err) == 1 and "junk.fits" in err[0]
    assert not out.exists()


def test_truncated(scene, tmp_path, capsys):
    src = _copy(scene, tmp_path)
    target = src / "exp_02.fits"
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    code, err = _run_cli(capsys, src, "--out", out)
    assert code == 2 and "exp_02.fits" in err[0] and "truncated" in err[0]
    assert not out.exists()


def test_no_time(scene, tmp_path, capsys):
    src = _copy(scene, tmp_path)
    with fits.open(src / "exp_01.fits", mode="update") as hdul:
        for key in ("DATE-OBS", "MJD-OBS"):
            del hdul[0].header[key]
    code, err = _run_cli(capsys, src, "--out", tmp_path / "out")
    assert code == 2 and "exp_01.fits" in err[0] and "no usable observation time" in err[0]


def test_fewer_than_three_exposures(scene, tmp_path, capsys):
    code, err = _run_cli(capsys, scene / "exp_00.fits", scene / "exp_01.fits", "--out", tmp_path / "out")
    assert code == 2 and "at least 3" in err[0] and "exp_00.fits" in err[0]
    assert not (tmp_path / "out").exists()


def test_mixed_filters(scene, tmp_path, capsys):
    src = _copy(scene, tmp_path)
    with fits.open(src / "exp_03.fits", mode="update") as hdul:
        hdul[0].header["FILTER"] = "NISP-Y"
    code, err = _run_cli(capsys, src, "--out", tmp_path / "out")
    assert code == 2 and "exp_03.fits" in err[0] and "filter" in err[0]
    assert "--allow-mixed-filters" in err[0]
    code, err = _run_cli(capsys, src, "--out", tmp_path / "mixed", "--allow-mixed-filters", "--refcat",
                         src / "refcat.ecsv")
    assert code == 1 and any("mixed in one run" in line for line in err)  # linked across them, with a warning
    assert sum("mixed in one run" in line for line in err) == 1  # said once, not once per scan of the headers
    xml = (tmp_path / "mixed" / "observations.xml").read_text()
    assert "<ra>" in xml and "<mag>" not in xml  # observations, but no single band: no magnitudes


def test_a_reference_catalogue_of_another_sky_is_named_and_the_run_goes_on(scene, tmp_path, capsys):
    from astropy.table import Table

    far = Table.read(scene / "refcat.ecsv")
    far["ra"] = (far["ra"] + 10.0) % 360.0
    far.write(tmp_path / "far.ecsv")
    code, err = _run_cli(capsys, scene, "--out", tmp_path / "out", "--refcat", tmp_path / "far.ecsv")
    named = [line for line in err if str(tmp_path / "far.ecsv") in line]
    assert code == 1 and len(named) == 1 and "covers another part of the sky" in named[0]
    assert (tmp_path / "out" / "objects.ecsv").exists()  # header WCSs kept: the run went on


def test_all_nan_ccd_is_skipped(scene, tmp_path, caplog):
    src = _copy(scene, tmp_path)
    with fits.open(src / "exp_01.fits", mode="update") as hdul:
        hdul["1-1.SCI"].data[:] = np.nan
    config = load_config(None)
    config.execution.progress = False
    with caplog.at_level("WARNING", logger="ssodetect"):
        result = run_pipeline([src], tmp_path / "out", config)
    assert any("all its pixels are NaN" in r.message and "exp_01.fits" in r.message for r in caplog.records)
    assert (tmp_path / "out" / "observations.ecsv").exists()
    assert set(result.observations["exposure"]) <= {0, 2, 3}


def test_inputs_are_not_modified(scene, tmp_path):
    before = {p.name: p.stat().st_mtime_ns for p in scene.iterdir()}
    config = load_config(None)
    config.execution.progress = False
    run_pipeline([scene], tmp_path / "out", config)
    assert before == {p.name: p.stat().st_mtime_ns for p in scene.iterdir()}


def test_missing_input_and_bad_config(tmp_path, capsys):
    code, err = _run_cli(capsys, tmp_path / "nope", "--out", tmp_path / "out")
    assert code == 2 and "nope" in err[0]
    cfg = tmp_path / "c.toml"
    cfg.write_text("[detect]\nthreshold = -1\n")
    code, err = _run_cli(capsys, tmp_path, "--out", tmp_path / "out", "--config", cfg)
    assert code == 2 and "c.toml" in err[0]


def test_no_wcs_and_nothing_to_place_the_frame(scene, tmp_path, capsys):
    src = _copy(scene, tmp_path)
    target = src / "exp_01.fits"
    with fits.open(target, mode="update") as hdul:
        for hdu in hdul[1:]:
            for key in [k for k in hdu.header if k.startswith(("CTYPE", "CRVAL", "CRPIX", "CD1_", "CD2_"))]:
                del hdu.header[key]
    (tmp_path / "c.toml").write_text("[astrometry]\nregister_frames = false\n")
    out = tmp_path / "out"
    code, err = _run_cli(capsys, src, "--out", out, "--config", tmp_path / "c.toml")
    assert code == 2 and len(err) == 1 and "exp_01.fits" in err[0] and "WCS" in err[0]
    assert not out.exists()


def test_bad_reference_wcs(scene, tmp_path, capsys):
    (tmp_path / "c.toml").write_text(f'[astrometry]\nreference_wcs = "{tmp_path / "nowhere.wcs"}"\n')
    src = _copy(scene, tmp_path)
    with fits.open(src / "exp_01.fits", mode="update") as hdul:
        for hdu in hdul[1:]:
            for key in [k for k in hdu.header if k.startswith(("CTYPE", "CRVAL", "CRPIX", "CD1_", "CD2_"))]:
                del hdu.header[key]
    out = tmp_path / "out"
    code, err = _run_cli(capsys, src, "--out", out, "--config", tmp_path / "c.toml")
    assert code == 2 and len(err) == 1 and "nowhere.wcs" in err[0]
    assert not out.exists()


def test_bad_orbit_file_refused_before_processing(scene, tmp_path, capsys):
    orbits = tmp_path / "orbits.txt"
    orbits.write_text("not an orbit file\n")
    out = tmp_path / "out"
    code, err = _run_cli(capsys, scene, "--out", out, "--orbits", orbits)
    assert code == 2 and len(err) == 1 and "orbits.txt" in err[0]
    assert not out.exists()
    code, err = _run_cli(capsys, scene, "--out", out, "--orbits", tmp_path / "missing.dat")
    assert code == 2 and len(err) == 1 and "missing.dat" in err[0] and not out.exists()


def test_bad_model_file_refused_before_processing(scene, tmp_path, capsys):
    toml = tmp_path / "ml.toml"
    toml.write_text(f'[ml]\nenabled = true\nmodel = "{tmp_path / "none.pt"}"\n')
    out = tmp_path / "out"
    code, err = _run_cli(capsys, scene, "--out", out, "--config", toml)
    assert code == 2 and len(err) == 1 and "none.pt: model file not found" in err[0]
    assert not out.exists()


def test_bad_ades_and_80_column_input_name_the_line(tmp_path):
    import pytest

    from ssodetect.report import read_ades, read_mpc80

    bad = tmp_path / "bad.psv"
    bad.write_text("# version=2022\ntrkSub|mode|stn\nAB1|CCD\n")
    with pytest.raises(ValueError, match="fields"):
        read_ades(bad)
    with pytest.raises(ValueError, match="line 1"):
        read_mpc80("     K20Q04A  C2020 0X 18.33489021 33 58.060+12 13 25.77         22.58wU~44BVF51\n")


def test_one_exposure_with_a_broken_wcs_is_registered_not_linked_blindly(tmp_path, capsys):
    """One exposure's header WCS is singular: the run finishes, names the frame and why in a warning (exit 1),
    registers it onto another exposure of the CCD and links movers through it; a frame that does not register
    is left out, never linked on a sky of its own."""
    from astropy.table import Table

    from ssodetect.evaluate import evaluate_run
    from ssodetect.simulate import SimulationConfig, simulate

    sim = tmp_path / "sim"
    simulate(SimulationConfig(seed=5, nx=768, ny=768, movers_per_ccd=300.0, fast_fraction=0.0,
                              broken_wcs_exposures=[2]), sim)
    out = tmp_path / "out"
    code = main(["run", str(sim), "--out", str(out), "-q"])
    err = capsys.readouterr().err
    assert code == 1
    assert "exp_02.fits" in err and "singular" in err and "registered onto exposure" in err
    obs = Table.read(out / "observations.ecsv")
    assert set(obs["wcs"][obs["exposure"] == 2]) == {"frame"} and np.sum(obs["exposure"] == 2) >= 5
    ev = evaluate_run(obs, Table.read(sim / "truth.ecsv"))
    assert ev.n_false == 0 and ev.completeness_bright >= 0.9
    # the same frame with nothing in common with the others (its pixels replaced by noise): left out, with a warning
    with fits.open(sim / "exp_02.fits", mode="update") as hdul:
        rng = np.random.default_rng(0)
        hdul[1].data = rng.normal(float(np.median(hdul[1].data)), 5.0, hdul[1].data.shape).astype(np.float32)
    out2 = tmp_path / "out2"
    code = main(["run", str(sim), "--out", str(out2), "-q"])
    err = capsys.readouterr().err
    assert code == 1 and "exp_02.fits" in err and "not used" in err
    obs = Table.read(out2 / "observations.ecsv")
    assert np.sum(obs["exposure"] == 2) == 0


def test_scenes_without_stars_or_with_only_hot_pixels(tmp_path, capsys):
    """No star on the CCD (nothing to calibrate against): the run says which CCD exposures could not be solved and
    why (exit 1) and still finds the movers through the header WCS.  Only unflagged hot pixels: nothing is linked
    (they stay on the detector while the pointing dithers)."""
    from astropy.table import Table

    from ssodetect.evaluate import evaluate_run
    from ssodetect.simulate import SimulationConfig, simulate

    starless = tmp_path / "starless"
    simulate(SimulationConfig(seed=8, nx=768, ny=768, star_density=0.0, movers_per_ccd=300.0, fast_fraction=0.0), starless)
    out = tmp_path / "o1"
    code = main(["run", str(starless), "--out", str(out), "--refcat", str(starless / "refcat.ecsv"), "-q"])
    err = capsys.readouterr().err
    assert code == 1 and "4 of 4 CCD exposures not solved" in err and "reference star" in err
    # an empty catalogue is said to be one, not "another part of the sky" (eighth campaign's N19)
    assert "refcat.ecsv: the reference catalogue holds no star (0 rows)" in err and "another part of the sky" not in err
    ev = evaluate_run(Table.read(out / "observations.ecsv"), Table.read(starless / "truth.ecsv"))
    assert ev.completeness_bright >= 0.9 and ev.n_false == 0
    hot = tmp_path / "hot"
    simulate(SimulationConfig(seed=9, nx=768, ny=768, star_density=0.0, galaxy_density=0.0, movers_per_ccd=0.0,
                              transients_per_ccd=0.0, satellite=False, cosmic_fraction=0.0, hot_fraction=2e-3,
                              hot_flagged=0.0, dither=5.0), hot)
    out = tmp_path / "o2"
    code = main(["run", str(hot), "--out", str(out), "-q"])
    capsys.readouterr()
    assert code in (0, 1)
    assert len(Table.read(out / "objects.ecsv")) == 0
    import json

    ccds = json.loads((out / "provenance.json").read_text())["ccds"]
    # the ~1200 hot pixels of each image were seen (masked as sharper than the PSF) and told from sources
    assert all(c["sharp_pixel_fraction"] * 768**2 >= 1000 for c in ccds)


def test_a_warning_on_a_dask_worker_is_logged_and_counted(scene, tmp_path, capsys):
    """Campaign 32: with ``--workers 2`` a warning said inside a worker (a CCD skipped as all NaN) reached stderr
    unprefixed, was missing from run.log and was not counted (exit 0; serially 1)."""
    pytest.importorskip("dask.distributed")
    src = _copy(scene, tmp_path)
    with fits.open(src / "exp_01.fits", mode="update") as hdul:
        hdul["1-1.SCI"].data[:] = np.nan
    out = tmp_path / "out"
    code = main(["run", str(src), "--out", str(out), "--workers", "2"])
    err = capsys.readouterr().err.splitlines()
    said = [line for line in err if "all its pixels are NaN" in line]
    assert code == 1
    assert len(said) == 1 and said[0].startswith("WARNING ssodetect") and "exp_01.fits" in said[0]
    assert sum("all its pixels are NaN" in line for line in (out / "run.log").read_text().splitlines()) == 1
