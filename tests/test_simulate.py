"""The simulator's PSFs and the randomised scene family, against their definitions."""
import math

import numpy as np
import pytest

from ssodetect.cli import main
from ssodetect.simulate import (REPORT_MEMBERS, TUNING_MEMBERS, DoubleGaussianPSF, MoffatPSF, SimulationConfig,
                                family_member, splat, splat_reference)
from ssodetect.simulate.render import psf_stamp


@pytest.mark.parametrize("beta", [2.0, 3.0, 5.0])
def test_moffat_mixture_follows_the_analytic_profile(beta):
    """The Gaussian mixture reproduces (1 + r^2/alpha^2)^-beta within 1 % out to 12 px, its FWHM is the one asked
    for, and its flux on the stamp is what the profile holds there."""
    psf = MoffatPSF(fwhm=1.8, beta=beta)
    sx, _, w = psf.components()
    r = np.array([0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 12.0])
    mixture = np.array([np.sum(w / (2 * np.pi * sx**2) * np.exp(-rr**2 / (2 * sx**2))) for rr in r])
    assert np.max(np.abs(mixture / psf.profile(r) - 1.0)) < 0.01
    assert psf.profile(0.9) == pytest.approx(0.5 * psf.profile(0.0), rel=1e-9)  # FWHM 1.8 px
    inside = 1.0 - (1.0 + (psf.radius / psf.alpha) ** 2) ** (1.0 - beta)  # flux within the stamp's half-size
    assert psf_stamp(psf).sum() == pytest.approx(inside, abs=0.01)


def test_splat_kernel_matches_its_reference_for_every_psf():
    rng = np.random.default_rng(3)
    xs, ys, fl = rng.uniform(-5, 69, 30), rng.uniform(-5, 69, 30), rng.uniform(10, 1000, 30)
    for psf in (DoubleGaussianPSF(fwhm=1.6, ellipticity=0.05), MoffatPSF(fwhm=2.0, beta=2.5, ellipticity=-0.07)):
        a, b = np.zeros((64, 64)), np.zeros((64, 64))
        splat(a, xs, ys, fl, psf)
        splat_reference(b, xs, ys, fl, psf)
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
    # an elongated PSF is wider along x than along y
    stamp = psf_stamp(MoffatPSF(fwhm=2.0, beta=3.0, ellipticity=0.2))
    c = stamp.shape[0] // 2
    assert stamp[c, c + 2] > 1.5 * stamp[c + 2, c]


def test_family_members_are_reproducible_varied_and_within_their_ranges():
    assert set(TUNING_MEMBERS).isdisjoint(REPORT_MEMBERS) and len(REPORT_MEMBERS) >= 8
    members = [family_member(m) for m in range(40)]
    assert family_member(7) == family_member(7) and family_member(7) != family_member(8)
    assert len({m.seed for m in members}) == 40
    for cfg in members:
        assert 1.4 <= cfg.fwhm_min <= cfg.fwhm_max <= 2.2
        assert 0.3 * 40000 <= cfg.star_density <= 10 * 40000
        assert 0.01 <= cfg.cosmic_fraction <= 0.04 and cfg.hot_flagged <= 0.5
        assert 5.0 <= cfg.movers_per_ccd <= 100.0 and cfg.fast_rate_max == 80.0 and cfg.slow_rate_min == 0.5
        assert (cfg.header_pointing_error, cfg.header_rotation_error, cfg.header_scale_error) == (20.0, 0.5, 0.005)
        assert cfg.header_errors_at_max and cfg.sersic_max == 4.0
    for field, values in (("psf_model", {"moffat", "double_gaussian"}), ("mover_directions", {"uniform", "ecliptic"}),
                          ("spikes", {True, False})):
        assert {getattr(m, field) for m in members} == values
    assert family_member(3, nccd=1, movers_per_ccd=60.0).movers_per_ccd == 60.0


def test_family_member_scene_from_the_command_line(tmp_path, capsys):
    """A member drawn from the command line: its recipe in the truth, directions clustered along its ecliptic, the
    headers off by the family's 20", 0.5 deg and 0.5 %."""
    from astropy.io import fits
    from astropy.table import Table
    from astropy.wcs import WCS

    member = next(m for m in range(20) if family_member(m).mover_directions == "ecliptic")
    out = tmp_path / "sim"
    assert main(["simulate", str(out), "--family-member", str(member), "--nccd", "1", "--size", "512",
                 "--movers-per-ccd", "800", "-q"]) == 0
    truth = Table.read(out / "truth.ecsv")
    sim = truth.meta["simulation"]
    assert sim["family_member"] == member and sim["seed"] == family_member(member).seed
    pa = np.asarray(truth["pa"], float)[::sim["n_exposures"]]
    off = np.abs((pa - sim["ecliptic_pa"] + 90.0) % 180.0 - 90.0)  # about the axis, either way along it
    assert np.median(off) < 3.0 * sim["direction_spread"]
    wcs_true = {int(r["exposure"]): WCS(fits.Header.fromstring(r["wcs_header"])) for r in Table.read(out / "truth_wcs.ecsv")}
    for e in range(sim["n_exposures"]):
        header = WCS(fits.getheader(out / f"exp_{e:02d}.fits", 1))
        ra_h, dec_h = header.all_pix2world([255.5], [255.5], 0)
        ra_t, dec_t = wcs_true[e].all_pix2world([255.5], [255.5], 0)
        shift = 3600.0 * math.hypot((ra_h[0] - ra_t[0]) * math.cos(math.radians(dec_t[0])), dec_h[0] - dec_t[0])
        assert 15.0 < shift < 25.0  # 20" of pointing error, a little rotation and scale at the centre offset
    assert main(["simulate", str(tmp_path / "bad"), "--family-member", "-1", "-q"]) == 2
    assert "family-member" in capsys.readouterr().err


def test_default_scene_is_unchanged_by_the_new_options():
    """A scene at the defaults does not depend on the options added for the family (their random draws are
    separate), so earlier seeds still give the same scenes."""
    from ssodetect.simulate import draw_scene

    a = draw_scene(SimulationConfig(seed=4, nx=512, ny=512))
    # the values the simulator drew for this seed before the family's options existed (commit 3235bb6)
    np.testing.assert_allclose(a.stars["xi"][:3], [36.894851, -25.811913, -14.270537], atol=1e-6)
    np.testing.assert_allclose(a.movers["rate"][:3], [0.833873, 0.897484, 6.78941], atol=1e-6)
    np.testing.assert_allclose(a.movers["pa"][:3], [354.528697, 126.212841, 352.252016], atol=1e-6)
    np.testing.assert_allclose(a.galaxies["mag"][:3], [24.415448, 21.497726, 24.387544], atol=1e-6)
    b = draw_scene(SimulationConfig(seed=4, nx=512, ny=512, sersic_min=0.5, sersic_max=4.0, mover_directions="ecliptic"))
    np.testing.assert_array_equal(a.stars["xi"], b.stars["xi"])
    np.testing.assert_array_equal(a.movers["rate"], b.movers["rate"])
    np.testing.assert_array_equal(a.galaxies["mag"], b.galaxies["mag"])
    assert not np.array_equal(a.movers["pa"], b.movers["pa"])
