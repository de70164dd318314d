"""Fault campaign 22 (about 1,240 cases on commit 353eb00): the defects found, fixed and tested here."""
from __future__ import annotations

import pytest

from faultkit import cli
from ssodetect.config import Config, load_config
from ssodetect.errors import ConfigError


def test_simulate_takes_negative_zero_and_refuses_a_fast_population_below_the_slow_one(tmp_path, capsys):
    """D1, D2: ``--dither -0.0`` passed ``ge=0`` and numpy refused it as a negative scale; ``--fast-rate-max 5`` drew
    the fast movers between 10 and 5"/h: both internal errors (exit 3)."""
    res = cli(capsys, "simulate", "--size", "128", "--n-exposures", "2", "--movers-per-ccd", "2000", "--dither",
              "-0.0", tmp_path / "d1")
    assert res.code == 0, res.err
    res = cli(capsys, "simulate", "--size", "128", "--n-exposures", "2", "--fast-rate-max", "5", tmp_path / "d2")
    assert res.code == 2 and res.errors == [
        "ssodetect: error: simulate: invalid parameters (fast_rate_max (5) must be at least slow_rate_max (10 "
        "arcsec/h), where the fast movers begin)"], res.err
    assert not (tmp_path / "d2").exists()


def test_the_console_answers_odd_listing_offsets_and_overlong_run_names_without_a_server_error(tmp_path):
    """D3, D4: ``/?offset=99999999999999999999`` overflowed SQLite and ``/runs/`` + 5000 characters overflowed the
    file system's name length: both HTTP 500 with a traceback.  Clamped (200) and "not a run directory" (404)."""
    pytest.importorskip("starlette")
    pytest.importorskip("httpx2")
    from starlette.testclient import TestClient

    from ssodetect.console.app import create_app

    root = tmp_path / "root"
    root.mkdir()
    with TestClient(create_app(root, start_workers=False), base_url="http://127.0.0.1") as client:
        assert client.get("/?offset=99999999999999999999").status_code == 200
        for name in ("a" * 5000, "a/" * 2100):
            page = client.get("/runs/" + name)
            assert page.status_code == 404 and "not a run directory" in page.text


@pytest.mark.parametrize("section, key, value, said", [
    ("detect", "psf_fwhm", 1e-320, "1e-320 is outside any sensible range"),
    ("detect", "psf_fwhm", 1e-5, "1e-05 px: 0 (measured) or at least 0.5 px"),
    ("link", "position_floor", 1e308, "less than or equal to 20"),
    ("link", "detector_static_radius", 1e308, "less than or equal to 50"),
    ("link", "max_rate", 1e300, "outside any sensible range"),
])
def test_values_no_run_can_use_are_refused_when_the_file_is_read(tmp_path, section, key, value, said):
    """D5: a denormal PSF FWHM, a position floor of 1e308 and the like were accepted; the run found nothing, with
    numpy overflow warnings for all explanation.  Refused at load, naming the file and the key."""
    path = tmp_path / "c.toml"
    path.write_text(f"[{section}]\n{key} = {value!r}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: ") and f"{section}.{key}" in text and said in text, text


def test_the_python_api_names_arguments_of_the_wrong_type(tmp_path):
    """D6, D7: ``load_config(b"...")`` and ``simulate({}, ...)`` raised Python's own TypeError and AttributeError;
    ``run_pipeline(command="ab")`` recorded the command one character per argument."""
    from ssodetect.pipeline import run_pipeline
    from ssodetect.simulate import simulate

    with pytest.raises(ConfigError, match="is no path of a configuration file"):
        load_config(b"/x.toml")
    with pytest.raises(ConfigError, match="the configuration must be a SimulationConfig, not dict"):
        simulate({}, tmp_path / "s")
    with pytest.raises(ConfigError, match="the command line as a list of str"):
        run_pipeline([tmp_path], tmp_path / "out", command="ab")
    assert not (tmp_path / "s").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("option, said", [
    ("--refcat", "ssodetect: error: ' ': an empty reference catalogue name"),
    ("--station", "ssodetect: error: --station ' ': station ' ' is not an MPC observatory code"),
    ("--scheduler", "ssodetect: error: dask scheduler ' ': not an address"),
])
def test_a_blank_option_value_is_shown_as_a_value(scene, tmp_path, capsys, option, said):
    """D8: ``--refcat ' '`` said ": reference catalogue not found" (the name lost), ``--station ' '`` showed the
    value twice and raw, ``--scheduler ' '`` raw."""
    res = cli(capsys, "run", scene, "--out", tmp_path / "x", option, " ")
    assert res.code == 2 and res.errors[0].startswith(said), res.err
    assert not (tmp_path / "x").exists()


def test_a_watched_visit_needs_a_number_of_exposures_it_can_have(tmp_path, capsys):
    """D9: ``--watch-exposures 99999999999999999999`` started a console whose visits could never be complete."""
    (tmp_path / "inbox").mkdir()
    res = cli(capsys, "watch", tmp_path / "inbox", "--root", tmp_path / "root", "--once", "--exposures",
              "99999999999999999999")
    assert res.code == 2 and res.errors == ["ssodetect: error: watch: --exposures 99999999999999999999: must be 1 to "
                                            "10000"], res.err


def test_the_defaults_and_the_built_in_profiles_keep_within_the_new_bounds():
    """The bounds of D5 refuse no default and no setting of a built-in profile (each is validated as it loads)."""
    from ssodetect.profiles import builtin_profiles

    assert Config().detect.psf_fwhm == 0.0
    assert set(builtin_profiles()) == {"euclid_vis", "ground_ccd", "small_space", "wise"}
