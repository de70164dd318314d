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
