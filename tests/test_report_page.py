"""The report page an observer looks at: its observing context (filled from the data, never made up), stamps with
time, north/east arrows, scale bar and track, plots, completeness from `ssodetect evaluate`, and runs of earlier
versions still rendering."""
import json
import re
import shutil

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from ssodetect.cli import main
from ssodetect.config import load_config
from ssodetect.pipeline import run_pipeline
from ssodetect.report.context import NOT_IN_HEADERS, NOT_RECORDED, header_rows, limiting_magnitude, sky_context
from ssodetect.report.html import annotated_stamp, scale_bar
from ssodetect.report.regions import fitted_track

PLOTS = ("rate against position angle", "magnitude against rate", "astrometric residuals per CCD")


@pytest.fixture(scope="module")
def page_result(scene, tmp_path_factory):
    out = tmp_path_factory.mktemp("page") / "out"
    config = load_config(None)
    config.execution.progress = False
    return out, run_pipeline([scene], out, config, refcat=scene / "refcat.ecsv")


@pytest.fixture(scope="module")
def page_run(page_result):
    return page_result[0]


def _context_rows(page: str) -> dict:
    rows = re.findall(r'<tr class="(missing)?"><th class="l">(.*?)</th><td class="val">(.*?)</td><td class="src">(.*?)</td>',
                      page)
    return {label: (value, source, bool(missing)) for missing, label, value, source in rows}


def test_header_block_is_filled_from_the_data(page_run, scene):
    page = (page_run / "report.html").read_text()
    rows = _context_rows(page)
    truth = Table.read(scene / "truth.ecsv")
    first = sorted(scene.glob("*.fits"))[0]
    header = fits.getheader(first, 0)
    header.update(fits.getheader(first, 1))
    # the time span: the first exposure's start to the last one's end
    assert rows["Time span"][0].endswith("4 exposures")
    assert rows["Exposure time"][0] == f"{header['EXPTIME']:g} s"
    assert rows["Filter"][0] == str(header["FILTER"]).strip()
    # the field centre within a CCD's half-diagonal of the movers' median position (the scene is one CCD)
    ra0, dec0 = (float(v) for v in re.search(r"\(([\d.]+)°, ([+-][\d.]+)°\)", rows["Field centre"][0]).groups())
    sep = np.hypot((ra0 - np.median(truth["ra"])) * np.cos(np.radians(dec0)), dec0 - np.median(truth["dec"])) * 3600
    assert sep < 768 * 0.1 * 0.71 and rows["Field centre"][1].startswith("first exposure, fitted WCS")
    for label in ("Galactic latitude", "Ecliptic latitude", "Solar elongation", "PSF FWHM", "Pixel scale"):
        assert not rows[label][2] and rows[label][0], label
    # the measured 5-sigma limit agrees with the simulation's own within 0.3 mag
    limit = float(rows["5σ limit per CCD [mag]"][0].split()[1])
    assert abs(limit - float(truth.meta["limit_5sigma"])) < 0.3, (limit, truth.meta["limit_5sigma"])
    objs = Table.read(page_run / "objects.ecsv")
    assert rows["Objects"][0].startswith(f"{len(objs)} ({len(objs)} new, 0 known)")
    # what the simulated headers do not carry is said, not made up; a setting's default says so
    assert rows["Observation id"] == (NOT_IN_HEADERS, "[io] obs_id_keys, or --obs-id", True)
    assert rows["Station (MPC code)"][2] and "not set" in rows["Station (MPC code)"][0]
    assert "astcat default" in rows["Astrometric catalogue"][1]
    for plot in PLOTS:
        assert f'alt="{plot}" src="data:image/png;base64,' in page, plot
    assert "completeness (ssodetect evaluate)" not in page  # nothing evaluated yet


def test_frames_without_filter_exposure_or_station_keywords_say_so():
    """The header block of frames whose headers lack the filter, exposure time, station and observatory."""
    config = load_config(None)
    ctx = {"obs_id": "", "filter": "", "band": "", "station": "XXX", "observatory": "", "telescope": "",
           "exposures": [{"index": k, "mjd": 60000.0 + k * 0.01, "exptime": 0.0, "time_source": "DATE-OBS"}
                         for k in range(3)],
           "field_centre": None, "zeropoint_sources": {"0:1": "default"}, "zeropoints": {"0:1": 25.0},
           "limits": {"1": 24.0}}
    empty = Table({"object": np.zeros(0, "U8"), "kind": np.zeros(0, "U8")})
    rows = {r.label: r for r in header_rows(ctx, report=config.report, objects=empty,
                                            observations=Table({"wcs": np.zeros(0, "U8")}))}
    for label in ("Filter", "Exposure time", "Station (MPC code)", "Observatory", "Telescope", "Aperture"):
        assert NOT_IN_HEADERS in rows[label].value and rows[label].missing, label
    assert "no WCS" in rows["Field centre"].value and rows["Band (reported)"].missing
    assert "DEFAULT zero point" in rows["5σ limit per CCD [mag]"].source and rows["Zero point"].missing
    # a run of an earlier version: nothing recorded, nothing invented
    rows = {r.label: r for r in header_rows({}, report=config.report, objects=empty,
                                            observations=Table({"wcs": np.zeros(0, "U8")}))}
    assert all(rows[k].value == NOT_RECORDED for k in ("Observation id", "Field centre", "Zero point"))
    # a setting wins over the headers, and says so
    config.report.station, config.report.observatory_name = "C65", "Observatori Astronomic del Montsec"
    rows = {r.label: r for r in header_rows(ctx, report=config.report, objects=empty,
                                            observations=Table({"wcs": np.zeros(0, "U8")}))}
    assert (rows["Station (MPC code)"].value, rows["Station (MPC code)"].source) == ("C65", "[report] station")
    assert rows["Observatory"].source == "[report] observatory_name" and not rows["Observatory"].missing


def test_sky_context_and_limit_on_known_values():
    assert sky_context(192.85948, 27.12825, None)["galactic_b"] == pytest.approx(90.0, abs=1e-3)
    assert sky_context(270.0, 66.560708, None)["ecliptic_beta"] == pytest.approx(90.0, abs=1e-3)
    # the Sun on 2000 Mar 20 (equinox) is near RA 0, Dec 0: that direction has elongation ~0, the opposite ~180
    assert sky_context(0.0, 0.0, 51623.3)["elongation"] < 1.0
    assert sky_context(180.0, 0.0, 51623.3)["elongation"] > 179.0
    # 5 sigma of a Gaussian PSF (sigma 2 px) over noise 10/px in 100 s at zero point 25
    flux = 5 * 10 * 2 * 2 * np.sqrt(np.pi)
    assert limiting_magnitude(10.0, 2.0, 25.0, 100.0) == pytest.approx(25 - 2.5 * np.log10(flux / 100.0))
    assert np.isnan(limiting_magnitude(0.0, 2.0, 25.0, 100.0)) and np.isnan(limiting_magnitude(10.0, np.nan, 25, 1))


def test_stamp_arrows_point_north_and_east():
    """Yellow arrows from the corner: north up and east left for a standard orientation; north right and east up
    when the sky is turned by 90 degrees."""
    from PIL import Image
    import base64
    import io

    def yellow_box(jac):
        uri = annotated_stamp(np.zeros((41, 41), np.float32), jacobian=jac)
        img = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB")).astype(int)
        ys, xs = np.nonzero((img[..., 0] > 200) & (img[..., 1] > 180) & (img[..., 2] < 120))
        h, w = img.shape[:2]
        return xs.min() - 0.2 * w, xs.max() - 0.2 * w, ys.min() - 0.2 * h, ys.max() - 0.2 * h

    s = 0.1
    x0, x1, y0, y1 = yellow_box([-s, 0.0, 0.0, s])  # xi (east) = -x, eta (north) = +y: east left, north up
    assert x0 < -15 and x1 < 8 and y0 < -15 and y1 < 8
    x0, x1, y0, y1 = yellow_box([0.0, s, s, 0.0])  # north along +x (right), east along +y (up on the page)
    assert x1 > 15 and x0 > -8 and y0 < -15 and y1 < 8
    assert annotated_stamp(np.zeros((41, 41), np.float32)).startswith("data:image/png;base64,")  # no WCS, no marks
    assert scale_bar(0.1, 41) == 1.0 and scale_bar(1.0, 41) == 10.0 and scale_bar(2.75, 41) == 30.0
    assert scale_bar(0.1, 401) == 10.0 and scale_bar(float("nan"), 41) is None


def test_fitted_track_recovers_a_linear_motion():
    mjd = 60000.0 + np.arange(4) * 1100.0 / 86400.0
    ra = 150.0 + np.arange(4) * 1e-4
    dec = 2.0 - np.arange(4) * 5e-5
    at = fitted_track(mjd, ra, dec)
    r, d = at(mjd)
    np.testing.assert_allclose(r, ra, atol=1e-9)
    np.testing.assert_allclose(d, dec, atol=1e-9)
    assert fitted_track(mjd[:1], ra[:1], dec[:1]) is None


def test_evaluate_adds_completeness_to_the_report(page_run, scene, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(page_run, run)
    # exit 1: the page it redraws warns (station XXX), as the run did
    assert main(["evaluate", str(run), str(scene / "truth.ecsv")]) == 1
    table = Table.read(run / "evaluation.ecsv")
    assert set(table["axis"]) == {"mag", "rate"}
    truth = Table.read(scene / "truth.ecsv")
    mag_rows = table[table["axis"] == "mag"]
    assert int(np.sum(mag_rows["n_found"])) <= int(np.sum(mag_rows["n_findable"])) <= len(set(truth["object"]))
    page = (run / "report.html").read_text()
    assert 'alt="completeness (ssodetect evaluate)" src="data:image/png;base64,' in page
    manifest = json.loads((run / "manifest.json").read_text())
    assert {"evaluation.ecsv", "report.html"} <= set(manifest["products"])
    # a file of the same name that ssodetect did not write is not overwritten
    other = tmp_path / "other"
    shutil.copytree(page_run, other)
    (other / "evaluation.ecsv").write_text("mine\n")
    assert main(["evaluate", str(other), str(scene / "truth.ecsv")]) == 2
    assert (other / "evaluation.ecsv").read_text() == "mine\n" and "did not write" in capsys.readouterr().err


def test_report_of_an_earlier_run_still_renders(page_run, tmp_path):
    """A run written before the observing context and the stamps' WCS: `ssodetect report` renders it, saying
    what the run did not record, with arrows from the overview's WCS."""
    old = tmp_path / "old"
    shutil.copytree(page_run, old)
    provenance = json.loads((old / "provenance.json").read_text())
    for key in ("obs_id", "exposures", "field_centre", "zeropoints", "limits", "observatory"):
        provenance["report_context"].pop(key)
    (old / "provenance.json").write_text(json.dumps(provenance))
    with fits.open(old / "cutouts.fits") as hdul:
        index = Table(hdul["INDEX"].data)
        index.remove_column("jac")
        hdus = [h.copy() for h in hdul if h.name != "INDEX"] + [fits.BinTableHDU(index, name="INDEX")]
    fits.HDUList(hdus).writeto(old / "cutouts.fits", overwrite=True)
    assert main(["report", str(old), "-q"]) == 1  # its placeholders are warned: exit 1
    rows = _context_rows((old / "report.html").read_text())
    assert rows["Observation id"][0] == NOT_RECORDED and rows["Field centre"][0] == NOT_RECORDED
    assert rows["UTC first observation"][0].endswith("UTC")


def test_region_files_per_exposure_load_with_a_shape_per_detection_observation_and_trail(page_result):
    """regions/e<exposure>_<ccd>.reg read back by the regions package: a grey circle per kept detection, a circle
    per observation on its pixel position, a dashed track per object of several observations, a line per trail
    with its status; every file named in the manifest."""
    from regions import CirclePixelRegion, LinePixelRegion, Regions

    out, result = page_result
    obs, cand = Table.read(out / "observations.ecsv"), result.candidates
    streaks = Table.read(out / "streaks.ecsv")
    manifest = json.loads((out / "manifest.json").read_text())
    files = sorted((out / "regions").glob("*.reg"))
    assert len(files) == sum(len(e.ccds) for e in result.exposures) == 4
    n_tracks = 0
    for path in files:
        assert f"regions/{path.name}" in manifest["products"]
        exposure = int(path.name[1:].split("_")[0])
        regs = Regions.read(str(path), format="ds9")
        grey = [r for r in regs if isinstance(r, CirclePixelRegion) and r.visual.get("edgecolor", r.visual.get("color")) == "gray"]
        assert len(grey) == int(np.sum(cand["exposure"] == exposure))
        mine = obs[obs["exposure"] == exposure]
        named = {r.meta["text"]: r for r in regs if isinstance(r, CirclePixelRegion) and r.meta.get("text")}
        assert set(named) == set(mine["object"])
        for row in mine:  # 1-based in the file, 0-based read back
            assert np.hypot(named[row["object"]].center.x - row["x"], named[row["object"]].center.y - row["y"]) < 1e-3
        lines = [r for r in regs if isinstance(r, LinePixelRegion)]
        n_tracks += sum(str(r.meta.get("text", "")).endswith(" track") for r in lines)
        trails = streaks[streaks["exposure"] == exposure]
        assert sorted(str(r.meta["text"]).split()[0] for r in lines if not str(r.meta.get("text", "")).endswith(" track")) \
            == sorted(trails["status"])
    assert n_tracks >= len(files) * 0.5 * len(set(obs["object"]))


def test_frames_without_keywords_get_a_header_block_that_says_so(scene, tmp_path):
    """The scene's frames without FILTER, EXPTIME, TELESCOP and their zero point: the run finishes and the
    header block says "not in the headers" for each, never a made-up value."""
    frames = tmp_path / "frames"
    frames.mkdir()
    for path in sorted(scene.glob("*.fits")):
        with fits.open(path) as hdul:
            for key in ("FILTER", "EXPTIME", "TELESCOP", "MAGZERO"):
                for hdu in hdul:
                    hdu.header.remove(key, ignore_missing=True, remove_all=True)
            hdul.writeto(frames / path.name)
    config = load_config(None)
    config.execution.progress = False
    run_pipeline([frames], tmp_path / "out", config)
    rows = _context_rows((tmp_path / "out" / "report.html").read_text())
    for label in ("Filter", "Telescope", "Aperture", "Observation id"):
        assert rows[label][0].startswith(NOT_IN_HEADERS) and rows[label][2], (label, rows[label])
    assert rows["Exposure time"][0].startswith(NOT_IN_HEADERS) and rows["Exposure time"][2]
    assert "XXX" in rows["Station (MPC code)"][0] and rows["Station (MPC code)"][2]
    assert rows["Astrometric catalogue"][0].startswith("unknown (UNK)")  # the headers' WCS, catalogue unknown
