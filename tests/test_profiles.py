"""Instrument profiles: the automatic choice from the headers, precedence, scale rules and bad profiles."""
import json

import pytest

from ssodetect.cli import main
from ssodetect.config import Config, load_config
from ssodetect.errors import ConfigError
from ssodetect.profiles import SequenceFacts, apply_profile, builtin_profiles, choose_profile, resolve_profile
from ssodetect.simulate import SimulationConfig, simulate


def _facts(telescope="", instrument="", scale=1.0, n=20, cadence_h=0.05, side=1024, space=False):
    return SequenceFacts(path="frame.fits", telescope=telescope, instrument=instrument, pixel_scale=scale,
                         n_exposures=n, cadence_h=cadence_h, span_h=cadence_h * (n - 1), field_arcsec=side * scale,
                         space=space)


@pytest.mark.parametrize("facts, expected", [
    (_facts("EUCLID", "VIS", scale=0.1, n=4, cadence_h=0.3, side=4096, space=True), "euclid_vis"),
    (_facts("C14", "SBIG STL-1001 3 CCD Camera", scale=1.27, n=25), "ground_ccd"),
    (_facts("", "", scale=0.6, n=8), "ground_ccd"),  # no names at all: matched by its numbers
    (_facts("NEOSSat", "NEOSSat_Science", scale=3.0, n=43, space=True), "small_space"),
    (_facts("WISE", "", scale=2.75, n=7, space=True), "wise"),
    (_facts("Wise 1m", "", scale=0.7, n=12), "wise"),  # a whole word: the Wise Observatory needs --profile
    (_facts("OTWISEX", "", scale=0.7, n=12), "ground_ccd"),  # not a word of it
    (_facts("Hubble", "WFC3", scale=0.04, n=6, space=True), None),  # a spacecraft nobody made a profile for
    (_facts("C14", "", scale=1.27, n=4), None),  # too few exposures for a ground sequence
    (_facts("", "", scale=0.2, n=30), None),  # sub-arcsecond sampling is not a seeing-limited ground CCD
])
def test_the_profile_is_chosen_from_the_headers(facts, expected):
    profile, reason = choose_profile(facts, builtin_profiles())
    assert (profile.name if profile else None) == expected, reason
    assert facts.telescope in reason  # the log line says what it was chosen by


def test_a_header_matching_two_profiles_of_the_same_rank_is_refused(tmp_path):
    profiles = builtin_profiles()
    (tmp_path / "c14.toml").write_text('[match]\ntelescope = ["C14"]\n[settings.link]\nmax_rate = 30.0\n')
    (tmp_path / "sbig.toml").write_text('[match]\ninstrument = ["SBIG"]\n')
    from ssodetect.profiles import load_profile

    one = {**profiles, "c14": load_profile(tmp_path / "c14.toml")}
    chosen, _ = choose_profile(_facts("C14", "SBIG STL-1001", scale=1.27, n=25), one)
    assert chosen.name == "c14"  # a match by name outranks ground_ccd's match by numbers
    two = {**one, "sbig": load_profile(tmp_path / "sbig.toml")}
    with pytest.raises(ConfigError, match=r"frame\.fits: header matches the profiles c14 and sbig"):
        choose_profile(_facts("C14", "SBIG STL-1001", scale=1.27, n=25), two)


def test_profile_settings_scale_with_the_sequence_and_never_override_the_user():
    ground = builtin_profiles()["ground_ccd"]
    config, applied = apply_profile(Config(), ground, _facts("C14", scale=1.27, n=25))
    assert config.link.max_rate == 60.0 and config.link.min_snr == 3.0 and config.link.min_total_snr == 20.0
    assert config.link.min_detections == 5 and config.streaks.min_exposures == 3  # ceil(0.2 * 25); a long sequence
    assert applied["link.min_detections"] == 5 and config.profile.name == "ground_ccd"
    assert apply_profile(Config(), ground, _facts(n=67))[0].link.min_detections == 8  # the range's top
    assert apply_profile(Config(), ground, _facts(n=6))[0].link.min_detections == 3
    user = Config.model_validate({"link": {"max_rate": 25.0, "min_detections": 4}})
    mine, applied = apply_profile(user, ground, _facts(n=25))
    assert mine.link.max_rate == 25.0 and mine.link.min_detections == 4  # the user's settings win
    assert "link.max_rate" not in applied and "link.min_detections" not in applied
    assert user.link.min_snr == Config().link.min_snr  # the user's configuration object is not modified
    # the rate cap: an object faster than the field's side per (min_detections - 1) exposures is never linked
    tiny, applied = apply_profile(Config(), None, _facts(scale=1.0, n=4, cadence_h=0.3, side=6))
    assert tiny.link.max_rate == pytest.approx(6.0 / (2 * 0.3), rel=1e-3) and "link.max_rate" in applied
    euclid, applied = apply_profile(Config(), builtin_profiles()["euclid_vis"],
                                    _facts("EUCLID", "VIS", scale=0.1, n=4, cadence_h=0.3, side=4096))
    assert euclid == Config.model_validate({"profile": {"name": "euclid_vis"}}) and applied == {}


@pytest.fixture(scope="module")
def ground_frames(tmp_path_factory):
    """Six 256² frames of a generic ground telescope at 1"/px, without a WCS in their headers."""
    folder = tmp_path_factory.mktemp("ground")
    simulate(SimulationConfig(seed=3, nccd=1, nx=256, ny=256, n_exposures=6, exptime=60.0, cadence=120.0,
                              pixel_scale=1.0, fwhm_min=2.0, fwhm_max=2.5, layout="plain", write_wcs=False,
                              satellite=False, movers_per_ccd=5.0, telescope="GROUND-1M", instrument="CCD"),
             folder, progress=False)
    return folder


def test_resolve_profile_reads_the_headers_and_honours_names_files_and_none(ground_frames, tmp_path):
    frames = sorted(ground_frames.glob("*.fits"))
    config, record = resolve_profile(Config(), frames)
    assert record["name"] == "ground_ccd" and record["chosen"] == "auto" and "GROUND-1M" in record["reason"]
    assert config.link.max_rate == 60.0 and config.profile.name == "ground_ccd"
    config, record = resolve_profile(Config.model_validate({"profile": {"name": "none"}}), frames)
    assert record["name"] == "none" and config.link.max_rate == Config().link.max_rate
    mine = tmp_path / "mine.toml"
    mine.write_text('[profile]\ndescription = "mine"\n[settings.link]\nmax_rate = 33.0\n')
    config, record = resolve_profile(Config.model_validate({"profile": {"name": str(mine)}}), frames)
    assert record["chosen"] == "named" and record["description"] == "mine" and config.link.max_rate == 33.0
    with pytest.raises(ConfigError, match="profile 'nosuch': no such profile"):
        resolve_profile(Config.model_validate({"profile": {"name": "nosuch"}}), frames)


@pytest.mark.parametrize("text, problem", [
    ("[settings.link]\nmax_rate = -1\n", "invalid profile settings"),
    ("[settings.io]\ndefault_gain = 2.0\n", "cannot set"),
    ("[match]\ntelescop = [\"X\"]\n", "unknown key"),
    ("[scale]\nmin_detections_range = [2, 9]\n", "min_detections_range"),
    ("[settings\n", "not a valid profile TOML"),
])
def test_a_bad_profile_is_one_line_naming_its_file(ground_frames, tmp_path, capsys, text, problem):
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    out = tmp_path / "out"
    assert main(["run", str(ground_frames), "--out", str(out), "--profile", str(bad), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and problem in err, err
    assert not out.exists()  # no partial output


def test_the_run_names_its_profile_in_the_log_manifest_and_saved_configuration(ground_frames, tmp_path):
    from ssodetect.pipeline import run_pipeline

    config = Config()
    config.execution.progress = False
    config.report.cutouts = False
    result = run_pipeline([ground_frames], tmp_path / "out", config)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["profile"]["name"] == "ground_ccd" and manifest["profile"]["applied"]["link.max_rate"] == 60.0
    assert "profile ground_ccd (auto)" in (tmp_path / "out" / "run.log").read_text()
    saved = load_config(tmp_path / "out" / "config.toml")
    assert saved.profile.name == "ground_ccd" and saved.link.max_rate == 60.0
    assert result.profile["name"] == "ground_ccd" and config.link.max_rate == Config().link.max_rate


def test_the_example_user_profile_is_chosen_by_name_over_the_ground_profile(monkeypatch):
    from pathlib import Path

    from ssodetect.profiles import _user_profiles

    examples = Path(__file__).resolve().parents[1] / "examples"
    monkeypatch.setenv("SSODETECT_PROFILE_PATH", str(examples))
    candidates = {**builtin_profiles(), **_user_profiles()}
    chosen, reason = choose_profile(_facts("C14", "SBIG STL-1001 3 CCD Camera", scale=1.27, n=25), candidates)
    assert chosen.name == "my_telescope_profile" and "by name" in reason
    config, applied = apply_profile(Config(), chosen, _facts("C14", scale=1.27, n=25))
    assert config.report.station == "810" and config.link.min_detections == 5



def test_the_rate_cap_applies_under_a_profile_and_never_below_the_slowest_rate(caplog):
    ground = builtin_profiles()["ground_ccd"]
    small = _facts("C14", scale=1.0, n=25, cadence_h=0.5, side=100)  # a 100" field, 5 detections 2 h apart
    config, applied = apply_profile(Config(), ground, small)
    assert config.link.max_rate == pytest.approx(100.0 / (4 * 0.5)) and applied["link.max_rate"] == 50.0
    user = Config.model_validate({"link": {"min_rate": 55.0, "max_rate": 80.0}})
    with caplog.at_level("INFO", logger="ssodetect.profiles"):
        mine, applied = apply_profile(user, ground, small)
    assert mine.link.max_rate == 80.0 and "link.max_rate" not in applied  # the user's, uncapped
    tiny = _facts("C14", scale=1.0, n=25, cadence_h=0.5, side=0.4)  # a cap of 0.2"/h, below min_rate 0.3"/h
    with caplog.at_level("INFO", logger="ssodetect.profiles"):
        mine, applied = apply_profile(Config(), ground, tiny)
    assert mine.link.max_rate == 60.0 and "below link.min_rate" in caplog.text


def test_a_profile_sets_a_rate_range_together_and_bad_combinations_name_its_file(tmp_path):
    from ssodetect.profiles import load_profile

    path = tmp_path / "fast.toml"
    path.write_text("[settings.link]\nmin_rate = 20.0\nmax_rate = 60.0\n")
    fast = load_profile(path)
    config, _ = apply_profile(Config(), fast, _facts(n=25))
    assert (config.link.min_rate, config.link.max_rate) == (20.0, 60.0)  # each alone is refused by the validator
    user = Config.model_validate({"link": {"max_rate": 10.0}})
    with pytest.raises(ConfigError, match=r"fast\.toml: its settings are refused"):
        apply_profile(user, fast, _facts(n=25))  # min_rate 20 above the user's max_rate 10
    assert set(user.link.model_fields_set) == {"max_rate"}
    resolved, _ = apply_profile(Config.model_validate({"link": {"min_snr": 4.0}}), fast, _facts(n=25))
    assert resolved.link.model_fields_set == {"min_snr"}  # what the user set stays marked as theirs alone
