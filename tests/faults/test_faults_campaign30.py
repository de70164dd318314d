"""Fault campaign 30 (about 81 cases on commit f77d23b): the defects found, fixed and tested here (the batch
state's profile is in tests/test_batch.py, the cache key's creation in test_faults_cache.py)."""
from __future__ import annotations

import pytest
from astropy.io import fits

from faultkit import cli, copy_run
from ssodetect.io.headers import MAX_SIP_ORDER, celestial_wcs


def _sip_header(order):
    header = fits.Header({"CTYPE1": "RA---TAN-SIP", "CTYPE2": "DEC--TAN-SIP", "CRVAL1": 150.0, "CRVAL2": 2.0,
                          "CRPIX1": 256.5, "CRPIX2": 256.5, "CD1_1": -2.8e-5, "CD1_2": 0.0, "CD2_1": 0.0,
                          "CD2_2": 2.8e-5, "A_ORDER": order, "B_ORDER": order, "A_2_0": 1e-9, "B_0_2": 1e-9})
    return header


@pytest.mark.parametrize("order", [MAX_SIP_ORDER + 1, 5000, -1, 2.5, "3", True])
def test_an_absurd_sip_order_makes_the_wcs_unusable_at_once(order):
    """A header with A_ORDER = 5000 held a run for more than 5 minutes and 1.3 GB (every coefficient is evaluated at
    every pixel mapped); an order that is no integer of 0-MAX_SIP_ORDER now makes the WCS unusable, said."""
    wcs, reason = celestial_wcs(_sip_header(order), shape=(512, 512))
    assert wcs is None and "A_ORDER" in reason and "SIP order" in reason


def test_a_plausible_sip_order_is_read():
    wcs, reason = celestial_wcs(_sip_header(3), shape=(512, 512))
    assert wcs is not None and reason == "" and wcs.sip is not None


def test_a_line_break_in_a_printed_path_cannot_forge_a_line(good_run, scene, tmp_path, capsys):
    """`run --out "$(printf 'nl\\nFAKE LINE: 0 objects')"` printed a line of its own starting "FAKE LINE"; a value's
    line break is now shown as an escape like every other control character."""
    copy = copy_run(good_run.out, tmp_path / "nl\nFAKE LINE: 0 objects")
    outcome = cli(capsys, "evaluate", copy, scene / "truth.ecsv")
    assert outcome.code in (0, 1), outcome.err
    assert outcome.out and not any(line.startswith("FAKE LINE") for line in outcome.out)
    assert any("nl\\nFAKE LINE" in line for line in outcome.out)
