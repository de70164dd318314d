"""Raw-frame calibration and frame registration, on synthetic raw frames with known truth and on real frames."""
import math

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time

from ssodetect.astrometry.register import register_to_reference, relative_wcs
from ssodetect.calibrate import build_masters, frame_type, hot_pixel_map, parse_section
from ssodetect.config import Config
from ssodetect.errors import InputError
from ssodetect.io import find_inputs, scan_inputs
from ssodetect.pipeline.ccd import process_ccd
from ssodetect.pipeline.run import build_calibration

from conftest import real_data

NY, NX, OVERSCAN = 64, 80, 8  # raw frames: 8 overscan columns on the right


def _raw(path, kind, exptime, signal, rng, *, bias=1000.0, dark=None, flat=None):
    """An unsigned 16-bit raw frame (BZERO 32768) with overscan and TRIMSEC."""
    image = np.full((NY, NX + OVERSCAN), bias, float)
    image[:, :NX] += (signal * (flat if flat is not None else 1.0)) + (dark * exptime if dark is not None else 0.0)
    image += rng.normal(0.0, 3.0, image.shape)
    image[:, :NX] += 0.5 * np.arange(NY)[:, None]  # a bias gradient along rows, also in the overscan
    image[:, NX:] += 0.5 * np.arange(NY)[:, None]
    data = np.clip(np.round(image), 0, 65535).astype(np.uint16)
    header = fits.Header()
    header["IMAGETYP"] = kind
    header["EXPTIME"] = exptime
    header["DATE-OBS"] = "2020-01-01T00:00:00"
    header["BIASSEC"] = f"[{NX + 1}:{NX + OVERSCAN},1:{NY}]"
    header["TRIMSEC"] = f"[1:{NX},1:{NY}]"
    fits.PrimaryHDU(data, header).writeto(path)
    return path


def test_frame_types_and_sections():
    h = fits.Header()
    assert frame_type(h, ["IMAGETYP"]) == "light"
    for value, kind in [("Bias Frame", "bias"), ("ZERO", "bias"), ("Dark Frame", "dark"), ("Flat Field", "flat"),
                        ("SKYFLAT", "flat"), ("Light Frame", "light"), ("OBJECT", "light")]:
        h["IMAGETYP"] = value
        assert frame_type(h, ["OBSTYPE", "IMAGETYP"]) == kind
    rows, cols = parse_section("[81:88,1:64]", (64, 88))
    assert (rows, cols) == (slice(0, 64), slice(80, 88))
    with pytest.raises(ValueError):
        parse_section("[0:10,1:5]", (64, 88))
    with pytest.raises(ValueError):
        parse_section("81:88,1:64", (64, 88))
    # a partial read-out: the section describes the whole detector (NEOSSat's BIASSEC [1:16,1:1020] on 712 rows)
    with pytest.raises(ValueError):
        parse_section("[1:16,1:1020]", (712, 1078))
    assert parse_section("[1:16,1:1020]", (712, 1078), clip=True) == (slice(0, 712), slice(0, 16))
    with pytest.raises(ValueError):
        parse_section("[1:16,800:1020]", (712, 1078), clip=True)  # starting outside the image is still an error
    # a section that runs backwards flips the data in IRAF's convention: refused for a trim (a plain cut mirrored
    # every position without a word), the same pixels for an overscan's median
    with pytest.raises(ValueError, match="runs backwards"):
        parse_section("[64:1,1:64]", (64, 88))
    assert parse_section("[88:81,64:1]", (64, 88), reversed_ok=True) == (slice(0, 64), slice(80, 88))


def test_masters_recover_the_sky(tmp_path):
    rng = np.random.default_rng(5)
    dark = np.full((NY, NX), 0.2)
    dark[10, 20] = 40.0  # a hot pixel
    flat = 1.0 + 0.1 * np.sin(np.arange(NX) / 9.0)[None, :] * np.ones((NY, 1))
    bias = [_raw(tmp_path / f"b{i}.fits", "Bias Frame", 0.0, 0.0, rng) for i in range(7)]
    darks = [_raw(tmp_path / f"d{i}.fits", "Dark Frame", 100.0, 0.0, rng, dark=dark) for i in range(5)]
    flats = [_raw(tmp_path / f"f{i}.fits", "Flat Field", 1.0, 20000.0, rng, dark=dark, flat=flat) for i in range(5)]
    sky = 300.0
    light = _raw(tmp_path / "light.fits", "Light Frame", 50.0, sky, rng, dark=dark, flat=flat)
    masters = build_masters({"bias": [(str(p), 0) for p in bias], "dark": [(str(p), 0) for p in darks],
                             "flat": [(str(p), 0) for p in flats]})
    assert masters.counts == {"bias": 7, "dark": 5, "flat": 5}
    assert masters.bias.shape == (NY, NX)  # trimmed
    assert abs(float(np.median(masters.bias))) < 1.0  # overscan (with its row gradient) removed
    assert masters.dark[10, 20] == pytest.approx(40.0, rel=0.02)
    assert float(np.median(masters.dark)) == pytest.approx(0.2, abs=0.02)
    assert np.allclose(masters.flat, flat / np.median(flat), atol=0.005)
    # the whole chain through the pipeline's reader: scan recognises the kinds, masters built, light calibrated
    config = Config()
    refs, by_ccd = build_calibration(scan_inputs(find_inputs([tmp_path]), config.io), config)
    assert [r.path for r in refs] == [str(light)]
    from ssodetect.io import read_ccd
    from ssodetect.calibrate import calibrate_ccd

    image = calibrate_ccd(read_ccd(refs[0], config.io), by_ccd[refs[0].ccd])
    assert image.data.shape == (NY, NX)
    # flat-fielded sky is uniform: sky * median(flat), hot pixel gone, residual scatter only the noise
    expected = sky * float(np.median(flat))
    assert float(np.median(image.data)) == pytest.approx(expected, rel=0.01)
    assert abs(float(image.data[10, 20]) - expected) < 20.0
    assert float(np.std(image.data)) < 6.0
    assert not image.mask.any()


def test_saturated_raw_pixels_are_masked(tmp_path):
    rng = np.random.default_rng(1)
    path = _raw(tmp_path / "light.fits", "Light Frame", 10.0, 100.0, rng)
    with fits.open(path, mode="update") as hdul:
        data = hdul[0].data
        data[5:8, 5:8] = 65535
    bias = [_raw(tmp_path / f"b{i}.fits", "Bias Frame", 0.0, 0.0, rng) for i in range(3)]
    config = Config()
    refs, masters = build_calibration(scan_inputs([path] + bias, config.io), config)
    from ssodetect.io import read_ccd
    from ssodetect.calibrate import calibrate_ccd

    image = calibrate_ccd(read_ccd(refs[0], config.io), masters[refs[0].ccd])
    assert image.saturated[5:8, 5:8].all() and image.saturated.sum() == 9


def test_darks_need_an_exposure_time(tmp_path):
    rng = np.random.default_rng(2)
    path = _raw(tmp_path / "d.fits", "Dark Frame", 0.0, 0.0, rng)
    with pytest.raises(InputError, match="d.fits"):
        build_masters({"dark": [(str(path), 0)]})


def test_registration_recovers_an_affine_and_places_frames_consistently():
    rng = np.random.default_rng(8)
    ref = rng.uniform(0, 1000, (120, 2))
    angle = math.radians(0.4)
    matrix = 1.001 * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    offset = np.array([12.3, -7.8])
    # the frame sees the stars where ref = matrix @ src + offset, with 0.05 px noise and 20 % lost
    src = np.linalg.solve(matrix, (ref - offset).T).T + rng.normal(0, 0.05, ref.shape)
    keep = rng.random(len(ref)) > 0.2
    reg = register_to_reference(src[keep], ref)
    assert reg is not None and reg.n_stars >= 0.9 * keep.sum()
    grid = np.array([[0.0, 0.0], [1000.0, 0.0], [0.0, 1000.0], [1000.0, 1000.0]])
    truth = grid @ matrix.T + offset
    assert np.max(np.hypot(*(reg.apply(grid) - truth).T)) < 0.05
    # a star has one sky position whichever frame it is measured on
    from ssodetect.astrometry.register import Registration
    from ssodetect.pipeline.astrometry import place_on_reference

    def table(xy):
        n = len(xy)
        return Table({"x": xy[:, 0], "y": xy[:, 1], "theta": np.zeros(n), "length": np.zeros(n), "cut": np.zeros(n, int),
                      "x_err": np.full(n, 0.05), "y_err": np.full(n, 0.05)})

    grid = relative_wcs((1000, 1000), (60.0, 20.0), 1.2)
    on_ref = place_on_reference(table(ref[keep]), Registration(np.eye(2), np.zeros(2), 0, 0.0), grid, "relative")
    on_src = place_on_reference(table(src[keep]), reg, grid, "relative")
    sep = np.hypot((on_ref["ra"] - on_src["ra"]) * math.cos(math.radians(20.0)), on_ref["dec"] - on_src["dec"]) * 3600.0
    assert float(np.median(sep)) < 0.1 * 1.2  # < 0.1 px
    assert set(on_src["wcs"]) == {"relative"} and np.allclose(on_src["x"], src[keep][:, 0])  # own pixels kept
    # an unrelated star list does not register
    assert register_to_reference(rng.uniform(0, 1000, (60, 2)), ref) is None


def test_real_raw_night_calibrated_and_the_asteroid_measured():
    """(2713) Luxembourg, MIT Wallace Observatory: raw 16-bit frames with bias and dark frames, no flat."""
    folder = real_data("real", "luxembourg_2713_night1")
    config = Config()
    refs, masters = build_calibration(scan_inputs(find_inputs([folder]), config.io), config)
    assert len(refs) == 25 and set(masters) == {"0"}
    m = masters["0"]
    assert m.counts == {"bias": 10, "dark": 5, "flat": 0} and m.flat is None
    truth = Table.read(folder / "ground_truth_20181012.csv", format="ascii.csv", comment="#")
    by_name = {r.path.rsplit("/", 1)[-1]: r for r in refs}
    for row in truth[:2]:  # clear frames at the start of the night
        table, info = process_ccd(by_name[row["file"]], config, require_wcs=False, calibration=m)
        assert "no flat" in info["calibrated"]
        d = np.hypot(np.asarray(table["x"]) - row["cen_x"], np.asarray(table["y"]) - row["cen_y"])
        assert float(d.min()) <= 1.0
        assert float(table["snr"][int(np.argmin(d))]) > 15.0


def test_calibrate_command_writes_masters_that_runs_reuse(tmp_path):
    from ssodetect.cli import main
    from ssodetect.config import load_config

    rng = np.random.default_rng(4)
    raw = tmp_path / "raw"
    raw.mkdir()
    dark = np.full((NY, NX), 0.3)
    for i in range(3):
        _raw(raw / f"b{i}.fits", "Bias Frame", 0.0, 0.0, rng)
        _raw(raw / f"d{i}.fits", "Dark Frame", 60.0, 0.0, rng, dark=dark)
    light = _raw(raw / "light.fits", "Light Frame", 60.0, 500.0, rng, dark=dark)
    before = light.read_bytes()
    assert main(["calibrate", str(raw), "--out", str(tmp_path / "cal"), "--lights"]) == 0
    assert light.read_bytes() == before  # inputs untouched
    assert sorted(p.name for p in (tmp_path / "cal").glob("master_*.fits")) == ["master_bias.fits", "master_dark.fits"]
    calibrated = fits.getdata(tmp_path / "cal" / "calibrated" / "light.fits")
    assert calibrated.shape == (NY, NX) and float(np.median(calibrated)) == pytest.approx(500.0, abs=2.0)
    # the masters, given in [calibrate], calibrate a light frame alone exactly as the raw frames did
    (tmp_path / "c.toml").write_text(f'[calibrate]\nbias = ["{tmp_path / "cal" / "master_bias.fits"}"]\n'
                                     f'dark = ["{tmp_path / "cal" / "master_dark.fits"}"]\n')
    config = load_config(tmp_path / "c.toml")
    refs, masters = build_calibration(scan_inputs([light], config.io), config)
    from ssodetect.calibrate import calibrate_ccd
    from ssodetect.io import read_ccd

    image = calibrate_ccd(read_ccd(refs[0], config.io), masters[refs[0].ccd])
    assert np.allclose(image.data, calibrated, atol=1e-3)
    # nothing to calibrate with: a one-line error, exit code 2
    assert main(["calibrate", str(light), "--out", str(tmp_path / "none")]) == 2
    # campaign 31: a bias binned 2x2 among 1x1 lights was combined without a word: refused, naming it
    with fits.open(raw / "b1.fits", mode="update") as hdul:
        hdul[0].header["XBINNING"] = 2
    with fits.open(light, mode="update") as hdul:
        hdul[0].header["XBINNING"] = 1
    assert main(["calibrate", str(raw), "--out", str(tmp_path / "binned")]) == 2
    assert not (tmp_path / "binned").exists()
    # campaign 32: binning given as CCDSUM (NOAO/IRAF) is compared too, and a number written as text is that number
    with fits.open(raw / "b1.fits", mode="update") as hdul:
        hdul[0].header["XBINNING"] = "1"
        hdul[0].header["CCDSUM"] = "1 2"
    with fits.open(light, mode="update") as hdul:
        hdul[0].header["CCDSUM"] = "1 1"
    assert main(["calibrate", str(raw), "--out", str(tmp_path / "ccdsum")]) == 2
    with fits.open(raw / "b1.fits", mode="update") as hdul:
        hdul[0].header["CCDSUM"] = "1 1"
    assert main(["calibrate", str(raw), "--out", str(tmp_path / "same")]) == 0  # '1' is 1
    # and a calibration made with warnings exits 1, as a run does (it exited 0): a frame given twice
    with fits.open(raw / "b1.fits", mode="update") as hdul:
        hdul[0].header["XBINNING"] = 1
    (tmp_path / "twice.toml").write_text(f'[calibrate]\nbias = ["{raw / "b0.fits"}"]\n')
    assert main(["calibrate", str(raw), "--out", str(tmp_path / "warned"),
                 "--config", str(tmp_path / "twice.toml")]) == 1


def _named(path, ccd):
    """The raw frame at ``path`` with its CCD named (``CCDNAME``)."""
    with fits.open(path, mode="update") as hdul:
        hdul[0].header["CCDNAME"] = ccd
    return path


def test_masters_of_named_ccds_find_their_lights_and_unnamed_ones_are_placed_or_refused(tmp_path, caplog):
    from ssodetect.cli import main
    from ssodetect.config import load_config

    rng = np.random.default_rng(5)
    raw = tmp_path / "raw"
    raw.mkdir()
    lights = {}
    for ccd, level in (("A", 1000.0), ("B", 1400.0)):
        for i in range(3):
            _named(_raw(raw / f"b{ccd}{i}.fits", "Bias Frame", 0.0, 0.0, rng, bias=level), ccd)
        lights[ccd] = _named(_raw(raw / f"l{ccd}.fits", "Light Frame", 60.0, 500.0, rng, bias=level), ccd)
    assert main(["calibrate", str(raw), "--out", str(tmp_path / "cal")]) == 0
    # each CCD's master carries its name: given back, each calibrates its own CCD's light (the biases differ by 400)
    files = {ccd: tmp_path / "cal" / f"ccd_{ccd}" / "master_bias.fits" for ccd in "AB"}
    assert {ccd: fits.getheader(f)["CCDNAME"] for ccd, f in files.items()} == {"A": "A", "B": "B"}
    (tmp_path / "c.toml").write_text(f'[calibrate]\nbias = ["{files["A"]}", "{files["B"]}"]\n')
    config = load_config(tmp_path / "c.toml")
    refs, masters = build_calibration(scan_inputs(list(lights.values()), config.io), config)
    assert sorted(masters) == ["A", "B"]
    from ssodetect.calibrate import calibrate_ccd
    from ssodetect.io import read_ccd

    for ref in refs:
        image = calibrate_ccd(read_ccd(ref, config.io), masters[ref.ccd])
        assert float(np.median(image.data)) == pytest.approx(500.0, abs=3.0), ref.ccd
    # a master that names no CCD (as older versions wrote them) serves the lights of one CCD, said in a warning
    unnamed = tmp_path / "unnamed_bias.fits"
    with fits.open(files["B"]) as hdul:
        header = hdul[0].header.copy()
        del header["CCDNAME"]
        fits.PrimaryHDU(hdul[0].data, header).writeto(unnamed)
    (tmp_path / "u.toml").write_text(f'[calibrate]\nbias = ["{unnamed}"]\n')
    config = load_config(tmp_path / "u.toml")
    with caplog.at_level("WARNING"):
        refs, masters = build_calibration(scan_inputs([lights["B"]], config.io), config)
    assert sorted(masters) == ["B"] and "name no CCD" in caplog.text
    assert float(np.median(calibrate_ccd(read_ccd(refs[0], config.io), masters["B"]).data)) == pytest.approx(500.0, abs=3.0)
    # ... and is refused, naming it, for lights of two CCDs (which one it belongs to is unknown)
    with pytest.raises(InputError, match="unnamed_bias.fits: .*names no CCD.*A, B"):
        build_calibration(scan_inputs(list(lights.values()), config.io), config)
    # masters of another CCD than the lights' are said, not silently passed over
    caplog.clear()
    (tmp_path / "a.toml").write_text(f'[calibrate]\nbias = ["{files["A"]}"]\n')
    config = load_config(tmp_path / "a.toml")
    with caplog.at_level("INFO"):
        _, masters = build_calibration(scan_inputs([lights["B"]], config.io), config)
    assert "CCD(s) A match no light frame's CCD (B)" in caplog.text
    assert "light frames of CCD(s) B have no bias, dark or flat" in caplog.text


def test_reference_wcs_errors_name_the_file(tmp_path):
    from ssodetect.errors import ConfigError
    from ssodetect.pipeline.astrometry import load_reference_wcs

    with pytest.raises(ConfigError, match="missing.wcs"):
        load_reference_wcs(str(tmp_path / "missing.wcs"))
    plain = tmp_path / "plain.fits"
    fits.PrimaryHDU(np.zeros((4, 4), np.float32)).writeto(plain)
    with pytest.raises(ConfigError, match="plain.fits: no celestial WCS"):
        load_reference_wcs(str(plain))


def test_hot_pixels_are_found_in_the_frames_themselves_and_stars_are_not():
    """Nine frames whose sky drifts by 4-12 px between them, a star that stays put, 3 % hot pixels of every
    amplitude: the median keeps the hot pixels and the steady star, the sharpness test tells them apart."""
    rng = np.random.default_rng(5)
    ny, nx = 200, 240
    yy, xx = np.mgrid[0:ny, 0:nx]
    hot = rng.random((ny, nx)) < 0.03
    amplitude = rng.uniform(40.0, 2000.0, (ny, nx))
    stars = rng.uniform([10, 10], [nx - 10, ny - 10], (60, 2))
    frames = []
    for k in range(9):
        shift = np.array([4.0 + k * 1.0, 12.0 - k]) * (1 if k % 2 else -1)
        image = 500.0 + rng.normal(0.0, 10.0, (ny, nx))
        for x, y in stars + shift:
            image += 3000.0 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.6 ** 2))
        image += 5000.0 * np.exp(-((xx - 120.3) ** 2 + (yy - 100.6) ** 2) / (2 * 1.3 ** 2))  # the steady star
        frames.append(image + np.where(hot, amplitude, 0.0))
    found = hot_pixel_map(np.array(frames, np.float32))
    strong = hot & (amplitude > 100.0)  # 10 sigma of the frames' noise
    assert found[strong].mean() > 0.97
    assert (found & ~hot).sum() <= 0.003 * found.size  # edges of star light left in the median: 0.18 % measured
    steady = np.hypot(xx - 120.3, yy - 100.6) < 4
    assert not (found & steady & ~hot).any()


def test_a_sequence_without_darks_gets_its_hot_pixels_as_hits_not_as_the_detector_mask():
    """NEOSSat, 43 frames without darks: 13 % hot pixels that flicker, and warm ones below that cut which skew
    the noise.  Found in 9 of the frames, the hot pixels are hits for the detection; the background is lifted
    and the noise widened for the warm ones (else 82 % of a frame was one footprint and its bright stars were
    never measured); the bright stars are measured."""
    from scipy import ndimage

    from ssodetect.calibrate import calibrate_ccd
    from ssodetect.io import read_ccd

    folder = real_data("real", "neossat_comet_leonard")
    config = Config()
    refs, masters = build_calibration(scan_inputs(find_inputs([folder]), config.io), config)
    m = masters["NEOSSat_Science"]
    assert m.counts["hot"] == 9 and m.dark is None and 0.08 < m.hot.mean() < 0.16
    assert "hot/cold pixels" in m.describe()
    ref = sorted(refs, key=lambda r: r.mjd)[20]
    table, info = process_ccd(ref, config, require_wcs=False, calibration=m)
    assert info["shape"] == [715, 1062]  # overscan columns trimmed, the partial read-out kept whole
    assert info["background_level_added"] > 20.0 and info["noise_scale"] > 1.5
    near = np.asarray(table["near_mask"], bool)
    assert near.mean() < 0.5  # hot pixels are not the detector mask
    image = calibrate_ccd(read_ccd(ref, config.io), m)
    smooth = ndimage.gaussian_filter(np.where(image.mask | image.hot, np.median(image.data), image.data), 2)
    peaks = (smooth == ndimage.maximum_filter(smooth, 15)) & (smooth > np.percentile(smooth, 99.9))
    ys, xs = np.nonzero(peaks)
    brightest = np.argsort(-smooth[ys, xs])[:10]
    found = [np.hypot(np.asarray(table["x"]) - xs[k], np.asarray(table["y"]) - ys[k]).min() < 1.5 for k in brightest]
    assert sum(found) >= 6, found  # the ten brightest sources (a saturated star and the comet's coma among them)
    config.calibrate.hot_pixels = False
    _, masters_off = build_calibration(scan_inputs(find_inputs([folder]), config.io), config)
    assert "NEOSSat_Science" not in masters_off  # nothing to calibrate with: the frame is taken as it is


def _write_frames(folder, frames, t0=60000.0):
    for k, image in enumerate(frames):
        header = fits.Header({"DATE-OBS": Time(t0 + k * 0.002, format="mjd").isot, "EXPTIME": 60.0,
                              "FILTER": "R", "INSTRUME": "CAM", "IMAGETYP": "Light Frame"})
        fits.PrimaryHDU(image.astype(np.float32), header).writeto(folder / f"f{k:02d}.fits")


def test_a_tracked_field_of_sharp_stars_keeps_its_star_cores():
    """Nine tracked frames (the stars stay on their pixels) of 30 sharp stars (sigma 0.6 px) and 0.05 % hot pixels:
    the median's star peaks look like hot pixels, but the map flags under 1 % of the pixels and is not used."""
    import tempfile
    from pathlib import Path

    rng = np.random.default_rng(8)
    ny, nx = 256, 256
    yy, xx = np.mgrid[0:ny, 0:nx]
    stars = rng.uniform(8, 248, (30, 2))
    hot = rng.random((ny, nx)) < 0.0005
    clean = sum(4000.0 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 0.6 ** 2)) for x, y in stars)
    frames = [300.0 + clean + rng.normal(0, 8, (ny, nx)) + 900.0 * hot for _ in range(9)]
    config = Config()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _write_frames(folder, frames)
        lights, masters = build_calibration(scan_inputs(find_inputs([folder]), config.io), config)
        assert len(lights) == 9 and masters == {}  # no map: star cores are not hits
    flagged = hot_pixel_map(np.array(frames, np.float32))
    peaks = flagged[np.round(stars[:, 1]).astype(int), np.round(stars[:, 0]).astype(int)]
    assert peaks.mean() > 0.3 and flagged.mean() < 0.01  # why the share matters: the map alone takes star peaks
