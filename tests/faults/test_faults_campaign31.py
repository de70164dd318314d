"""Fault campaign 31 (about 200 cases on commit 403017b): the defects found, fixed and tested here (dataset labels
in tests/test_ml.py)."""
from __future__ import annotations

import shutil

import pytest

from faultkit import cli
from ssodetect.errors import ConfigError, InputError
from ssodetect.pipeline.astrometry import check_header_stems


def test_two_inputs_whose_refined_headers_share_a_name_are_refused(scene, tmp_path, capsys):
    """`astrometry d/a.fits d/sub/a.fits d/b.fits` wrote one a.head for two exposures ("3/3 solved", exit 0), or
    with --format fits was an internal error; refused before any work, naming both files."""
    (tmp_path / "d" / "sub").mkdir(parents=True)
    frames = sorted(scene.glob("exp_*.fits"))
    shutil.copy(frames[0], tmp_path / "d" / "a.fits")
    shutil.copy(frames[1], tmp_path / "d" / "sub" / "a.fits")
    shutil.copy(frames[2], tmp_path / "d" / "b.fits")
    for fmt in ("head", "fits"):
        outcome = cli(capsys, "astrometry", tmp_path / "d" / "a.fits", tmp_path / "d" / "sub" / "a.fits",
                      tmp_path / "d" / "b.fits", "--refcat", scene / "refcat.ecsv", "--out", tmp_path / f"A{fmt}",
                      "--format", fmt)
        assert outcome.code == 2 and len(outcome.errors) == 1, outcome.err
        assert "a.head" in outcome.errors[0] and "sub" in outcome.errors[0]
        assert not (tmp_path / f"A{fmt}").exists()
    with pytest.raises(InputError, match="x.head"):
        check_header_stems(["p/x.fits", "q/x.fits.fz"])
    check_header_stems(["p/x.fits", "p/y.fits", "p/x.fits"])  # one file named twice is one file


def test_a_model_with_weights_that_are_no_numbers_is_refused(tmp_path):
    """A model whose weights were NaN scored every sequence NaN: "4 at or above 0.50" from ml predict and every
    object kept by vetting, exit 0.  Refused when loaded, naming the file."""
    torch = pytest.importorskip("torch")
    from ssodetect.ml.model import MoverNet, load_model, save_model

    arch = {"filters": [4, 8], "dropout": 0.3, "size": 16, "mode": "diff"}
    model = MoverNet((4, 8), 0.3)
    save_model(tmp_path / "good.pt", model, arch)
    load_model(tmp_path / "good.pt")
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.fill_(float("nan"))
    save_model(tmp_path / "nan.pt", model, arch)
    with pytest.raises(InputError, match="nan.pt: model weights that are no finite numbers"):
        load_model(tmp_path / "nan.pt")


def test_config_file_naming_a_device_or_a_missing_file_is_refused(tmp_path, capsys):
    """`config --file` said a file naming /dev/zero as a bias (or a missing orbit file) was fine; run refused it."""
    for text, said in (('[calibrate]\nbias = ["/dev/zero"]\n', "not a regular file"),
                       (f'[known]\norbits = ["{tmp_path / "none.txt"}"]\n', "not found")):
        path = tmp_path / "c.toml"
        path.write_text(text)
        outcome = cli(capsys, "config", "--file", path)
        assert outcome.code == 2 and len(outcome.errors) == 1 and said in outcome.errors[0], outcome.err


@pytest.mark.parametrize("changes, said", [({"dec": 95.0}, "dec"), ({"start": "yesterday"}, "start"),
                                           ({"pixel_scale": 1e-9}, "pixel_scale"), ({"pixel_scale": 1e6},
                                                                                    "pixel_scale")])
def test_simulation_settings_out_of_any_sense_are_refused(changes, said):
    """SimulationConfig(dec=95) wrote a header at Dec 95 and a WCS at (330, 85); start='yesterday' and the pixel
    scales 1e-9 and 1e6 were astropy's and numpy's bare errors (a 368 TiB allocation)."""
    from pydantic import ValidationError

    from ssodetect.simulate import SimulationConfig

    with pytest.raises(ValidationError, match=said):
        SimulationConfig(**changes)


def test_run_pipeline_refuses_a_reuse_that_is_no_truth_value(scene, tmp_path):
    from ssodetect.pipeline import run_pipeline

    with pytest.raises(ConfigError, match="reuse 'no'"):
        run_pipeline([scene], tmp_path / "out", reuse="no")
    assert not (tmp_path / "out").exists()


def test_a_nan_setting_is_said_to_be_no_number():
    """`--snr-min nan` was refused as "should be <= 100000": a NaN is now said to be no finite number."""
    from pydantic import ValidationError

    from ssodetect.config import validation_problems
    from ssodetect.ml.dataset import DatasetConfig

    with pytest.raises(ValidationError) as info:
        DatasetConfig(snr_min=float("nan"))
    assert validation_problems(info.value) == "snr_min: must be a finite number, not nan"


def test_stopping_early_into_a_finished_run_says_it_replaces_it(good_run, tmp_path, capsys, scene):
    """`run --to-step detect` into a finished run replaced it whole (its report, ADES and MPC files gone) without a
    word; it still does (a run replaces OUTDIR whole) but says so in a warning (exit 1)."""
    from faultkit import copy_run

    copy = copy_run(good_run.out, tmp_path / "out")
    outcome = cli(capsys, "run", scene, "--out", copy, "--to-step", "detect")
    assert outcome.code == 1 and any("holds a finished run's reports" in w for w in outcome.warnings), outcome.err
    assert not (copy / "report.html").exists()


@pytest.mark.parametrize("shape", [(3, 3), (1, 512), (512, 15)])
def test_a_frame_too_small_to_search_is_skipped_and_said(tmp_path, shape, caplog):
    """1x512 and 3x3 frames ran to 0 detections without a word: skipped with a warning naming the size."""
    import numpy as np
    from astropy.io import fits

    from ssodetect.config import Config
    from ssodetect.io import scan_inputs
    from ssodetect.pipeline.ccd import process_ccd

    path = tmp_path / "tiny.fits"
    data = np.random.default_rng(1).normal(100.0, 5.0, shape).astype(np.float32)
    fits.PrimaryHDU(data, fits.Header({"EXPTIME": 60.0, "DATE-OBS": "2024-01-01T00:00:00"})).writeto(path)
    with caplog.at_level("WARNING"):
        table, info = process_ccd(scan_inputs([path], Config().io)[0], Config(), require_wcs=False)
    assert len(table) == 0 and "too small" in info["skipped"] and "too small" in caplog.text


def test_a_reference_catalogue_listing_stars_twice_keeps_each_once(scene, tmp_path, caplog):
    """A catalogue whose rows were repeated 50 times was used as it was (matched stars 13 -> 58): each star is now
    kept once, said in a warning."""
    from astropy.table import Table, vstack

    from ssodetect.astrometry.refcat import load_reference_catalogue

    ref = Table.read(scene / "refcat.ecsv")
    doubled = vstack([ref, ref[:10]])
    doubled.write(tmp_path / "doubled.ecsv", format="ascii.ecsv")
    with caplog.at_level("WARNING"):
        loaded = load_reference_catalogue(tmp_path / "doubled.ecsv")
    assert len(loaded) == len(ref) and "10 rows repeat the position" in caplog.text
    assert len(load_reference_catalogue(scene / "refcat.ecsv")) == len(ref)
