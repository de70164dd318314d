"""Fault campaign 23 (about 70 cases on commit c686391): the defects found, fixed and tested here (D1, the parallax
extension with positions that give no parallax, is in ``tests/test_parallax.py``; D4, scores inside a run's
directory, in ``test_faults_campaign11.py``)."""
from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from faultkit import cli
from ssodetect.config import Config, load_config
from ssodetect.errors import ConfigError, InputError
from ssodetect.io import scan_inputs


def _frame(path, **cards):
    header = fits.Header()
    header["DATE-OBS"] = "2021-11-12T23:45:50"
    header["EXPTIME"] = 60.0
    for key, value in cards.items():
        header[key] = value
    fits.PrimaryHDU(data=np.zeros((16, 16), np.float32), header=header).writeto(path)
    return path


@pytest.mark.parametrize("cards, said", [
    (dict(OBSPOS_X=0.0, OBSPOS_Y=0.0, OBSPOS_Z=0.0), "put the observer 0 km from the Earth's centre, inside the Earth"),
    (dict(OBSPOS_X=1000.0, OBSPOS_Y=0.0, OBSPOS_Z=0.0), "1000 km from the Earth's centre, inside the Earth"),
    (dict(OBSPOS_X=True, OBSPOS_Y=False, OBSPOS_Z=True), "must all be numbers (km)"),
    (dict(OBSPOS_X=7000.0), "observer position keyword(s) OBSPOS_Y, OBSPOS_Z missing beside OBSPOS_X"),
])
def test_an_observer_position_no_spacecraft_can_have_is_refused_naming_the_file(tmp_path, cards, said):
    """D2, D6: (0, 0, 0) or 1000 km was reported in ADES as a spacecraft at (or inside) the geocentre; logical T/F
    were read as 1 and 0 km (exit 0); a lone OBSPOS_X was said as "must all be numbers"."""
    path = _frame(tmp_path / "f.fits", **cards)
    with pytest.raises(InputError) as caught:
        scan_inputs([path], Config().io)
    assert str(caught.value).startswith(f"{path}: ") and said in str(caught.value), str(caught.value)


def test_a_configured_observer_inside_the_earth_is_refused(tmp_path):
    """D2: ``[report] observer_position = [0, 0, 0]`` was accepted."""
    path = tmp_path / "c.toml"
    path.write_text("[report]\nobserver_position = [0.0, 0.0, 0.0]\n")
    with pytest.raises(ConfigError, match="is no geocentric position of a spacecraft: finite, 6300 to"):
        load_config(path)
    path.write_text("[report]\nobserver_position = [7000.0, 0.0, 0.0]\n")
    assert load_config(path).report.observer_position == [7000.0, 0.0, 0.0]


def test_a_users_own_file_named_like_a_product_makes_no_directory_kind(tmp_path, capsys):
    """D3: a ``manifest.json`` (or ``model.pt``, ``steps``) of the user's in a parent folder made every output below
    it "inside a run" and refused; only names a products record of ssodetect's lists tell a kind."""
    project = tmp_path / "proj"
    project.mkdir()
    (project / "manifest.json").write_text("{}")
    (project / "model.pt").write_bytes(b"mine")
    res = cli(capsys, "simulate", "--size", "128", "--n-exposures", "2", "--movers-per-ccd", "2000",
              project / "scene")
    assert res.code == 0, res.err
    assert (project / "scene" / "truth.ecsv").is_file() and (project / "model.pt").read_bytes() == b"mine"


def test_a_step_that_cannot_be_reused_names_the_products_that_changed():
    """D5: "the products of an earlier step it reads" named nothing; the products whose steps changed are named."""
    from ssodetect.pipeline.steps import what_changed

    record = {"version": "1", "config": {"detect": {"threshold": 1.5}}, "upstream": {"exposures": "a", "masters": "b"}}
    said = what_changed(record, {"version": "1", "config": {"detect": {"threshold": 1.5}},
                                 "upstream": {"exposures": "c", "masters": "b"}})
    assert said == ("changed since its products were stored: the products it reads from earlier steps (exposures: "
                    "their steps' settings or input files changed)")
