"""Astrometric calibration against known truth: pattern matching, TAN+SIP fits, blind solving,
zero points, reference catalogues (ECSV/CSV/LDAC) and the ``astrometry`` command."""
import hashlib
import math

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from ssodetect.astrometry.match import PatternIndex, Similarity, match_offset, match_patterns
from ssodetect.astrometry.refcat import ldac_reference_table, load_reference_catalogue
from ssodetect.astrometry.solve import ExposureStars, solve_ccd
from ssodetect.astrometry.zeropoint import fit_zeropoint
from ssodetect.cli import main
from ssodetect.config import AstrometryConfig
from ssodetect.errors import InputError
from ssodetect.io.ldac import read_ldac, write_ldac
from ssodetect.simulate.starfield import distorted_wcs, perturbed_wcs, star_lists, wcs_difference

MJD = 61120.0  # 2026-03-21
NX = NY = 2048
ZP = 24.24


def test_pattern_match_recovers_offset_rotation_and_scale():
    rng = np.random.default_rng(1)
    ref = rng.uniform(-700, NX + 700, (90, 2))
    truth = Similarity(scale=1.03, rotation=2.0, parity=1, tx=450.0, ty=-380.0)  # ~1' offset at 0.1"/px
    # sources: 35 of the reference points seen through the inverse transform, plus 25 unrelated points
    src_true = ref[:35]
    z = (src_true[:, 0] - truth.tx) + 1j * (src_true[:, 1] - truth.ty)
    z /= truth.scale * np.exp(1j * math.radians(truth.rotation))
    src = np.vstack([np.column_stack([z.real, z.imag]) + rng.normal(0, 0.05, (35, 2)), rng.uniform(0, NX, (25, 2))])
    order = rng.permutation(len(src))
    result = match_patterns(
        src[order], PatternIndex(ref, n_ref=90), scale_range=(0.94, 1.06), max_rotation=3.0, max_shift=1000.0,
        match_radius=5.0, n_src=40,
    )
    assert result is not None and result.n_matched >= 30
    t = result.transform
    assert abs(t.scale - 1.03) < 1e-4 and abs(t.rotation - 2.0) < 0.01
    assert abs(t.tx - 450.0) < 0.5 and abs(t.ty + 380.0) < 0.5
    # every match is a true pair
    src_index = order[result.pairs[:, 0]]
    assert np.all(src_index < 35) and np.all(result.pairs[:, 1] == src_index)
    # unrelated point sets give no solution
    assert match_patterns(rng.uniform(0, NX, (40, 2)), PatternIndex(ref), scale_range=(0.94, 1.06),
                          max_rotation=3.0, match_radius=5.0) is None


@pytest.mark.parametrize("joint", [False, True])
def test_fit_reproduces_true_wcs_from_a_bad_header(joint):
    """Header off by 30" and 1 deg, no distortion in it; the fit must match the truth to <= 15 mas rms."""
    rng = np.random.default_rng(2)
    items, truths, cats = [], [], []
    for e in range(4):
        truth = distorted_wcs(crval=(150.0 + e * 2e-4, 25.0 - e * 1e-4))
        cat, sources = star_lists(rng, truth, n_ref=25)
        header = perturbed_wcs(truth, shift=(30.0 * (-1) ** e, -20.0), rotation=1.0 - 0.5 * e)
        items.append(ExposureStars(e, MJD, 566.0, (NY, NX), header, sources, zeropoint=ZP))
        truths.append(truth)
        cats.append(cat)
    config = AstrometryConfig(joint=joint)
    # one catalogue for all exposures (their stars differ here: each exposure sees its own field)
    from astropy.table import vstack
    solutions = solve_ccd("1-1", items, vstack(cats), config)
    for sol, truth in zip(solutions, truths):
        assert sol.ok, sol.reason
        assert sol.method == "header" and sol.n_stars >= 20
        err = wcs_difference(sol.wcs, truth)
        assert np.sqrt(np.mean(err**2)) <= 15.0, err.max()
        assert 25.0 < sol.header_offset < 45.0  # the header error was found (36" at the centre)
        assert abs(sol.zeropoint - ZP) < 0.01
        # the fit's own error estimate is realistic: the true error at the stars is of that order
        assert sol.wcs_error < 0.01


def test_blind_solve_without_header_and_its_failure_reason():
    rng = np.random.default_rng(3)
    truth = distorted_wcs(crval=(210.0, -40.0))
    cat, sources = star_lists(rng, truth, n_ref=20)
    far_truth = distorted_wcs(crval=(211.0, -40.5))  # a second patch of sky in the same catalogue
    far_cat, _ = star_lists(rng, far_truth, n_ref=40)
    from astropy.table import vstack
    catalogue = vstack([far_cat, cat])
    config = AstrometryConfig(pixel_scale_range=[0.05, 0.4])
    item = ExposureStars(0, MJD, 566.0, (NY, NX), None, sources, zeropoint=None)
    sol = solve_ccd("1-1", [item], catalogue, config)[0]
    assert sol.ok and sol.method == "blind", sol.reason
    assert np.sqrt(np.mean(wcs_difference(sol.wcs, truth) ** 2)) <= 15.0
    assert abs(sol.pixel_scale - 0.1) < 1e-4
    # a mirrored image (x flipped) solves too, with the opposite parity
    flipped = sources.copy()
    flipped["x"] = NX - 1 - flipped["x"]
    sol = solve_ccd("1-1", [ExposureStars(0, MJD, 566.0, (NY, NX), None, flipped)], catalogue, config)[0]
    assert sol.ok and np.linalg.det(sol.wcs.wcs.cd if sol.wcs.wcs.has_cd() else sol.wcs.pixel_scale_matrix) > 0
    # too few stars: a clear reason, no solution
    few = ExposureStars(0, MJD, 566.0, (NY, NX), None, sources[:4])
    sol = solve_ccd("1-1", [few], catalogue, config)[0]
    assert not sol.ok and sol.wcs is None and "star" in sol.reason


def test_a_header_turned_half_a_turn_is_solved_blind_and_said(caplog):
    """A header WCS rotated 180 deg (a camera mounted the other way) was solved blind without a word."""
    rng = np.random.default_rng(5)
    truth = distorted_wcs(crval=(210.0, -40.0))
    cat, sources = star_lists(rng, truth, n_ref=25)
    header = perturbed_wcs(truth, shift=(5.0, -3.0), rotation=180.0)
    config = AstrometryConfig(pixel_scale_range=[0.05, 0.4])
    with caplog.at_level("WARNING"):
        sol = solve_ccd("1-1", [ExposureStars(0, MJD, 566.0, (NY, NX), header, sources, zeropoint=None)], cat,
                        config)[0]
    assert sol.ok and sol.method == "blind", sol.reason
    assert np.sqrt(np.mean(wcs_difference(sol.wcs, truth) ** 2)) <= 15.0
    said = [r.getMessage() for r in caplog.records if "header WCS does not fit" in r.getMessage()]
    assert len(said) == 1 and "CCD 1-1 exposure 0" in said[0], said
    turn = float(said[0].split("turned ")[1].split(" deg")[0])
    assert abs(abs(turn) - 180.0) < 1.0, said[0]


def test_blind_solve_success_rate():
    """>= 99 % of CCDs with >= 15 catalogue stars solve blind (20 random fields here; the benchmark runs more)."""
    rng = np.random.default_rng(4)
    config = AstrometryConfig(pixel_scale_range=[0.08, 0.12])
    solved = 0
    for k in range(20):
        truth = distorted_wcs(crval=(rng.uniform(0, 360), rng.uniform(-60, 60)))
        cat, sources = star_lists(rng, truth, n_ref=15, n_extra=40)
        sol = solve_ccd("1-1", [ExposureStars(0, MJD, 566.0, (NY, NX), None, sources)], cat, config)[0]
        solved += sol.ok and np.sqrt(np.mean(wcs_difference(sol.wcs, truth) ** 2)) < 30.0
    assert solved >= 20


def test_zeropoint_is_robust_to_outliers():
    rng = np.random.default_rng(5)
    mag = rng.uniform(18, 21, 40)
    flux = 100.0 * 10 ** (-0.4 * (mag - 25.0)) * (1 + rng.normal(0, 0.01, 40))
    flux[:4] *= 3.0  # blends
    zp, err, n = fit_zeropoint(flux, 0.01 * flux, 100.0, mag)
    assert abs(zp - 25.0) < 0.01 and 0 < err < 0.01 and n >= 34
    assert np.isnan(fit_zeropoint(flux[:3], flux[:3] * 0.01, 100.0, mag[:3])[0])


def test_a_catalogue_whose_magnitudes_are_wrong_gives_a_doubtful_zero_point(scene, tmp_path, capsys, caplog):
    """Fault campaigns: a reference catalogue whose magnitudes were 3 mag off (another band, or wrong) fitted a zero
    point 3 mag off without a word, and every magnitude with it; shuffled magnitudes too.  The fitted zero point is
    compared with the header's (MAGZERO) and its stars' scatter is judged: a warning names the CCD exposure and
    both numbers.  The right catalogue raises none."""
    from ssodetect.astrometry.zeropoint import zeropoint_doubt

    assert zeropoint_doubt(25.0, 0.01, 40, 25.3) is None
    assert "+3.00 mag from the header's 25.00" in zeropoint_doubt(28.0, 0.01, 40, 25.0)
    assert "scatter by 0.80 mag" in zeropoint_doubt(25.0, 0.8 * 1.2533 / math.sqrt(40), 40, None, 50)
    assert zeropoint_doubt(25.0, 0.8 * 1.2533 / math.sqrt(40), 40) is None  # carried over: its error is another's
    assert zeropoint_doubt(float("nan"), float("nan"), 0, 25.0) is None
    assert "only 6 of its 16 usable stars agree" in zeropoint_doubt(24.2, 0.2, 6, None, 16)
    assert "only 3 of its 16" in zeropoint_doubt(float("nan"), float("nan"), 3, None, 16)
    assert zeropoint_doubt(25.0, 0.01, 4, None, 9) is None  # too few to judge the share
    ref = Table.read(scene / "refcat.ecsv")
    for name, change, said in (("shifted", lambda g: g + 3.0, "from the header's"),
                               ("shuffled", lambda g: np.random.default_rng(1).permutation(g), "usable stars agree")):
        bad = ref.copy()
        bad["phot_g_mean_mag"] = change(np.asarray(ref["phot_g_mean_mag"], float))
        bad.write(tmp_path / f"{name}.ecsv")
        caplog.clear()
        code = main(["astrometry", str(scene), "--refcat", str(tmp_path / f"{name}.ecsv"), "--out",
                     str(tmp_path / name), "-q"])
        assert code == 0, name  # solved: the zero point's doubt is a warning
        assert "solved CCD exposures have a doubtful zero point" in caplog.text and said in caplog.text, name
    caplog.clear()
    assert main(["astrometry", str(scene), "--refcat", str(scene / "refcat.ecsv"), "--out", str(tmp_path / "good"),
                 "-q"]) == 0
    assert "doubtful zero point" not in caplog.text


def test_reference_catalogue_formats(tmp_path, caplog):
    rng = np.random.default_rng(6)
    n = 50
    cat = Table({"ra": rng.uniform(10, 11, n), "dec": rng.uniform(-5, -4, n), "ra_error": rng.uniform(0.1, 1, n),
                 "dec_error": rng.uniform(0.1, 1, n), "pmra": rng.normal(0, 5, n), "pmdec": rng.normal(0, 5, n),
                 "phot_g_mean_mag": rng.uniform(15, 21, n), "ref_epoch": np.full(n, 2016.0)})
    # SCAMP LDAC reference catalogue: written, read back as Gaia columns
    write_ldac(tmp_path / "ref.cat", [(ldac_reference_table(cat), fits.Header({"OBJECT": "test"}))])
    header, objects = read_ldac(tmp_path / "ref.cat")[0]
    assert header["OBJECT"] == "test" and len(objects) == n
    back = load_reference_catalogue(tmp_path / "ref.cat")
    for name in ("ra", "dec", "pmra", "pmdec", "ra_error", "ref_epoch"):
        np.testing.assert_allclose(back[name], cat[name], rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(back["phot_g_mean_mag"], cat["phot_g_mean_mag"], atol=1e-5)
    # CSV without the optional columns: defaults (no proper motion, epoch 2016)
    cat["ra", "dec", "phot_g_mean_mag"].write(tmp_path / "min.csv")
    minimal = load_reference_catalogue(tmp_path / "min.csv")
    assert np.all(minimal["pmra"] == 0) and np.all(minimal["ref_epoch"] == 2016.0)
    # a required column missing: one-line error naming the file and the column
    cat["ra", "dec"].write(tmp_path / "nomag.ecsv")
    with pytest.raises(InputError, match=r"nomag\.ecsv.*phot_g_mean_mag"):
        load_reference_catalogue(tmp_path / "nomag.ecsv")
    # positions stored as 32-bit floats (rounded to ~4 mas at RA 10 deg, 110 mas at 300 deg): said, not silent
    coarse = cat["ra", "dec", "phot_g_mean_mag"]
    coarse["ra"] = (coarse["ra"] + 290.0).astype(np.float32)
    coarse.write(tmp_path / "f32.fits")
    with caplog.at_level("WARNING"):
        load_reference_catalogue(tmp_path / "f32.fits")
    assert "f32.fits: column ra is stored as 32-bit floats, rounded to up to 110 mas" in caplog.text
    assert "column dec" not in caplog.text  # (|dec| < 5 deg: rounded to 1.7 mas at most)


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_astrometry_command_writes_refined_headers(scene, tmp_path, capsys):
    before = {p.name: _md5(p) for p in scene.glob("*.fits")}
    out = tmp_path / "ast"
    code = main(["astrometry", str(scene), "--refcat", str(scene / "refcat.ecsv"), "--out", str(out),
                 "--format", "both", "-q"])
    assert code == 0
    assert "4/4 CCD exposures solved" in capsys.readouterr().out
    assert before == {p.name: _md5(p) for p in scene.glob("*.fits")}  # inputs untouched
    truth = {(int(r["exposure"]), str(r["ccd"])): WCS(fits.Header.fromstring(r["wcs_header"]))
             for r in Table.read(scene / "truth_wcs.ecsv")}
    header_error = []
    for e in range(4):
        with fits.open(out / f"exp_{e:02d}.fits") as hdul, fits.open(scene / f"exp_{e:02d}.fits") as orig:
            sci = hdul["1-1.SCI"].header
            assert sci["SSOASTR"] == "ok" and sci["ASTRNSTR"] >= 12
            assert np.array_equal(hdul["1-1.SCI"].data, orig["1-1.SCI"].data)
            fitted = WCS(sci)
            ny, nx = hdul["1-1.SCI"].data.shape
            gx, gy = np.meshgrid(np.linspace(0, nx - 1, 11), np.linspace(0, ny - 1, 11))
            ra1, dec1 = truth[(e, "1-1")].all_pix2world(gx, gy, 0)
            for w, store in ((fitted, None), (WCS(orig["1-1.SCI"].header), header_error)):
                ra2, dec2 = w.all_pix2world(gx, gy, 0)
                d = np.hypot((ra2 - ra1) * np.cos(np.radians(dec1)), dec2 - dec1) * 3.6e6
                if store is None:
                    assert np.sqrt(np.mean(d**2)) < 15.0
                else:
                    store.append(np.sqrt(np.mean(d**2)))
        # the SCAMP-style .head holds one block ending in END, readable as a header with the same WCS
        text = (out / f"exp_{e:02d}.head").read_text()
        assert text.count("\nEND") == 1
        head = fits.Header.fromstring(text, sep="\n")
        np.testing.assert_allclose(WCS(head).wcs.crval, fitted.wcs.crval, rtol=0, atol=1e-10)
    assert min(header_error) > 500.0  # the input headers were off by arcseconds
    ast = Table.read(out / "astrometry.ecsv")
    assert np.all(ast["status"] == "ok")


def test_astrometry_with_a_catalogue_of_another_field(scene, tmp_path, capsys):
    cat = Table.read(scene / "refcat.ecsv")
    cat["ra"] += 1.0  # a degree away: nothing in the footprint
    cat.write(tmp_path / "far.ecsv")
    config = tmp_path / "noblind.toml"
    config.write_text("[astrometry]\nblind = false\n")
    code = main(["astrometry", str(scene), "--refcat", str(tmp_path / "far.ecsv"), "--out", str(tmp_path / "o"),
                 "--config", str(config), "-q"])
    out = capsys.readouterr().out
    assert code == 1 and "0/4 CCD exposures solved" in out and "reference stars" in out
    ast = Table.read(tmp_path / "o" / "astrometry.ecsv")
    assert np.all(ast["status"] == "failed") and all("reference stars" in r for r in ast["reason"])
    head = fits.Header.fromstring((tmp_path / "o" / "exp_00.head").read_text(), sep="\n")
    assert head["SSOASTR"] == "failed" and "CTYPE1" not in head


def test_run_solves_frames_without_wcs_blind(scene, tmp_path):
    """Headers stripped of their WCS: the run solves every CCD blind and still finds the movers."""
    from ssodetect.config import load_config
    from ssodetect.evaluate import evaluate_run
    from ssodetect.pipeline import run_pipeline

    src = tmp_path / "nowcs"
    src.mkdir()
    for path in sorted(scene.glob("exp_*.fits")):
        with fits.open(path) as hdul:
            for hdu in hdul:
                for key in [k for k in hdu.header if k[:5] in ("CTYPE", "CRVAL", "CRPIX", "CDELT", "CUNIT")
                            or k.startswith(("PC1_", "PC2_", "CD1_", "CD2_"))]:
                    del hdu.header[key]
            hdul.writeto(src / path.name)
    config = load_config(None)
    config.execution.progress = False
    config.astrometry.pixel_scale_range = [0.05, 0.2]
    result = run_pipeline([src], None, config, refcat=scene / "refcat.ecsv")
    assert np.all(result.astrometry["status"] == "ok") and np.all(result.astrometry["method"] == "blind")
    ev = evaluate_run(result.observations, Table.read(scene / "truth.ecsv"))
    assert ev.completeness_bright >= 0.9 and ev.median_residual_bright < 0.03


def test_gaia_cone_is_cached(tmp_path):
    """The archive path (network) is replaced by a stub; the second call must not query again."""
    from ssodetect.astrometry.gaia import fetch_gaia

    calls = []

    def stub(query):
        calls.append(query)
        rng = np.random.default_rng(7)
        return Table({"source_id": np.arange(5), "ra": rng.uniform(150, 150.1, 5), "dec": rng.uniform(25, 25.1, 5),
                      "ra_error": np.ones(5), "dec_error": np.ones(5), "pmra": np.zeros(5), "pmdec": np.zeros(5),
                      "phot_g_mean_mag": np.full(5, 18.0), "bp_rp": np.ones(5), "ref_epoch": np.full(5, 2016.0),
                      "extra": np.zeros(5)})

    first = fetch_gaia(150.05, 25.05, 0.1, cache_dir=tmp_path, run_query=stub)
    second = fetch_gaia(150.05, 25.05, 0.1, cache_dir=tmp_path, run_query=stub)
    assert first == second and len(calls) == 1
    assert "gaiadr3.gaia_source" in calls[0] and "CIRCLE('ICRS', 150.050000, 25.050000, 0.100000)" in calls[0]
    cat = load_reference_catalogue(first)
    assert len(cat) == 5 and "extra" not in cat.colnames


def test_absurd_solutions_are_refused():
    rng = np.random.default_rng(8)
    truth = distorted_wcs()
    cat, sources = star_lists(rng, truth, n_ref=25, centroid=0.3)  # 30 mas centroid noise
    item = ExposureStars(0, MJD, 566.0, (NY, NX), perturbed_wcs(truth), sources, zeropoint=ZP)
    sol = solve_ccd("1-1", [item], cat, AstrometryConfig(max_rms=0.005))[0]
    assert not sol.ok and "exceeds" in sol.reason
    # a header claiming twice the true pixel scale: beyond the scale search, refused with a reason
    item = ExposureStars(0, MJD, 566.0, (NY, NX), perturbed_wcs(truth, scale=2.0), sources, zeropoint=ZP)
    sol = solve_ccd("1-1", [item], cat, AstrometryConfig(blind=False))[0]
    assert not sol.ok and sol.reason


def test_run_with_a_bad_reference_catalogue(scene, tmp_path, capsys):
    Table({"ra": [150.0], "dec": [25.0]}).write(tmp_path / "bad.ecsv")
    out = tmp_path / "out"
    code = main(["run", str(scene), "--out", str(out), "--refcat", str(tmp_path / "bad.ecsv"), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "bad.ecsv" in err[0] and "phot_g_mean_mag" in err[0]
    assert not out.exists()


@pytest.mark.parametrize("max_iter", [1, 6])
def test_fit_clips_wrong_matches(max_iter):
    from ssodetect.astrometry.wcsfit import MatchedStars, fit_wcs

    rng = np.random.default_rng(9)
    truth = distorted_wcs()
    x, y = rng.uniform(0, NX, 60), rng.uniform(0, NY, 60)
    ra, dec = truth.all_pix2world(x, y, 0)
    ra[:4] += 1.0 / 3600.0  # four wrong matches, 1" off
    stars = MatchedStars(x + rng.normal(0, 0.02, 60), y + rng.normal(0, 0.02, 60), ra, dec, np.full(60, 0.003),
                         crval=(150.001, 25.001))
    sol = fit_wcs([stars], crpix=((NX + 1) / 2, (NY + 1) / 2), order=3, max_iter=max_iter, inverse_extent=(NX, NY))[0]
    assert not sol.used[:4].any() and sol.used[4:].sum() >= 54
    assert np.all((sol.leverage > 0) == sol.used) and sol.leverage.sum() == pytest.approx(10, abs=1e-6)
    assert np.sqrt(np.mean(wcs_difference(sol.wcs, truth) ** 2)) < 5.0
    # the inverse SIP is exact: pixel -> sky -> pixel round trip
    px, py = sol.wcs.all_world2pix(*sol.wcs.all_pix2world(x, y, 0), 0)
    assert np.max(np.hypot(px - x, py - y)) < 1e-3


def test_unreadable_reference_catalogue_is_one_line(scene, tmp_path, capsys):
    bad = tmp_path / "bad.cat"
    bad.write_text("not a catalogue\n")
    code = main(["astrometry", str(scene), "--refcat", str(bad), "--out", str(tmp_path / "o"), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "bad.cat" in err[0] and "not a readable catalogue" in err[0]
    assert not (tmp_path / "o").exists()


def test_offset_match_fast_path_and_its_limits():
    """Offset voting finds a header that is right up to a shift (here 180 px, with 40 % of the sources not in
    the reference and 30 % of the references not detected), refuses a rotated one (which triangles then
    solve) and unrelated lists."""
    rng = np.random.default_rng(11)
    ref_xy = rng.uniform(0, 4000, (120, 2))
    shift = np.array([130.0, -125.0])
    seen = rng.random(120) > 0.3
    src = ref_xy[seen] - shift + rng.normal(0, 0.3, (seen.sum(), 2))
    src = np.vstack([src[:30], rng.uniform(0, 4000, (20, 2)), src[30:]])  # movers, galaxies, artefacts
    index = PatternIndex(ref_xy, n_ref=0, area=4000.0**2)
    found = match_offset(src, index, max_shift=300.0, match_radius=3.0)
    assert found is not None and found.n_matched >= 0.6 * seen.sum()
    assert abs(found.transform.tx - shift[0]) < 0.2 and abs(found.transform.ty - shift[1]) < 0.2
    assert abs(found.transform.rotation) < 0.01 and abs(found.transform.scale - 1) < 1e-4
    theta = math.radians(2.0)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    rotated = (ref_xy[seen] - 2000.0) @ rot.T + 2000.0 - shift
    assert match_offset(rotated, index, max_shift=300.0, match_radius=3.0) is None
    tri = PatternIndex(ref_xy, n_ref=60, min_side=100.0, area=4000.0**2)
    solved = match_patterns(rotated, tri, scale_range=(0.95, 1.05), max_rotation=3.0, max_shift=400.0, match_radius=3.0,
                            min_side=100.0)
    assert solved is not None and abs(abs(solved.transform.rotation) - 2.0) < 0.05
    assert match_offset(rng.uniform(0, 4000, (60, 2)), index, max_shift=300.0, match_radius=3.0) is None


def _tan(crval, crpix, rotation=0.0, scale=1.0):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = list(crval)
    w.wcs.crpix = list(crpix)
    c, s = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    w.wcs.cd = np.array([[c, -s], [s, c]]) @ np.array([[-0.1, 0.0], [0.0, 0.1]]) / 3600.0 * scale
    w.wcs.set()
    return w


def _sources(rng, wcs, ra, dec, mags, *, n_junk, junk_mag=(17.0, 19.0)):
    """Detections of the sky stars (ra, dec, mags) on a 2048^2 CCD through ``wcs`` plus bright junk, brightest first."""
    x, y = wcs.all_world2pix(ra, dec, 0)
    on = (x > 5) & (x < NX - 5) & (y > 5) & (y < NY - 5)
    sx = np.concatenate([x[on] + rng.normal(0, 0.03, on.sum()), rng.uniform(0, NX, n_junk)])
    sy = np.concatenate([y[on] + rng.normal(0, 0.03, on.sum()), rng.uniform(0, NY, n_junk)])
    mag = np.concatenate([mags[on], rng.uniform(*junk_mag, n_junk)])
    flux = 566.0 * 10 ** (-0.4 * (mag - ZP))
    src = Table({"x": sx, "y": sy, "x_err": np.full(sx.size, 0.03), "y_err": np.full(sx.size, 0.03), "flux": flux,
                 "flux_err": 0.01 * flux})
    src.sort("flux", reverse=True)
    return src


def _catalogue(ra, dec, mags):
    n = len(ra)
    return Table({"ra": ra, "dec": dec, "ra_error": np.full(n, 0.3), "dec_error": np.full(n, 0.3), "pmra": np.zeros(n),
                  "pmdec": np.zeros(n), "phot_g_mean_mag": mags, "ref_epoch": np.full(n, 2026.2)})


def test_a_right_header_is_never_lost_among_bright_junk():
    """An exact header, 15 catalogue stars and 200 brighter unrelated sources (hot pixels, galaxies, movers): the
    brightest sources hold no star, so offset voting and triangles on them find nothing; the nearest-neighbour
    test of the header finds the stars."""
    rng = np.random.default_rng(21)
    truth = _tan((150.0, 25.0), (1024.5, 1024.5))
    ra, dec = truth.all_pix2world(rng.uniform(50, NX - 50, 15), rng.uniform(50, NY - 50, 15), 0)
    mags = rng.uniform(19.5, 21.0, 15)
    src = _sources(rng, truth, ra, dec, mags, n_junk=200, junk_mag=(16.0, 19.0))
    assert np.all(np.asarray(src["flux"])[:100] > 566.0 * 10 ** (-0.4 * (19.5 - ZP)))  # stars are below rank 100
    ref_xy = np.column_stack(truth.all_world2pix(ra, dec, 0))
    xy = np.column_stack([src["x"], src["y"]])
    assert match_offset(xy, PatternIndex(ref_xy, n_ref=0, area=float(NX * NY)), max_shift=300.0, match_radius=6.0,
                        n_src=25, min_matches=6) is None  # the old fast path on the brightest sources
    config = AstrometryConfig(blind=False)
    sol = solve_ccd("1-1", [ExposureStars(0, MJD, 566.0, (NY, NX), truth, src, zeropoint=ZP)], _catalogue(ra, dec, mags),
                    config)[0]
    assert sol.ok, sol.reason
    assert sol.n_stars >= 12 and np.max(wcs_difference(sol.wcs, truth)) < 30.0


def test_grid_voting_recovers_a_shifted_rotated_and_scaled_header():
    """Header off by 20", 0.5 deg and 0.5 % (corners displaced by 25 px: offset voting alone fails) with only 10
    catalogue stars among 60 unrelated sources: offset voting over rotations and scales recovers it."""
    from ssodetect.astrometry.match import match_grid

    rng = np.random.default_rng(5)
    ref_xy = rng.uniform(0, NX, (10, 2))
    a = 1.005 * np.exp(1j * math.radians(0.5))
    centre = complex((NX - 1) / 2, (NY - 1) / 2)
    z = (ref_xy[:, 0] + 1j * ref_xy[:, 1] - centre - (150 - 120j)) / a + centre
    src = np.vstack([np.column_stack([z.real, z.imag]) + rng.normal(0, 0.05, (10, 2)), rng.uniform(0, NX, (60, 2))])
    src = src[rng.permutation(len(src))]
    index = PatternIndex(ref_xy, n_ref=0, area=float(NX * NY))
    assert match_offset(src, index, max_shift=300.0, match_radius=6.0, n_src=70, min_matches=6) is None
    found = match_grid(src, index, centre=((NX - 1) / 2, (NY - 1) / 2), max_shift=300.0, max_rotation=1.0,
                       max_scale=0.01, match_radius=6.0, n_src=70, min_matches=6)
    assert found is not None and found.n_matched >= 9
    assert abs(found.transform.rotation - 0.5) < 0.02 and abs(found.transform.scale - 1.005) < 2e-4
    assert match_grid(rng.uniform(0, NX, (70, 2)), index, centre=(1023.5, 1023.5), max_shift=300.0, max_rotation=1.0,
                      max_scale=0.01, match_radius=6.0, min_matches=6) is None


def _focal_plane_scene(rng, keys, *, n_faint: int, header_extra: dict | None = None):
    """CCDs A, B, C side by side (B in the middle) in two exposures dithered by 5"; every header of exposure 0 off
    by (20", -5"), +0.5 deg, x1.005, of exposure 1 by (-14", 14"), -0.5 deg, x0.995 (plus ``header_extra``
    [arcsec] in RA for given keys).  30 catalogue stars on A and C, 3 on B, ``n_faint`` uncatalogued sources per
    CCD.  Returns the true WCSs by (exposure, ccd), the catalogue and the per-CCD ExposureStars groups of ``keys``."""
    from astropy.table import vstack

    centre = (150.0, 25.0)
    crpix = {"A": (1024.5 + 2160.0, 1024.5), "B": (1024.5, 1024.5), "C": (1024.5 - 2160.0, 1024.5)}
    dither = [(0.0, 0.0), (4.0, -3.0)]  # arcsec
    errors = [((20.0, -5.0), 0.5, 1.005), ((-14.0, 14.0), -0.5, 0.995)]
    cosd = math.cos(math.radians(25.0))
    truths, headers = {}, {}
    for e, ccd in keys:
        dx, dy = dither[e]
        crval = (centre[0] + dx / 3600.0 / cosd, centre[1] + dy / 3600.0)
        truths[(e, ccd)] = _tan(crval, crpix[ccd])
        (ex, ey), rot, scale = errors[e]
        ex += (header_extra or {}).get((e, ccd), 0.0)
        headers[(e, ccd)] = _tan((crval[0] + ex / 3600.0 / cosd, crval[1] + ey / 3600.0), crpix[ccd], rot, scale)
    ccds = sorted({c for _, c in keys})
    stars, faint = {}, {}
    for ccd in ccds:
        n = 3 if ccd == "B" else 30
        x, y = rng.uniform(80, NX - 80, n), rng.uniform(80, NY - 80, n)
        stars[ccd] = (*truths[(0, ccd)].all_pix2world(x, y, 0), rng.uniform(19.0, 21.0, n))
        x, y = rng.uniform(80, NX - 80, n_faint), rng.uniform(80, NY - 80, n_faint)  # uncatalogued, fixed on the sky
        faint[ccd] = (*truths[(0, ccd)].all_pix2world(x, y, 0), rng.uniform(21.5, 23.0, n_faint))
    catalogue = vstack([_catalogue(*stars[c]) for c in ccds])
    groups = []
    for ccd in ccds:
        ra, dec, mags = (np.concatenate([stars[ccd][k], faint[ccd][k]]) for k in range(3))
        groups.append((ccd, [ExposureStars(e, MJD, 566.0, (NY, NX), headers[(e, c)],
                                           _sources(rng, truths[(e, c)], ra, dec, mags, n_junk=20), zeropoint=ZP)
                             for e, c in keys if c == ccd]))
    return truths, catalogue, groups


def test_failed_ccd_exposures_are_solved_from_their_exposure_and_their_ccd():
    """Three CCDs side by side, two exposures whose headers are off by the same 20", 0.5 deg, 0.5 % on every CCD.
    CCDs A and C have 30 catalogue stars; B has 3 (too few alone), and A's second exposure has a header pointing
    a further 2' off (beyond the search).  A's second exposure is registered onto its first; B is solved from
    its exposure's correction measured on the other CCDs (A's odd header left out of it).  All land within
    60 mas of the truth."""
    from ssodetect.astrometry.field import rescue_failed

    rng = np.random.default_rng(3)
    keys = [(e, ccd) for e in range(2) for ccd in "ABC"]
    truths, catalogue, groups = _focal_plane_scene(rng, keys, n_faint=120, header_extra={(1, "A"): 120.0})
    config = AstrometryConfig(blind=False)
    alone = [sol for ccd, items in groups for sol in solve_ccd(ccd, items, catalogue, config)]
    assert {(s.exposure, s.ccd) for s in alone if not s.ok} == {(1, "A"), (0, "B"), (1, "B")}
    rescued, corrections = rescue_failed(groups, alone, catalogue, config)
    by_key = {(s.exposure, s.ccd): s for s in rescued}
    assert all(s.ok for s in rescued), [s.reason for s in rescued]
    assert by_key[(1, "A")].method == "registered"
    # B's two exposures: the first through its corrected header (or solved through it), the second (when placed
    # by its own corrected header too) registered onto the first
    assert by_key[(0, "B")].method in ("guided", "exposure")
    assert by_key[(1, "B")].method in ("guided", "registered")
    assert corrections[0].startswith("header off by 20.6\", -0.50") and "scale 0.995" in corrections[0]
    assert "from 2 solved CCDs" in corrections[0]
    assert "from 1 solved CCDs" in corrections[1]  # A's odd header does not agree with C's
    for key, sol in by_key.items():
        err = wcs_difference(sol.wcs, truths[key])
        assert np.sqrt(np.mean(err**2)) < 60.0, (key, sol.method, err.max())


def test_an_exposure_without_a_header_correction_is_registered_onto_its_ccds_placed_exposure():
    """Member 246: a sparse field, CCD B with 3 catalogue stars, headers off by 20", 0.5 deg, 0.5 %.  Exposure 0
    is placed through its header corrected on CCD A; exposure 1 has no other CCD to measure a correction on, so
    it stayed on its header (20" off) and no star on B was static.  It is registered onto B's exposure 0 and
    lands within 60 mas of the truth, sharing exposure 0's placement error."""
    from ssodetect.astrometry.field import rescue_failed

    rng = np.random.default_rng(11)
    keys = [(0, "A"), (0, "B"), (1, "B")]  # CCD A is not in exposure 1
    truths, catalogue, groups = _focal_plane_scene(rng, keys, n_faint=150)
    config = AstrometryConfig(blind=False)
    alone = [sol for ccd, items in groups for sol in solve_ccd(ccd, items, catalogue, config)]
    assert {(s.exposure, s.ccd) for s in alone if not s.ok} == {(0, "B"), (1, "B")}
    rescued, _ = rescue_failed(groups, alone, catalogue, config)
    by_key = {(s.exposure, s.ccd): s for s in rescued}
    assert all(s.ok for s in rescued), [s.reason for s in rescued]
    assert by_key[(0, "B")].method in ("guided", "exposure")
    assert by_key[(1, "B")].method == "registered"
    assert by_key[(1, "B")].wcs_error_shared >= by_key[(0, "B")].wcs_error - 1e-9
    for key, sol in by_key.items():
        err = wcs_difference(sol.wcs, truths[key])
        assert np.sqrt(np.mean(err**2)) < 60.0, (key, sol.method, err.max())


def test_exposures_placed_by_their_corrected_headers_are_tied_to_each_other():
    """A CCD with too few catalogue stars in all three exposures, each placed by its exposure's corrected header
    with an independent 0.2-0.25" error (as when the correction is measured on a poorly solved neighbour): a
    star fixed on the sky seems to move by up to 0.45" between them.  Tied by their 150 common sources, the
    exposures agree to 15 mas, and the anchor's error is the part they share."""
    from ssodetect.astrometry.field import _tie_exposure_placements
    from ssodetect.astrometry.solve import ExposureSolution

    rng = np.random.default_rng(8)
    cosd = math.cos(math.radians(25.0))
    truths = [_tan((150.0 + dx / 3600.0 / cosd, 25.0 + dy / 3600.0), (1024.5, 1024.5))
              for dx, dy in [(0.0, 0.0), (3.0, -2.0), (-2.5, 4.0)]]
    off = [(0.2, 0.0), (-0.1, 0.2), (0.05, -0.22)]  # arcsec: each exposure's own placement error
    x, y = rng.uniform(50, NX - 50, 150), rng.uniform(50, NY - 50, 150)
    ra, dec = truths[0].all_pix2world(x, y, 0)
    mags = rng.uniform(20.0, 23.0, 150)
    by_key, items = {}, {}
    for e, (truth, (ox, oy)) in enumerate(zip(truths, off)):
        placed = _tan((truth.wcs.crval[0] + ox / 3600.0 / cosd, truth.wcs.crval[1] + oy / 3600.0), (1024.5, 1024.5))
        items[(e, "B")] = ExposureStars(e, MJD, 566.0, (NY, NX), placed, _sources(rng, truth, ra, dec, mags, n_junk=10),
                                        zeropoint=ZP)
        sol = ExposureSolution(exposure=e, ccd="B", status="ok", method="exposure", wcs=placed, pixel_scale=0.1,
                               zeropoint=ZP)
        sol.wcs_error, sol.wcs_error_shared = 0.25 - 0.01 * (e == 1), 0.05
        by_key[(e, "B")] = sol
    gx, gy = np.meshgrid(np.linspace(0, NX - 1, 9), np.linspace(0, NY - 1, 9))
    sky = truths[0].all_pix2world(gx.ravel(), gy.ravel(), 0)

    def apparent_motion(solutions):  # [mas] of fixed sky points between exposure 0 and each other exposure
        ra0, dec0 = solutions[0].wcs.all_pix2world(gx.ravel(), gy.ravel(), 0)
        out = []
        for e in (1, 2):
            px, py = truths[e].all_world2pix(*sky, 0)
            ra1, dec1 = solutions[e].wcs.all_pix2world(px, py, 0)
            out.append(np.max(np.hypot((ra1 - ra0) * cosd, dec1 - dec0)) * 3.6e6)
        return out

    before = apparent_motion([by_key[(e, "B")] for e in range(3)])
    assert min(before) > 150.0
    _tie_exposure_placements(by_key, items, AstrometryConfig())
    sols = [by_key[(e, "B")] for e in range(3)]
    assert [s.method for s in sols] == ["registered", "exposure", "registered"]  # exposure 1: the smallest error
    assert max(apparent_motion(sols)) < 15.0
    assert all(s.wcs_error_shared == pytest.approx(0.24) for s in sols)
    assert sols[0].wcs_error >= 0.24 and sols[0].zeropoint == pytest.approx(ZP, abs=0.05)


def test_a_few_stars_seen_in_every_dithered_exposure_do_not_fit_a_distortion():
    """Seven catalogue stars in each of four exposures dithered by a few arcsec, fitted jointly: their copies in
    the other exposures are the same stars, so no distortion is fitted (a 2nd-order one through 6 such stars
    was 1.1" wrong at the CCD's corners, its claimed error 4 mas): linear solutions within 0.1" everywhere.
    With 40 stars the distortion is fitted and recovered."""
    from astropy.wcs import Sip

    from ssodetect.astrometry.wcsfit import max_order_for

    assert max_order_for(7, 3, n_exposures=4, stars_per_param=1.5) == 1
    assert max_order_for(40, 3, n_exposures=4, stars_per_param=1.5) == 3
    for n_stars, order in ((7, 1), (40, 2)):
        rng = np.random.default_rng(4)
        truths = []
        for e, (dx, dy) in enumerate([(0.0, 0.0), (3.0, -2.0), (-2.5, 4.0), (5.0, 1.0)]):
            w = _tan((150.0 + dx / 3600.0 / math.cos(math.radians(25.0)), 25.0 + dy / 3600.0), (1024.5, 1024.5))
            w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
            a = np.zeros((3, 3)); b = np.zeros((3, 3))
            a[2, 0], b[1, 1] = 3.0e-7, 2.0e-7  # 0.3" at the corners
            w.sip = Sip(a, b, None, None, w.wcs.crpix)
            w.wcs.set()
            truths.append(w)
        x, y = rng.uniform(300, NX - 300, n_stars), rng.uniform(300, NY - 300, n_stars)
        ra, dec = truths[0].all_pix2world(x, y, 0)
        mags = rng.uniform(18.0, 20.0, n_stars)
        items = [ExposureStars(e, MJD, 566.0, (NY, NX), _tan(truth.wcs.crval, (1024.5, 1024.5)),
                               _sources(rng, truth, ra, dec, mags, n_junk=0), zeropoint=ZP)
                 for e, truth in enumerate(truths)]
        sols = solve_ccd("1-1", items, _catalogue(ra, dec, mags), AstrometryConfig(blind=False, joint=True))
        for sol, truth in zip(sols, truths):
            assert sol.ok, sol.reason
            assert sol.sip_order <= order + 1 and (sol.sip_order >= 2) == (order >= 2)
            err = wcs_difference(sol.wcs, truth)
            assert np.max(err) < (100.0 if order == 1 else 30.0), (n_stars, sol.sip_order, np.max(err))


def test_an_exposure_with_no_ccd_solvable_alone_is_matched_over_its_focal_plane():
    """Four CCDs with 4 catalogue stars each (too few for any alone), headers off by 20", 0.5 deg and 0.5 %: all
    CCDs' sources together, through their headers, find the exposure's correction."""
    from ssodetect.astrometry.field import focal_plane_correction
    from ssodetect.astrometry.refcat import propagate
    from astropy.table import vstack
    from astropy.time import Time

    rng = np.random.default_rng(12)
    cosd = math.cos(math.radians(25.0))
    crpixes = [(1024.5 + dx, 1024.5 + dy) for dx in (-1080.0, 1080.0) for dy in (-1080.0, 1080.0)]
    ccds, cats = [], []
    for crpix in crpixes:
        truth = _tan((150.0, 25.0), crpix)
        header = _tan((150.0 + 20.0 / 3600.0 / cosd, 25.0), crpix, 0.5, 1.005)
        x, y = rng.uniform(80, NX - 80, 4), rng.uniform(80, NY - 80, 4)
        ra, dec = truth.all_pix2world(x, y, 0)
        mags = rng.uniform(19.0, 21.0, 4)
        cats.append(_catalogue(ra, dec, mags))
        src = _sources(rng, truth, ra, dec, mags, n_junk=15)
        ccds.append((header, np.column_stack([src["x"], src["y"]]), (NY, NX)))
    cat = vstack(cats)
    ref_ra, ref_dec = propagate(cat, Time(MJD, format="mjd"))
    order = np.argsort(np.asarray(cat["phot_g_mean_mag"]))
    corr = focal_plane_correction(ccds, np.asarray(ref_ra)[order], np.asarray(ref_dec)[order], AstrometryConfig())
    assert corr is not None and corr.n_stars >= 12 and corr.n_ccds == 0
    assert abs(math.hypot(corr.transform.tx, corr.transform.ty) - 20.0) < 2.0  # the shift, seen at the plane's centre
    assert abs(corr.transform.rotation + 0.5) < 0.02 and abs(corr.transform.scale - 1 / 1.005) < 2e-4


def test_a_solution_rotated_or_scaled_away_from_its_ccds_best_one_fails():
    """Exposures of one CCD share its scale and orientation: beside a solution of 240 stars, blind ones of 8-9
    "matches" rotated by 60-150 degrees or scaled by 0.56-2.4 (chance alignments on a field of 393 000 stars per
    square degree) fail with the reason, while one dithered by 20" and turned by 1 degree stays."""
    from ssodetect.astrometry.solve import ExposureSolution, inconsistent_with_anchor

    def wcs(scale, rotation, crval=(150.0, 25.0)):
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crval = list(crval)
        w.wcs.crpix = [1024.5, 1024.5]
        c, s = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
        w.wcs.cd = (scale / 3600.0) * np.array([[-c, s], [s, c]])
        return w

    rows = [(240, wcs(0.1, 0.5)), (9, wcs(0.1, 148.0)), (8, wcs(0.237, 63.9)), (231, wcs(0.1002, 1.5, (150.005, 25.0))),
            (8, wcs(0.0556, 142.8))]
    results = []
    for k, (n, w) in enumerate(rows):
        res = ExposureSolution(exposure=k, ccd="2-1")
        res.status, res.wcs, res.n_matched, res.method = "ok", w, n, "blind"
        results.append(res)
    assert inconsistent_with_anchor(results) == [1, 2, 4]
    assert [r.ok for r in results] == [True, False, False, True, False]
    assert "rotated by 147.5 deg" in results[1].reason and results[1].wcs is None
    assert inconsistent_with_anchor(results[:1]) == []


def test_matches_must_beat_chance_alignment():
    """A handful of matches is a solution on a sparse field and chance on a crowded one: 1700 sources among 1300
    reference stars per 2048^2 CCD meet one within 2.5 px by chance ~12 times."""
    from ssodetect.astrometry.solve import CHANCE_SIGMA, _Reference, chance_matches, enough_matches

    rng = np.random.default_rng(2)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 25.0]
    w.wcs.crpix = [1024.5, 1024.5]
    w.wcs.cd = np.diag([-0.1, 0.1]) / 3600.0
    ra, dec = w.all_pix2world(rng.uniform(0, 2048, 1300), rng.uniform(0, 2048, 1300), 0)
    ref = _Reference(ra=ra, dec=dec, mag=np.full(1300, 18.0), sigma=np.full(1300, 0.01), colour=None)
    expected = chance_matches(1700, ref, w, 2.5, (2048, 2048))
    assert 10.0 < expected < 14.0  # 1700 x 1300 / 2048^2 x pi 2.5^2
    assert not enough_matches(9, expected, 6) and enough_matches(240, expected, 6)
    assert enough_matches(6, chance_matches(40, ref, w, 2.5, (2048, 2048)), 6)
    assert not enough_matches(int(expected + CHANCE_SIGMA * math.sqrt(expected)) - 1, expected, 6)


@pytest.fixture(scope="module")
def exact_headers(tmp_path_factory):
    """768^2, 4 exposures, dense stars, header WCSs exact (to be spoiled one exposure at a time)."""
    from conftest import small_scene_config
    from ssodetect.simulate import simulate

    out = tmp_path_factory.mktemp("exact") / "sim"
    simulate(small_scene_config(12, star_density=150000.0, header_pointing_error=0.0, header_rotation_error=0.0,
                                header_scale_error=0.0, movers_per_ccd=300.0), out)
    return out


@pytest.mark.parametrize("exposure, shift_arcsec", [(0, 30.0), (1, 30.0), (2, 540.0)])
def test_one_wrong_header_among_right_ones_is_replaced_and_only_it(exact_headers, tmp_path, exposure, shift_arcsec):
    """No reference catalogue: one exposure's header 30" off (whichever frame has the most stars) or 0.15 deg off
    (the headers then say the frames do not overlap) is found by the stars' registration and placed through the
    others; the right headers are left alone, and the movers are found as with exact headers."""
    from ssodetect.config import Config
    from ssodetect.evaluate import evaluate_run
    from ssodetect.pipeline import run_pipeline

    src = tmp_path / "src"
    src.mkdir()
    for path in sorted(exact_headers.glob("exp_*.fits")):
        with fits.open(path) as hdul:
            if f"exp_{exposure:02d}" in path.name:
                for hdu in hdul:
                    if "CRVAL2" in hdu.header:
                        hdu.header["CRVAL2"] += shift_arcsec / 3600.0
            hdul.writeto(src / path.name)
    config = Config()
    config.execution.progress = False
    result = run_pipeline([src], tmp_path / "out", config)
    checks = {int(i["exposure"]): (i.get("header_check") or {}).get("status") for i in result.ccd_info}
    assert checks[exposure] == "replaced" and [e for e, s in checks.items() if s == "replaced"] == [exposure], checks
    truth = Table.read(exact_headers / "truth.ecsv")
    ev = evaluate_run(result.observations, truth, rate_range=(0.5, 10.0), bright_limit=23.5, min_exposures=3)
    assert ev.completeness_bright >= 0.9 and ev.n_false <= 1


def test_a_header_that_cannot_be_checked_is_said_so(tmp_path, capsys):
    """A sparse field (too few stars to register the exposures onto each other) and no catalogue: nothing confirms
    the headers, and the run says so (a warning per unchecked exposure, exit 1), rather than losing detections
    silently when a header is wrong."""
    from conftest import small_scene_config
    from ssodetect.simulate import simulate

    sim = tmp_path / "sim"
    simulate(small_scene_config(14, nx=384, ny=384, star_density=3000.0, galaxy_density=0.0, movers_per_ccd=800.0),
             sim)
    with fits.open(sim / "exp_02.fits", mode="update") as hdul:
        for hdu in hdul:
            if "CRVAL2" in hdu.header:
                hdu.header["CRVAL2"] += 30.0 / 3600.0
    code = main(["run", str(sim), "--out", str(tmp_path / "out"), "--station", "C65"])
    err = capsys.readouterr().err
    assert code == 1
    unchecked = [line for line in err.splitlines() if "its header WCS could not be checked" in line]
    assert unchecked and all(line.startswith("WARNING") and "exp_0" in line for line in unchecked)


def test_a_ccd_exposure_rescued_after_failing_alone_draws_no_warning(caplog):
    """Failures of the per-CCD solve that the rescue then solves were warnings (8 on a 2-CCD scene all of whose
    exposures ended solved); now only what stays unsolved is, with everything tried."""
    from ssodetect.astrometry.field import rescue_failed
    from ssodetect.config import Config
    from ssodetect.pipeline.astrometry import SolveTask, warn_unsolved

    rng = np.random.default_rng(3)
    keys = [(e, ccd) for e in range(2) for ccd in "ABC"]
    truths, catalogue, groups = _focal_plane_scene(rng, keys, n_faint=120, header_extra={(1, "A"): 120.0})
    config = Config()
    config.astrometry.blind = False
    with caplog.at_level("WARNING"):
        alone = [sol for group in groups for sol in SolveTask(catalogue, config)(group)]
        assert sum(not s.ok for s in alone) == 3 and not caplog.records  # failed alone: not said yet
        rescued, _ = rescue_failed(groups, alone, catalogue, config.astrometry)
        assert warn_unsolved(rescued) == 0 and not caplog.records
    rescued[0].status, rescued[0].reason = "failed", "nothing matched; registered onto nothing"
    with caplog.at_level("WARNING"):
        assert warn_unsolved(rescued) == 1
    assert "astrometric solution failed: nothing matched" in caplog.text


def test_a_chance_match_far_worse_than_its_ccds_other_exposures_is_doubted():
    """Report member 377 (60 fast movers per CCD): one CCD exposure was 'solved' on 8 stars at 68 mas where its
    other exposures had 25 at 7 mas; the chance match put it 6-13 px off and every mover on the CCD was lost.  Such a
    solution is doubted (and solved again from the others by the pipeline); an ordinary spread is not."""
    from ssodetect.astrometry.field import outlier_solutions
    from ssodetect.astrometry.solve import ExposureSolution

    def sol(e, ccd, n, rms):
        return ExposureSolution(exposure=e, ccd=ccd, status="ok", n_stars=n, rms_ra=rms, rms_dec=rms)

    good = [sol(0, "1-1", 26, 0.0066), sol(1, "1-1", 25, 0.0069), sol(3, "1-1", 25, 0.0063)]
    doubted = outlier_solutions(good + [sol(2, "1-1", 8, 0.068), sol(2, "1-2", 8, 0.068)])
    assert list(doubted) == [(2, "1-1")] and "8 stars, rms 68 mas" in doubted[(2, "1-1")]  # 1-2 has no others
    assert outlier_solutions(good + [sol(2, "1-1", 20, 0.012)]) == {}  # a little worse: not doubted
    assert outlier_solutions(good + [sol(2, "1-1", 8, 0.02)]) == {}  # few stars, a good fit (under 30 mas)
    # member 410: 8 stars at 63 mas where the others had 12-14 at 2-4 mas (more than half of theirs, 16x worse)
    others = [sol(0, "1-1", 14, 0.0037), sol(1, "1-1", 12, 0.0040), sol(3, "1-1", 14, 0.0038)]
    assert list(outlier_solutions(others + [sol(2, "1-1", 8, 0.063)])) == [(2, "1-1")]
    assert outlier_solutions(others + [sol(2, "1-1", 8, 0.032)]) == {}  # 8x worse on over half their stars


def test_a_header_a_pixel_off_is_replaced_where_pixels_are_arcseconds():
    """NEOSSat (3"/px, 500 stars registered to 0.2 px rms): headers 1-5" apart passed the check, whose tolerance was
    5 times the registration's scatter (1 px, 3"), not its error (the scatter over the root of the stars' number):
    every star then moved from one exposure to the next and nothing was static.  A header 2" off is replaced; one
    exact to the registration's error is left alone."""
    from types import SimpleNamespace

    from astropy.wcs import WCS

    from ssodetect.config import Config
    from ssodetect.pipeline.astrometry import _header_checks

    def wcs(dx_arcsec=0.0):
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crval = [150.0 + dx_arcsec / 3600.0 / math.cos(math.radians(20.0)), 20.0]
        w.wcs.crpix = [540.0, 350.0]
        w.wcs.cdelt = [-3.0 / 3600.0, 3.0 / 3600.0]
        return w

    rng = np.random.default_rng(5)
    xy = rng.uniform([20.0, 20.0], [1060.0, 680.0], (500, 2))
    drift = np.array([0.4, -1.1])  # [px] the field's drift between the two exposures
    stars = {0: xy + rng.normal(0.0, 0.14, xy.shape), 1: xy - drift + rng.normal(0.0, 0.14, xy.shape)}
    tasks = [SimpleNamespace(exposure=0, ccd="c", path="a.fits"), SimpleNamespace(exposure=1, ccd="c", path="b.fits")]
    for off, status in ((2.0, "replaced"), (0.0, "ok")):
        # exposure 1's header: the drift taken into account, then off by ``off`` arcsec
        w1 = wcs(off)
        w1.wcs.crpix = [540.0 - drift[0], 350.0 - drift[1]]
        checks = _header_checks(0, [0, 1], stars, tasks, {(0, "c"): wcs(), (1, "c"): w1}, {0: "header", 1: "header"},
                                Config())
        assert checks[1]["status"] == status, (off, checks[1]["disagreement_arcsec"], checks[1]["rms_px"])
