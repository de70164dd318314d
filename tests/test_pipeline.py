"""End to end on simulated scenes: recovery of injected movers, outputs, executors, API."""
import json
import logging
import math
import warnings

import numpy as np
import pytest
from astropy.table import Table

from ssodetect.config import load_config
from ssodetect.evaluate import evaluate_run
from ssodetect.pipeline import run_pipeline
from ssodetect.simulate import simulate

from conftest import small_scene_config


@pytest.fixture(scope="module")
def serial_run(scene, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    config = load_config(None)
    config.execution.progress = False
    result = run_pipeline([scene], out, config, refcat=scene / "refcat.ecsv")
    return out, result


def test_recovers_injected_movers(serial_run, scene):
    out, result = serial_run
    truth = Table.read(scene / "truth.ecsv")
    ev = evaluate_run(result.observations, truth)  # positions through the fitted WCS of perturbed headers
    assert ev.n_findable_bright >= 8
    assert ev.completeness_bright >= 0.9
    assert ev.n_false <= 1
    assert ev.median_residual_bright < 0.03  # arcsec
    assert ev.limit_5sigma - ev.mag50 < 1.0


def test_outputs_written_and_consistent(serial_run):
    out, result = serial_run
    for name in ("observations.ecsv", "objects.ecsv", "observations.psv", "config.toml", "provenance.json", "run.log"):
        assert (out / name).is_file(), name
    assert not list(out.parent.glob(".out.stage-*"))  # staging area removed
    obs = Table.read(out / "observations.ecsv")
    objs = Table.read(out / "objects.ecsv")
    assert len(objs) == len(np.unique(obs["object"]))
    for name, kind in zip(objs["object"], objs["kind"]):
        n = int(objs["n_obs"][objs["object"] == name][0])
        assert n == int(np.sum(obs["object"] == name)) >= (3 if kind == "linked" else 2)
    assert np.all(obs["obs_time"] != "") and np.all(obs["ra_err"] > 0)
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["n_objects"] == len(objs)
    # every CCD exposure solved against the reference catalogue despite the perturbed headers
    ast = Table.read(out / "astrometry.ecsv")
    assert len(ast) == 4 and np.all(ast["status"] == "ok") and np.all(ast["n_stars"] >= 12)
    assert np.all(np.maximum(ast["rms_ra"], ast["rms_dec"]) < 0.01)
    assert np.all(ast["header_offset"] > 0.5)  # the headers really were off, and were corrected
    assert np.all(obs["wcs"] == "fit")
    # magnitudes come from the fitted zero point: within 0.02 mag of the simulated one (25.6 - 2.5 log10 3.5)
    np.testing.assert_allclose(ast["zeropoint"], 25.6 - 2.5 * np.log10(3.5), atol=0.02)
    assert load_config(out / "config.toml").link.min_detections == 3
    psv = (out / "observations.psv").read_text().splitlines()
    header = [line for line in psv if line.startswith("trkSub")][0].split("|")
    rows = [line.split("|") for line in psv[psv.index("|".join(header)) + 1 :]]
    assert len(rows) == len(obs)
    cols = [c.strip() for c in header]
    for row in rows:
        rec = dict(zip(cols, (v.strip() for v in row)))
        assert rec["obsTime"].endswith("Z") and len(rec["trkSub"]) <= 8
        assert 0 <= float(rec["ra"]) < 360 and -90 <= float(rec["dec"]) <= 90


def test_dask_gives_the_same_result(serial_run, scene, tmp_path):
    pytest.importorskip("dask.distributed")
    _, serial = serial_run
    config = load_config(None)
    config.execution.progress = False
    config.execution.workers = 2
    result = run_pipeline([scene], None, config, refcat=scene / "refcat.ecsv")
    assert len(result.observations) == len(serial.observations) > 0
    for col in ("object", "exposure", "ccd"):
        assert list(result.observations[col]) == list(serial.observations[col])
    np.testing.assert_allclose(result.observations["ra"], serial.observations["ra"], rtol=0, atol=1e-9)  # 4 uas


def test_plain_layout_and_three_exposures(tmp_path):
    sim = tmp_path / "sim"
    simulate(small_scene_config(5, n_exposures=3, layout="plain", movers_per_ccd=300.0), sim)
    files = sorted(sim.glob("*.fits"))
    assert len(files) == 3
    config = load_config(None)
    config.execution.progress = False
    result = run_pipeline(files, tmp_path / "out", config)
    truth = Table.read(sim / "truth.ecsv")
    ev = evaluate_run(result.observations, truth, min_exposures=3)
    assert ev.n_findable_bright >= 5
    # with 3 exposures every one must be clean (a cosmic-ray hit or blend in one loses the object)
    assert ev.completeness_bright >= 0.75
    assert ev.n_false <= 1


def test_nothing_found_gives_empty_tables_with_columns(tmp_path):
    sim = tmp_path / "sim"
    simulate(small_scene_config(8, movers_per_ccd=0.0, nx=384, ny=384), sim)
    config = load_config(None)
    config.execution.progress = False
    result = run_pipeline([sim], tmp_path / "out", config)
    assert len(result.objects) == 0 and "rate" in result.objects.colnames
    obs = Table.read(tmp_path / "out" / "observations.ecsv")
    assert len(obs) == 0 and "ra_err" in obs.colnames


def test_frames_without_wcs_are_registered_and_movers_found_in_pixels(tmp_path):
    import re

    from astropy.io import fits

    sim = tmp_path / "sim"
    simulate(small_scene_config(6, n_exposures=5, layout="plain", movers_per_ccd=300.0,
                                star_density=150000.0), sim)
    bare = tmp_path / "bare"
    bare.mkdir()
    wcs_key = re.compile(r"^(WCSAXES|CTYPE|CRVAL|CRPIX|CD\d|PC\d|CDELT|CUNIT|[AB]P?_|LONPOLE|LATPOLE|RADESYS|EQUINOX|PV\d)")
    for path in sorted(sim.glob("*.fits")):
        with fits.open(path) as hdul:
            for hdu in hdul:
                for key in [k for k in hdu.header if wcs_key.match(k)]:
                    del hdu.header[key]
            hdul.writeto(bare / path.name)
    config = load_config(None)
    config.execution.progress = False
    config.astrometry.register_pixel_scale = 0.1
    result = run_pipeline([bare], tmp_path / "out", config)
    obs = result.observations
    assert len(obs) and set(obs["wcs"]) == {"relative"}
    # pixel positions against the truth, exposure by exposure
    truth = Table.read(sim / "truth.ecsv")
    ev = evaluate_run(obs, truth, pixels=True, match_radius=1.0)
    assert ev.n_findable_bright >= 5
    assert ev.completeness_bright >= 0.8
    assert ev.n_false <= 2
    assert ev.median_residual_bright < 0.3  # px
    # no astrometry: no ADES or MPC file at all (an ADES file without observations fails submit.xsd)
    for name in ("observations.psv", "observations.xml", "observations.mpc"):
        assert not (tmp_path / "out" / name).exists(), name
        assert name not in json.loads((tmp_path / "out" / "manifest.json").read_text())["products"]
    info = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert all(c["registration"]["status"] == "ok" for c in info["ccds"])
    # a WCS for one frame (say, from astrometry.net) gives every registered frame real sky positions
    original = sorted(sim.glob("*.fits"))[2]
    fits.Header(fits.getheader(original)).totextfile(tmp_path / "frame2.head")
    config.astrometry.reference_wcs = str(tmp_path / "frame2.head")
    config.astrometry.reference_frame = original.name
    placed = run_pipeline([bare], tmp_path / "out_wcs", config)
    assert set(placed.observations["wcs"]) == {"user"}
    ev = evaluate_run(placed.observations, truth)
    assert ev.completeness_bright >= 0.8 and ev.median_residual_bright < 0.05  # arcsec, through one header WCS
    psv = (tmp_path / "out_wcs" / "observations.psv").read_text()
    assert psv.count("SD0") == len(placed.observations)  # now ADES rows
    # the reference WCS edited in place (campaign 29: its path only was in the key, so the old positions stayed)
    head = fits.Header.fromtextfile(tmp_path / "frame2.head")
    head["CRVAL1"] += 0.01
    head.totextfile(tmp_path / "frame2.head", overwrite=True)
    moved = run_pipeline([bare], tmp_path / "out_wcs", config)
    status = {s["step"]: s["status"] for s in moved.steps}
    assert status["astrometry"] == "run" and status["detect"] == "cached"
    shift = np.median(moved.observations["ra"]) - np.median(placed.observations["ra"])
    assert abs(shift - 0.01) < 1e-4  # deg: the new header's positions, not the cached ones


def test_stars_cut_by_the_detector_edge_are_flagged(tmp_path):
    """Stars whose footprint or photometric aperture is cut by the detector edge are flagged (and left out of
    linking) unless a PSF fit of their pixels on the detector puts them on the detector with at most
    EDGE_FIT_MAX_INFO of their core information beyond the edge (then it measures them accurately, with errors
    widened by the information lost).  A star centred 0.45 px beyond the outer pixel centres (~half of its core
    information beyond the edge) is flagged; 1 and 2 PSF sigma
    in are fitted within 0.1 px (one on the first row is either fitted as accurately or flagged: half cut, its
    footprint looks like a trail along the edge); a star well inside is not cut.  The old rule (footprint
    truncated and the *measured* centre < 1.5 sigma from the edge) missed the real case behind it: on the
    Luxembourg night a star ~1 sigma from an edge with a dark first row was measured 2-3 px further in, and
    drifting off the edge it became a false slow mover (the real-frame test guards it)."""
    from astropy.io import fits

    from ssodetect.config import Config
    from ssodetect.detect.extract import EDGE_FIT_MAX_INFO, edge_information
    from ssodetect.io import scan_inputs
    from ssodetect.pipeline.ccd import process_ccd
    from ssodetect.simulate import DoubleGaussianPSF, splat

    rng = np.random.default_rng(4)
    sigma = 1.5
    image = rng.normal(1000.0, 5.0, (200, 400))
    # (x, true y): beyond the first row's centre, on it, 1 and 2 sigma in, well inside
    stars = [(40.5, -0.45), (110.2, 0.1), (180.5, 1.0 * sigma), (250.3, 2.0 * sigma), (340.7, 100.2)]
    psf = DoubleGaussianPSF(fwhm=sigma * 2.3548, wing_fraction=0.0)
    splat(image, [x for x, _ in stars], [y for _, y in stars], [20000.0] * len(stars), psf)
    header = fits.Header({"EXPTIME": 100.0, "DATE-OBS": "2024-01-01T00:00:00", "GAIN": 2.0})
    path = tmp_path / "edge.fits"
    fits.PrimaryHDU(image.astype(np.float32), header).writeto(path)
    table, _ = process_ccd(scan_inputs([path], Config().io)[0], Config(), require_wcs=False)
    rows = {}
    for x, y in stars:
        row = table[np.argmin(np.hypot(table["x"] - x, table["y"] - max(y, 0.0)))]
        assert abs(row["x"] - x) < 0.5
        rows[y] = row
    assert rows[-0.45]["edge_cut"] and not rows[-0.45]["edge_fit"]  # ~half its information beyond the edge
    for y in (0.1, 1.0 * sigma, 2.0 * sigma):
        # either measured by the PSF fit (then accurately, and little of its information beyond the edge) or flagged
        row = rows[y]
        if row["edge_fit"]:
            assert not row["edge_cut"] and abs(row["y"] - y) < 0.1
            assert edge_information(image.shape, [row["x"]], [row["y"]], sigma)[0] <= EDGE_FIT_MAX_INFO
        else:
            assert row["edge_cut"]
    assert rows[2.0 * sigma]["edge_fit"] and rows[1.0 * sigma]["edge_fit"]  # 1 sigma: refused by the 1-FWHM rule
    assert not rows[100.2]["edge_cut"] and abs(rows[100.2]["y"] - 100.2) < 0.1


def _with_stars_through_ccd_step(path, image, psf, rng):
    """Add 40 stars (for the PSF estimate) to a 300x300 frame, write it to ``path`` and run the CCD step on it."""
    from astropy.io import fits

    from ssodetect.config import Config
    from ssodetect.io import scan_inputs
    from ssodetect.pipeline.ccd import process_ccd
    from ssodetect.simulate import splat

    xs, ys = rng.uniform(40, 260, 40), rng.uniform(40, 260, 40)
    splat(image, xs, ys, rng.uniform(2e4, 8e4, 40), psf)
    header = fits.Header({"EXPTIME": 100.0, "DATE-OBS": "2024-01-01T00:00:00", "GAIN": 2.0})
    fits.PrimaryHDU(image.astype(np.float32), header).writeto(path)
    return process_ccd(scan_inputs([path], Config().io)[0], Config(), require_wcs=False)


def test_a_sharp_star_centred_between_the_outermost_pixel_centres_and_the_edge_is_fitted(tmp_path):
    """A point source centred 0.2-0.25 px beyond the outermost pixel centres (still on the detector) with a sharp
    PSF (FWHM 1.7 px) has ~30 % of its core information beyond the edge: the edge PSF fit measures it within 0.1 px
    and it stays usable (on member 208 two slow movers seen in only 3 exposures were lost when such a detection was
    refused); one centred 0.45 px beyond them, with ~45 % beyond, is cut."""
    from ssodetect.detect.extract import EDGE_FIT_MAX_INFO, edge_information
    from ssodetect.simulate import DoubleGaussianPSF, splat

    rng = np.random.default_rng(11)
    psf = DoubleGaussianPSF(fwhm=1.7, wing_fraction=0.0)
    image = rng.normal(1000.0, 5.0, (300, 300))
    stars = [(150.3, -0.25), (-0.2, 120.6), (299.45, 200.2)]  # bottom edge, left edge, right edge (beyond)
    splat(image, [x for x, _ in stars], [y for _, y in stars], [20000.0] * len(stars), psf)
    table, _ = _with_stars_through_ccd_step(tmp_path / "edge.fits", image, psf, rng)
    rows = [table[np.argmin(np.hypot(table["x"] - x, table["y"] - y))] for x, y in stars]
    info = [edge_information(image.shape, [x], [y], psf.sigma)[0] for x, y in stars]
    assert max(info[:2]) < EDGE_FIT_MAX_INFO < info[2]
    for row, (x, y) in zip(rows[:2], stars[:2]):
        assert row["edge_fit"] and not row["edge_cut"] and row["kind"] == "point"
        assert np.hypot(row["x"] - x, row["y"] - y) < 0.1
    assert rows[2]["edge_cut"] and not rows[2]["edge_fit"]


def test_a_bright_short_trail_near_the_edge_is_cut_only_when_its_light_reaches_it(tmp_path):
    """A bright 7 px trail whose footprint and aperture touch the edge from 6 px or 3.2 px stays usable and is
    measured where it is; one whose end comes within 1.5 PSF sigma + 1 px of the edge, or that runs off it, is cut
    (a V 20-22 slow mover had been unusable in every exposure where it came within ~10 px of an edge)."""
    from ssodetect.pipeline.ccd import APER_TRUNC, OBJ_TRUNC
    from ssodetect.simulate import DoubleGaussianPSF, splat
    from ssodetect.streaks import edge_distance

    # the ends of a diagonal segment, one beyond the edge
    d = edge_distance((100, 200), [10.0, 50.0, 196.0], [50.0, 3.0, 50.0], [10.0, 4.0, 10.0], [np.pi / 4, 0.0, 0.0])
    np.testing.assert_allclose(d, [10.5 - 5 / np.sqrt(2), 3.5, -1.5])
    rng = np.random.default_rng(5)
    image = rng.normal(1000.0, 5.0, (300, 300))
    psf = DoubleGaussianPSF(fwhm=2.0, wing_fraction=0.2, wing_sigma=3.0)
    steps = np.linspace(-3.5, 3.5, 57)
    # (centre x, centre y, angle): along x, ends 6 px from the left edge and 3.2 px from the right one; along y,
    # 6 px from the bottom and 1.5 px from the top
    trails = [(9.5, 150.3, 0.0), (150.2, 9.5, np.pi / 2), (292.8, 100.3, 0.0), (100.4, 294.5, np.pi / 2)]
    for x0, y0, theta in trails:
        splat(image, x0 + steps * np.cos(theta), y0 + steps * np.sin(theta), np.full(steps.size, 60000.0 / steps.size),
              psf)
    # a 14 px trail running 3.5 px off the top edge (its fit ends inside the edge: on family scenes, truncated
    # trails measured at >= 80 % of their length were fitted with their ends up to 1.1 px inside it)
    long_steps = 2.0 * steps
    splat(image, np.full(steps.size, 200.3), 296.0 + long_steps, np.full(steps.size, 80000.0 / steps.size), psf)
    table, _ = _with_stars_through_ccd_step(tmp_path / "trails.fits", image, psf, rng)
    centres = [(x, y) for x, y, _ in trails] + [(200.3, 294.0)]
    rows = [table[np.argmin(np.hypot(table["x"] - x, table["y"] - y))] for x, y in centres]
    for row, (x, y, _) in zip(rows[:4], trails):
        assert row["kind"] == "trail" and 6.0 < row["length"] < 8.5
        assert row["sep_flag"] & (OBJ_TRUNC | APER_TRUNC)  # the footprint or the aperture reaches the edge
    for row, (x, y, _) in zip(rows[:3], trails[:3]):
        assert not row["edge_cut"] and np.hypot(row["x"] - x, row["y"] - y) < 0.2
    assert rows[3]["edge_cut"]  # its light reaches the edge
    assert rows[4]["kind"] == "trail" and rows[4]["edge_cut"] and abs(rows[4]["x"] - 200.3) < 1.0  # the edge cut it


def test_a_trail_is_clear_of_the_edge_only_with_both_ends_a_margin_inside_every_edge():
    """edge_clear: both ends at least 1.5 sigma + 1 px inside every edge, whatever the direction (running along an
    edge, heading out, at 45 deg); a trail measured along an edge ~1.2 px inside may be a short trail leaving it
    obliquely (member 460, measured 1 px off) and is not clear."""
    from ssodetect.streaks.detect import edge_clear

    sigma = 0.7
    margin = 1.5 * sigma + 1.0
    shape = (100, 200)
    # along y = -0.5 (the bottom edge): centre line the margin +- 0.1 px inside, and member 460's 1.24 px
    along = edge_clear(shape, [50.0] * 3, [margin - 0.4, margin - 0.6, 0.742], [10.0, 10.0, 5.172], [0.0, 0.0, 0.07],
                       sigma)
    assert along.tolist() == [True, False, False]
    # heading straight out of the right edge (x = 199.5): the end margin +- 0.2 px inside
    out = edge_clear(shape, [199.5 - margin - 5.2, 199.5 - margin - 4.8], [50.0, 50.0], [10.0, 10.0], [0.0, 0.0], sigma)
    assert out.tolist() == [True, False]
    # at 45 deg towards the top edge (y = 99.5): the end's distance, not along the axis, tested +- 0.1 px
    half = 5.0 / math.sqrt(2.0)
    ys = [99.5 - margin - half + 0.1, 99.5 - margin - half - 0.1]
    assert edge_clear(shape, [100.0, 100.0], ys, [10.0, 10.0], [math.pi / 4] * 2, sigma).tolist() == [False, True]
    # the other end, towards the left edge (x = -0.5)
    assert edge_clear(shape, [4.5 + margin + 0.1, 4.5 + margin - 0.1], [50.0, 50.0], [10.0, 10.0], [math.pi] * 2,
                      sigma).tolist() == [True, False]


def test_a_short_trail_along_the_edge_is_cut_and_a_bright_point_clear_of_it_stays_usable(tmp_path):
    """A 9 px trail running along the bottom edge, its centre line 1.3 px inside, is fitted by the pixels on the
    detector (within 0.1 px) but is cut (``edge_weak`` in linking: it may complete a tracklet) since a short trail
    leaving the edge obliquely, cut in half, looks the same (member 460: a 5 px trail at 22 deg, measured along the
    edge ~1 px off); a bright point source whose footprint reaches the edge from 8 px (beyond 3 FWHM + 1 px) is
    measured by its core and is not cut; a trail heading straight off the edge is cut."""
    from ssodetect.pipeline.ccd import APER_TRUNC, OBJ_TRUNC
    from ssodetect.simulate import DoubleGaussianPSF, splat, trail_points

    rng = np.random.default_rng(6)
    image = rng.normal(1000.0, 5.0, (300, 300))
    psf = DoubleGaussianPSF(fwhm=1.7, wing_fraction=0.2, wing_sigma=3.0)
    splat(image, *trail_points(145.0, 0.8, 154.0, 0.8, 30000.0), psf)  # along the edge
    splat(image, [8.3], [150.4], [4.0e6], psf)  # bright: its footprint reaches the left edge
    splat(image, *trail_points(292.0, 200.3, 302.0, 200.3, 30000.0), psf)  # heading off the right edge
    # member 460: a 5 px trail at 22 deg to the bottom edge, its centre 0.26 px beyond it: half cut, it looks like a
    # trail along the edge ~1 px inside, ~1 px off
    ang = math.radians(22.0)
    splat(image, *trail_points(230.0 - 2.5 * math.cos(ang), -0.26 - 2.5 * math.sin(ang),
                               230.0 + 2.5 * math.cos(ang), -0.26 + 2.5 * math.sin(ang), 30000.0), psf)
    table, info = _with_stars_through_ccd_step(tmp_path / "edge.fits", image, psf, rng)
    row = table[np.argmin(np.hypot(table["x"] - 149.5, table["y"] - 0.8))]
    assert row["kind"] == "trail" and row["sep_flag"] & (OBJ_TRUNC | APER_TRUNC)
    # measured by the trail fit of its pixels on the detector (its barycentre leaned 0.46 px inwards)
    assert row["edge_cut"] and np.hypot(row["x"] - 149.5, row["y"] - 0.8) < 0.1 and abs(row["length"] - 9.0) < 0.5
    star = table[np.argmin(np.hypot(table["x"] - 8.3, table["y"] - 150.4))]
    assert star["kind"] == "point" and star["sep_flag"] & (OBJ_TRUNC | APER_TRUNC)
    assert not star["edge_cut"] and np.hypot(star["x"] - 8.3, star["y"] - 150.4) < 0.1
    off = table[np.argmin(np.hypot(table["x"] - 296.0, table["y"] - 200.3))]
    assert off["edge_cut"]
    oblique = table[np.argmin(np.hypot(table["x"] - 230.0, table["y"] - 0.5))]
    assert abs(oblique["x"] - 230.0) < 3.0 and oblique["edge_cut"]
    assert info["n_edge_kept"] >= 1 and info["n_edge_cut"] == int(np.sum(table["edge_cut"])) >= 1


def test_edge_information_is_the_share_of_psf_squared_beyond_the_edge():
    """Half for a source centred on the edge itself, three quarters in a corner (one minus the product of
    the halves kept), nothing well inside; matches a brute-force sum of the Gaussian PSF^2 over a fine grid."""
    from ssodetect.detect.extract import edge_information

    sigma = 1.2
    shape = (50, 60)
    xs = np.array([-0.5, 30.0, 0.3, -0.5, 59.5])
    ys = np.array([20.0, 25.0, 0.7, -0.5, 49.5])
    got = edge_information(shape, xs, ys, sigma)
    assert abs(got[0] - 0.5) < 1e-9 and got[1] < 1e-12 and abs(got[3] - 0.75) < 1e-9 and abs(got[4] - 0.75) < 1e-9
    g = np.arange(-20.0, 80.0, 0.05) + 0.025  # cell centres: none on an edge
    gx, gy = np.meshgrid(g, g)
    p2 = np.exp(-((gx - xs[2]) ** 2 + (gy - ys[2]) ** 2) / sigma**2)
    inside = (gx > -0.5) & (gx < shape[1] - 0.5) & (gy > -0.5) & (gy < shape[0] - 0.5)
    assert abs(got[2] - (1.0 - p2[inside].sum() / p2.sum())) < 2e-3


def test_occupancy_removes_static_sources_and_chance_alignments(serial_run, scene):
    """Fabricated slow 'movers' on the simulated pixels: a star strung into a 0.5"/h tracklet is still there
    after it 'moved'; three real movers' detections in a line predict nothing where the tracklet misses.
    The run's own slow movers, and one of them with a detection removed, all pass."""
    from astropy.table import vstack

    from ssodetect.pipeline.executor import SerialExecutor
    from ssodetect.pipeline.occupancy import occupancy_vet
    from ssodetect.pipeline.run import wcs_lookup

    _, result = serial_run
    obs, objs = result.observations, result.objects
    truth = Table.read(scene / "truth.ecsv")
    ev = evaluate_run(obs, truth)
    names = [str(n) for n, k, c in zip(objs["object"], objs["kind"], objs["n_obs"])
             if k == "linked" and c == 4 and str(n) not in ev.false_objects]
    assert len(names) >= 6
    rows_of = {n: obs[obs["object"] == n] for n in names}
    wcs_for = wcs_lookup(result)
    ccd = str(obs["ccd"][0])
    ny, nx = result.ccd_info[0]["shape"]
    # a star of G 19-21.5 well inside the CCD in every exposure
    ref = Table.read(scene / "refcat.ecsv")
    star = None
    for r in ref[(ref["phot_g_mean_mag"] > 19) & (ref["phot_g_mean_mag"] < 21.5)]:
        pix = [wcs_for(e.index, ccd).all_world2pix(r["ra"], r["dec"], 0) for e in result.exposures]
        if all(30 < p[0] < nx - 30 and 30 < p[1] < ny - 30 for p in pix):
            star = r
            break
    assert star is not None
    template = rows_of[names[0]]
    t_h = (np.asarray(template["mjd"]) - template["mjd"][0]) * 24.0
    static = template[:3].copy()
    static["object"] = "FK00001"
    static["ra"] = star["ra"] + 0.5 * t_h[:3] / 3600.0 / np.cos(np.radians(star["dec"]))
    static["dec"] = star["dec"]
    mix = vstack([rows_of[names[k]][k : k + 1] for k in range(3)])  # exposures 0, 1, 2 of three movers
    mix["object"] = "FK00002"
    partial = rows_of[names[3]][[0, 1, 3]].copy()  # a real mover missing one detection
    partial["object"] = "FK00003"
    fake_obj = objs[[list(objs["object"]).index(names[0])] * 3]
    fake_obj["object"] = ["FK00001", "FK00002", "FK00003"]
    # the same three as doubtful tracklets (refused by the linker's false-alarm control by a small margin): only the
    # real mover, its light measured where it was not detected, is confirmed, and becomes a linked object
    doubtful = [t.copy() for t in (static, mix, partial)]
    for t, name in zip(doubtful, ["FK00011", "FK00012", "FK00013"]):
        t["object"], t["kind"] = name, "doubtful"
    doubtful_obj = fake_obj.copy()
    doubtful_obj["object"], doubtful_obj["kind"] = ["FK00011", "FK00012", "FK00013"], "doubtful"
    config = load_config(None)
    executor = SerialExecutor()
    try:
        kept_obs, kept_obj, stats = occupancy_vet(vstack([obs, static, mix, partial, *doubtful]),
                                                  vstack([objs, fake_obj, doubtful_obj]), result.exposures,
                                                  result.ccd_info, wcs_for, result.masters, config, executor)
    finally:
        executor.close()
    assert sorted(stats["rejected"]) == ["FK00001", "FK00002"]
    assert stats["n_rejected_static"] >= 1 and stats["n_rejected_missing"] >= 1
    # without the detections the template's response is the Gaussian model's; the run measured it on every image's
    # stars
    assert stats["n_response_gaussian"] == stats["n_images"] > 0 and stats["n_response_measured"] == 0
    in_run = result.link_stats["occupancy"]
    assert in_run["n_response_measured"] == in_run["n_images"] > 0 and in_run["n_response_gaussian"] == 0
    assert stats["n_missing_tested"] >= 2 and stats["n_tested"] >= len(names)
    assert stats["n_objects"] == int(np.isin(np.asarray(objs["kind"]), ["linked", "streak"]).sum()) + 3
    assert "FK00003" in set(kept_obj["object"]) and set(names) <= set(kept_obj["object"])
    assert not np.isin(["FK00001", "FK00002"], np.asarray(kept_obs["object"])).any()
    assert stats["n_doubtful"] == 3 and stats["n_doubtful_confirmed"] == 1 and stats["n_doubtful_dropped"] == 2
    assert not np.isin(["FK00011", "FK00012"], np.asarray(kept_obs["object"])).any()
    confirmed = kept_obs[kept_obs["object"] == "FK00013"]
    assert len(confirmed) == 3 and set(confirmed["kind"]) == {"linked"}
    assert kept_obj["kind"][list(kept_obj["object"]).index("FK00013")] == "linked"
    assert "doubtful" not in set(kept_obs["kind"]) | set(kept_obj["kind"])
    # without the occupancy test nothing confirms a doubtful tracklet: all dropped
    config.link.occupancy_test = False
    off_obs, off_obj, off = occupancy_vet(vstack([obs, *doubtful]), vstack([objs, doubtful_obj]), result.exposures,
                                          result.ccd_info, wcs_for, result.masters, config, SerialExecutor())
    assert off["n_doubtful_dropped"] == 3 and len(off_obj) == len(objs) and len(off_obs) == len(obs)


def test_trails_of_removed_objects_stay_accounted_for(serial_run):
    from ssodetect.pipeline.occupancy import release_trails

    _, result = serial_run
    streaks = result.streaks
    linked = np.asarray(streaks["status"]) == "linked"
    assert linked.sum() >= 2
    name = str(streaks["object"][np.nonzero(linked)[0][0]])
    out = release_trails(streaks, [name])
    mine = np.asarray(streaks["object"]).astype(str) == name
    assert len(out) == len(streaks) and np.all(out["status"][mine] == "static") and np.all(out["object"][mine] == "")
    assert list(out["status"][~mine]) == list(streaks["status"][~mine])
    assert list(streaks["status"][mine]) == ["linked"] * int(mine.sum())  # the input is not modified


def _warns(x):
    logging.getLogger("ssodetect.detect").warning("frame %s: odd", x)
    logging.getLogger("ssodetect.detect").info("frame %s: fine", x)
    warnings.warn(f"library says {x}", UserWarning)
    return x * 2


def test_a_workers_warnings_come_back_with_its_result(caplog):
    """What a task logs (WARNING and above) and the Python warnings it raises on a Dask worker are sent back with its
    result and said again in the run's process (:class:`ssodetect.pipeline.executor._Relayed`)."""
    import pickle

    from ssodetect.pipeline.executor import _Relayed, relay

    result, records, raised = pickle.loads(pickle.dumps(_Relayed(_warns)(3)))  # as a worker sends it
    assert result == 6 and [r.getMessage() for r in records] == ["frame 3: odd"]
    assert [r[0] for r in raised] == ["library says 3"]
    caplog.clear()  # the task ran in this process: its own record is not the relayed one
    with caplog.at_level("WARNING", logger="ssodetect"), pytest.warns(UserWarning, match="library says 3"):
        relay(records, raised)
    assert [(r.name, r.getMessage()) for r in caplog.records] == [("ssodetect.detect", "frame 3: odd")]
