import pytest

from ssodetect.config import Config, dump_toml, load_config
from ssodetect.errors import ConfigError


def test_dump_roundtrip(tmp_path):
    config = Config()
    config.link.max_rate = 20.0
    config.io.time_keys = ["DATE-OBS"]
    path = tmp_path / "c.toml"
    path.write_text(dump_toml(config))
    assert load_config(path) == config


def test_dump_is_documented():
    text = dump_toml(Config())
    for section in ("[io]", "[detect]", "[link]", "[report]", "[execution]"):
        assert section in text
    assert "# Detection threshold in sigma" in text


def test_unknown_key_is_an_error(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[link]\nmax_rat = 3\n")
    with pytest.raises(ConfigError, match="max_rat"):
        load_config(path)


def test_invalid_values_are_errors(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[link]\nmin_rate = 5\nmax_rate = 2\n")
    with pytest.raises(ConfigError, match="max_rate must exceed min_rate"):
        load_config(path)
    path.write_text("not toml [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


@pytest.mark.parametrize("text, setting", [
    ('[report]\ncomment = "line1\\nline2|x\\n# version=2017"\n', "comment"),
    ('[report]\ntelescope_name = "T\\nCOD 500"\n', "telescope_name"),
    ('[report]\nsubmitter = "a\\u0000b"\n', "submitter"),
    ('[report]\nobservers = ["A. Observer", "B.\\tTab"]\n', "observers"),
    ('[report]\nband = "V|X"\n', "band"),
    ("[detect]\nbackground_box = 1000000000\n", "background_box"),
    ("[detect]\ndeblend_nthresh = 100000000\n", "deblend_nthresh"),
    ("[execution]\nworkers = 100000\n", "workers"),
    # eighth campaign (N12, N17): a right-to-left override, NUL in a header keyword, ESC in a scheduler address,
    # no time keyword at all
    ('[report]\nmeasurers = ["A. \\u202eB"]\n', "measurers"),
    ('[io]\ndetector_keys = ["DET\\u0000"]\n', "detector_keys"),
    ('[execution]\nscheduler = "tcp://x\\u001b[31m:8786"\n', "scheduler"),
    ("[io]\ntime_keys = []\n", "time_keys"),
    ("[report]\ntelescope_aperture = 1e30\n", "telescope_aperture"),
])
def test_settings_that_break_a_report_or_the_machine_are_refused_at_load(tmp_path, text, setting):
    """Seventh campaign: a newline in [report] free text was written raw into the ADES PSV and MPC files (extra
    lines, a second version header), a NUL made observations.xml ill-formed, band = "V|X" added a PSV field (exit 3
    after the whole run), background_box = 1e9 was a MemoryError and deblend_nthresh = 1e8 killed the process
    (SIGABRT in sep).  Each is refused when the configuration is read, naming the setting."""
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=setting):
        load_config(path)


@pytest.mark.parametrize("text, setting, said", [
    ('[detect]\nthreshold = "3"\n', "threshold", "'3' is text (quoted), not a number"),
    ("[detect]\nthreshold = true\n", "threshold", "True is a logical value, not a number"),
    ('[astrometry]\npixel_scale_range = ["0.09", 0.11]\n', "pixel_scale_range", "'0.09' is text"),
])
def test_a_quoted_number_is_refused_not_coerced(tmp_path, text, setting, said):
    """Fault campaigns: lax validation took the text "3" (and true) as a number without a word; a setting whose type
    is a number (or a list of numbers) is refused when the file gives it text or a logical value.  Numbers stay
    accepted, and text stays accepted where the setting may be text ("auto")."""
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=setting) as err:
        load_config(path)
    assert said in str(err.value)
    path.write_text('[detect]\nthreshold = 3\n[astrometry]\ntrailed_stars = "auto"\npixel_scale_range = [0.09, 0.11]\n')
    config = load_config(path)
    assert config.detect.threshold == 3.0 and config.astrometry.trailed_stars == "auto"


@pytest.mark.parametrize("value", ["yes", "no", 1, 0, "true"])
def test_a_true_or_false_setting_refuses_text_and_numbers(value):
    """keep = "no" was read as true by lax validation; a setting with words besides (trailed_stars = "auto") takes
    its words and true or false only."""
    import pydantic

    from ssodetect.config import Config

    config = Config()
    with pytest.raises(pydantic.ValidationError, match="not true or false"):
        config.intermediate.keep = value
    with pytest.raises(pydantic.ValidationError, match="not true or false or 'auto'"):
        config.astrometry.trailed_stars = value
    config.astrometry.trailed_stars = "auto"
    config.intermediate.keep = False
    assert config.astrometry.trailed_stars == "auto" and config.intermediate.keep is False
