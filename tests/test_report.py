"""Reports people submit and read: ADES PSV/XML (schema-valid, round trip), MPC 80-column records
(round trip on the real examples), `ssodetect report`, and the HTML page in headless Chromium."""
import hashlib
import json
import re
import shutil

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.table import Table

from ssodetect.cli import main
from ssodetect.config import load_config
from ssodetect.io.outputs import record_files
from ssodetect.pipeline import run_pipeline
from ssodetect.report import format_record, observation_arrays, read_ades, read_mpc80, records_table, validate_xml
from ssodetect.report.mpc80 import MPCRecord, pack_number, pack_provisional, unpack_number, unpack_provisional

from conftest import real_data

REPORTS = ("observations.psv", "observations.xml", "observations.mpc", "objects.reg", "report.html")


@pytest.fixture(scope="module")
def run_dir(scene, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "out"
    config = load_config(None)
    config.execution.progress = False
    config.report.station = "C65"
    config.report.observers = ["A. Observer", "B. Observer"]
    run_pipeline([scene], out, config, refcat=scene / "refcat.ecsv")
    return out


def test_region_file_draws_every_observation_and_track(run_dir):
    """objects.reg (DS9 format) read back with the regions package: a circle at every observation, on its
    position, named after its object; a track line and a label per object of several observations."""
    from regions import CircleSkyRegion, LineSkyRegion, Regions, TextSkyRegion

    obs = Table.read(run_dir / "observations.ecsv")
    objs = Table.read(run_dir / "objects.ecsv")
    regs = Regions.read(str(run_dir / "objects.reg"), format="ds9")
    circles = [r for r in regs if isinstance(r, CircleSkyRegion)]
    assert len(circles) == len(obs) > 0
    for circle, row in zip(circles, obs[np.lexsort((obs["mjd"], [list(dict.fromkeys(obs["object"])).index(n)
                                                                 for n in obs["object"]]))]):
        assert circle.meta["text"].split()[0] == row["object"]
        assert circle.center.separation(SkyCoord(row["ra"], row["dec"], unit="deg")).arcsec < 1e-3
        assert circle.visual["edgecolor"] == {"linked": "green", "streak": "cyan", "blend": "magenta"}[row["kind"]]
    several = [n for n in objs["object"] if np.sum(obs["object"] == n) > 1]
    assert sum(isinstance(r, LineSkyRegion) and r.visual.get("linestyle") == "dashed" for r in regs) == len(several)
    assert sorted(r.text.split()[0] for r in regs if isinstance(r, TextSkyRegion)) == sorted(objs["object"])


def test_run_writes_schema_valid_ades_that_round_trips(run_dir):
    xsd = real_data("ades", "xsd", "submit.xsd")
    obs = Table.read(run_dir / "observations.ecsv")
    assert len(obs) >= 10
    xml = (run_dir / "observations.xml").read_text()
    assert validate_xml(xml, xsd) == []
    psv_blocks, xml_blocks = read_ades(run_dir / "observations.psv"), read_ades(run_dir / "observations.xml")
    assert psv_blocks == xml_blocks  # the same header and records, every value the same string
    ctx, rows = psv_blocks[0]
    assert ctx["observatory"]["mpcCode"] == "C65" and ctx["observers"] == ["A. Observer", "B. Observer"]
    assert ctx["telescope"]["design"] and float(ctx["telescope"]["pixelScale"]) == pytest.approx(0.1, abs=1e-3)
    back = observation_arrays(psv_blocks)
    assert len(back) == len(obs)
    order = np.lexsort((np.asarray(obs["mjd"]), np.asarray(obs["object"])))
    back_order = np.lexsort((np.asarray(back["mjd"]), np.asarray(back["object"])))
    np.testing.assert_allclose(back["ra"][back_order], obs["ra"][order], atol=1e-6)  # < 4 mas: 7 decimals
    np.testing.assert_allclose(back["dec"][back_order], obs["dec"][order], atol=1e-6)
    np.testing.assert_allclose(back["mjd"][back_order], obs["mjd"][order], atol=1e-3 / 86400 * 0.51)  # ms
    assert all(r["obsTime"].endswith("Z") and len(r["obsTime"].split(".")[1]) == 4 for r in rows)  # 3 decimals + Z
    assert all(float(r["seeing"]) == pytest.approx(0.17, abs=0.04) for r in rows if "seeing" in r)


def test_schema_validation_can_fail():
    xsd = real_data("ades", "xsd", "submit.xsd")
    folder = xsd.parents[1] / "tests_input"
    assert validate_xml((folder / "obs_v2022.xml").read_text(), xsd) == []
    errors = validate_xml((folder / "trksub_9chars.xml").read_text(), xsd)
    assert errors and any("trkSub" in e for e in errors)


def test_real_ades_examples_parse():
    folder = real_data("ades")
    counts = {}
    for path in sorted(folder.glob("tests_input/*.psv")) + sorted(folder.glob("tests_input/*.xml")) + sorted(
            folder.glob("attic_examples/*.psv")):
        blocks = read_ades(path)
        counts[path.name] = sum(len(rows) for _, rows in blocks)
    assert counts["2023MQ5.psv"] == 2 and counts["obs.xml"] == 4 and counts["trksub_8char.xml"] == 7
    assert counts["G96_20131004_1A_N20016_01_0001.mpcd.xml.psv"] == 92
    mq5 = read_ades(folder / "tests_input" / "2023MQ5.psv")
    assert mq5[0][0]["observatory"]["mpcCode"] == "J95"
    arr = observation_arrays(mq5)
    assert np.all(arr["stn"] == "J95") and np.all(np.isfinite(arr["ra"]))
    radar = read_ades(folder / "attic_examples" / "a4179_radar.xml")  # records straight under <ades>
    assert sum(len(rows) for _, rows in radar) == 56 and radar[0][1][0]["_type"] == "radar"


def test_mpc80_real_examples_round_trip_exactly():
    folder = real_data("ades")
    files = sorted(folder.glob("attic_examples/*.mpc")) + sorted(folder.glob("tests_input/*.obs"))
    n_records = 0
    for path in files:
        text = path.read_text()
        header, records, other = read_mpc80(text, strict=False)
        written = {line for rec in records for line in format_record(rec)}
        for line in text.splitlines():
            padded = line.ljust(80)
            if len(line) >= 70 and padded[15:19].isdigit() and padded[14] not in "RrVvXx" and line not in other:
                assert padded in written, (path.name, line)
        n_records += len(records)
    assert n_records >= 70
    _, records, _ = read_mpc80((folder / "tests_input" / "K20Q04A_test.obs").read_text())
    assert {r.designation for r in records} == {"2020 QA4"} and {r.code for r in records} == {"F51", "H21"}
    # space-based: the second line's geocentric vector, km and au forms
    _, records, other = read_mpc80((folder / "attic_examples" / "test.mpc").read_text(), strict=False)
    space = [r for r in records if r.note2 == "S"]
    assert len(space) >= 3 and all(r.observer is not None for r in space)
    km = [r for r in space if r.observer_unit == "1"][0]
    assert km.observer[0] == pytest.approx(-6861.8061) and km.observer[1] == pytest.approx(799.8571)
    assert len(other) >= 2  # the malformed dates of the file's deliberate bad records are set aside
    with pytest.raises(ValueError, match="line"):
        read_mpc80((folder / "attic_examples" / "test.mpc").read_text())


def test_mpc80_header_is_ascii_and_wrapped_never_cut(caplog):
    """Campaign 29: a non-ASCII observer name went into the ASCII-only 80-column file as given, and header lines
    longer than 80 columns (a long COM, many observers) were cut at column 80 without a word."""
    from ssodetect.report import format_mpc80

    observers = ["Ünïcødé Observer", *(f"A. Observer{k}" for k in range(12))]
    comment = "a long comment " * 12
    record = MPCRecord(provisional="SD00001", mjd=60000.5, ra=150.0, dec=2.0, mag=21.3, band="V", code="Z84")
    with caplog.at_level("WARNING", logger="ssodetect.report.mpc80"):
        text = format_mpc80([record], {"COD": "Z84", "OBS": ", ".join(observers), "COM": comment})
    assert text.isascii() and all(len(line) <= 80 for line in text.splitlines())
    header, records, other = read_mpc80(text)
    assert len(records) == 1 and not other
    assert " ".join(header["OBS"]).startswith("Unic?de Observer, A. Observer0")
    assert " ".join(header["OBS"]).endswith("A. Observer11") and len(header["OBS"]) >= 2
    assert " ".join(header["COM"]) == " ".join(comment.split())
    assert any("Ünïcødé" in r.getMessage() and "OBS" in r.getMessage() for r in caplog.records)


def test_designation_packing():
    for n, packed in ((433, "00433"), (100345, "A0345"), (619999, "z9999"), (620000, "~0000"), (3140113, "~AZaz")):
        assert pack_number(n) == packed and unpack_number(packed) == n
    for desig, packed in (("2020 QA4", "K20Q04A"), ("1995 XA", "J95X00A"), ("2007 TA418", "K07Tf8A"),
                          ("2019 AB12", "K19A12B")):
        assert pack_provisional(desig) == packed and unpack_provisional(packed) == desig
    with pytest.raises(ValueError):
        pack_provisional("2019 I5")


def test_overview_carries_the_wcs_tracks_are_drawn_with(run_dir):
    from astropy.io import fits

    with fits.open(run_dir / "overview.fits") as hdul:
        assert len(hdul) == 2 and "CTYPE1" in hdul[1].header and hdul[1].header["BINNING"] >= 1


def test_run_mpc80_file_matches_observations(run_dir):
    obs = Table.read(run_dir / "observations.ecsv")
    header, records, other = read_mpc80((run_dir / "observations.mpc").read_text())
    assert header["COD"] == ["C65"] and not other and len(records) == len(obs)
    table = records_table(records)
    assert set(table["object"]) == set(obs["object"])
    order = np.lexsort((np.asarray(obs["mjd"]), np.asarray(obs["object"])))
    t_order = np.lexsort((np.asarray(table["mjd"]), np.asarray(table["object"])))
    cosd = np.cos(np.radians(obs["dec"][order]))
    assert np.max(np.abs(table["ra"][t_order] - obs["ra"][order]) * cosd * 3600) < 0.008  # 0.001 s of RA
    assert np.max(np.abs(table["dec"][t_order] - obs["dec"][order]) * 3600) < 0.006  # 0.01"
    assert np.max(np.abs(table["mjd"][t_order] - obs["mjd"][order])) <= 0.6e-6  # 1e-6 d


def test_report_command_regenerates_and_space_position(run_dir, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    before = {name: (copy / name).read_bytes() for name in REPORTS}
    before["report.html"] = before["report.html"].replace(b"ssodetect run: out<", b"ssodetect run: copy<")  # titled by directory
    for name in REPORTS:
        (copy / name).unlink()
    assert main(["report", str(copy), "-q"]) == 0
    assert {name: (copy / name).read_bytes() for name in REPORTS} == before  # same outputs, no re-processing
    # a spacecraft position in the configuration: ADES sys/ctr/pos (schema-valid) and two-line MPC records
    config = copy / "space.toml"
    config.write_text('[report]\nstation = "C65"\nobserver_position = [1234567.5, -765432.25, 98765.125]\n')
    assert main(["report", str(copy), "--config", str(config), "-q"]) == 0
    xml = (copy / "observations.xml").read_text()
    assert "<mpcCode>C65</mpcCode>" in xml
    # the run's manifest follows the rewritten reports (checksums, and the report command recorded)
    manifest = json.loads((copy / "manifest.json").read_text())
    for name in REPORTS:
        assert manifest["products"][name]["sha256"] == hashlib.sha256((copy / name).read_bytes()).hexdigest(), name
    assert len(manifest["reports"]) == 2 and "observations.xml" in manifest["reports"][-1]["files"]
    xsd = real_data("ades", "xsd", "submit.xsd")
    assert validate_xml(xml, xsd) == []
    rows = read_ades(xml)[0][1]
    assert all(r["sys"] == "ICRF_KM" and r["ctr"] == "399" and float(r["pos1"]) == 1234567.5 for r in rows)
    _, records, _ = read_mpc80((copy / "observations.mpc").read_text())
    assert records and all(r.note2 == "S" for r in records)
    np.testing.assert_allclose(records[0].observer, (1234567.5, -765432.25, 98765.125), atol=1e-3)
    # a station given to `report` wins over the run's
    (copy / "other.toml").write_text('[report]\nstation = "500"\n')
    assert main(["report", str(copy), "--config", str(copy / "other.toml"), "-q"]) == 0
    assert "<mpcCode>500</mpcCode>" in (copy / "observations.xml").read_text()
    assert (copy / "observations.mpc").read_text().splitlines()[0] == "COD 500"
    capsys.readouterr()
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "not a finished ssodetect run" in capsys.readouterr().err


def test_html_report_in_headless_chromium(run_dir, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian chromium is not installed")
    page_path = run_dir / "report.html"
    text = page_path.read_text()
    # self-contained: nothing to fetch (links to an object's MPC / JPL page are the only addresses)
    assert not re.search(r'(src|srcset|data)="https?:|url\(|<script|<link', text)
    assert all(m.startswith(("https://minorplanetcenter.net/", "https://ssd.jpl.nasa.gov/"))
               for m in re.findall(r'href="(https?:[^"]*)"', text))
    objs = Table.read(run_dir / "objects.ecsv")
    shot = tmp_path / "report.png"
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        problems = []
        page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("requestfailed", lambda r: problems.append(r.url))
        page.goto(page_path.resolve().as_uri())
        images = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt])")
        headings = page.evaluate("Array.from(document.querySelectorAll('.obj h3')).map(h => h.textContent)")
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert problems == []
    assert images and all(ok and width > 0 for ok, width, _ in images)
    assert sorted(headings) == sorted(str(n) for n in objs["object"])
    n_blinks = sum(alt.endswith("blink") for _, _, alt in images)
    assert n_blinks == len(objs)  # a blink per object, every one resolved
    from PIL import Image

    with Image.open(shot) as img:
        assert img.width == 1200 and img.height > 900


def test_rows_by_groups_like_a_selection():
    from astropy.table import Table

    from ssodetect.columns import rows_by

    rng = np.random.default_rng(2)
    table = Table({"object": rng.choice(["SD00001", "SD00002", "SD00010", "K24A00B"], 50), "x": rng.normal(size=50)})
    groups = rows_by(table, "object")
    assert set(groups) == set(table["object"])
    for name, idx in groups.items():
        np.testing.assert_array_equal(idx, np.nonzero(np.asarray(table["object"]) == name)[0])
    assert rows_by(table[:0], "object") == {}


def test_cutouts_of_earlier_runs_still_read(tmp_path):
    """``ssodetect report`` on a run written before the single INDEX table: per-object index tables are read."""
    from astropy.io import fits
    from astropy.table import Table

    from ssodetect.report.cutouts import cutout_objects, read_cutouts

    path = tmp_path / "cutouts.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.ones((2, 5, 5), np.float32), name="SD00001"),
                  fits.BinTableHDU(Table({"exposure": [0, 1], "x0": [3, 4]}), name="SD00001_INDEX")]).writeto(path)
    cubes = read_cutouts(path)
    assert set(cubes) == {"SD00001"} == cutout_objects(path)
    assert cubes["SD00001"][0].shape == (2, 5, 5) and list(cubes["SD00001"][1]["x0"]) == [3, 4]
    assert read_cutouts(tmp_path / "absent.fits") == {} and cutout_objects(tmp_path / "absent.fits") == set()


def test_an_objects_magnitude_is_weighted_by_its_detections_errors():
    """Three detections of V 22.0 (0.03 mag) and an edge-cut one whose truncated flux reads 22.75 with the 1.1 mag
    error the linker gives it: the object's magnitude stays within 0.02 mag of 22.0 (the plain mean was 22.19)."""
    from ssodetect.astrometry.tangent import TangentPlane
    from ssodetect.link.tracklets import Tracklet, fit_linear_motion
    from ssodetect.report.tables import tracklet_tables

    t = np.arange(4) * 1100.0 / 3600.0
    xi, eta = 2.0 * t, -1.0 * t
    plane = TangentPlane(150.0, 2.0)
    ra, dec = plane.to_sky(xi, eta)
    mags = np.array([22.0, 22.0, 22.0, 22.75])
    cand = Table({
        "exposure": np.arange(4), "file": [f"e{k}.fits" for k in range(4)], "ccd": ["1"] * 4,
        "mjd": 60000.0 + t / 24.0, "exptime": np.full(4, 566.0), "ra": ra, "dec": dec, "wcs": ["fit"] * 4,
        "ra_err": np.full(4, 0.01), "dec_err": np.full(4, 0.01), "x": np.arange(4.0), "y": np.arange(4.0),
        "flux": 10 ** (-0.4 * (mags - 25.0)), "flux_err": np.full(4, 5.0), "mag": mags,
        "mag_err": np.array([0.03, 0.03, 0.03, 1.086]), "snr": np.full(4, 30.0), "length": np.zeros(4),
        "trail_pa": np.zeros(4), "xi": xi, "eta": eta, "t_hours": t,
    })
    params, cov, chi2, t_ref = fit_linear_motion(t, xi, eta, np.full(4, 0.01))
    trk = Tracklet((0, 1, 2, 3), params[0], params[1], params[2], params[3], cov, chi2, 4, t_ref)
    _, objects = tracklet_tables(cand, [trk], plane, t0_mjd=60000.0)
    assert abs(objects["mag"][0] - 22.0) < 0.02 and np.mean(mags) > 22.15


def test_report_headers_say_what_was_used_and_placeholders_are_flagged(run_dir, tmp_path, caplog):
    xsd = real_data("ades", "xsd", "submit.xsd")
    ctx, rows = read_ades(run_dir / "observations.psv")[0]
    # a WCS and zero point fitted to the (Gaia) reference catalogue; the aperture from TELESCOP EUCLID
    assert {r["astCat"] for r in rows} == {"Gaia3"} and {r.get("photCat") for r in rows if "mag" in r} == {"Gaia3"}
    assert ctx["telescope"]["aperture"] == "1.2" and ctx["telescope"]["name"] == "EUCLID"
    assert "Before submitting" not in (run_dir / "report.html").read_text()
    # the same observations through header WCSs, no zero point anywhere, no station, an unknown telescope
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    provenance = json.loads((copy / "provenance.json").read_text())
    report_ctx = provenance["report_context"]
    report_ctx["zeropoint_sources"] = {k: "default" for k in report_ctx["zeropoint_sources"]}
    report_ctx.pop("aperture")
    report_ctx["telescope"] = ""
    report_ctx["station"] = ""
    (copy / "provenance.json").write_text(json.dumps(provenance))
    obs = Table.read(copy / "observations.ecsv")
    obs.replace_column("wcs", np.full(len(obs), "header"))
    obs.write(copy / "observations.ecsv", overwrite=True)
    # as a run through header WCSs would have written them (a table edited by hand is not the run's: refused)
    record_files(copy, ["observations.ecsv", "provenance.json"])
    config = copy / "plain.toml"
    config.write_text("[report]\nstation = \"XXX\"\n")
    with caplog.at_level("WARNING", logger="ssodetect.report.products"):
        assert main(["report", str(copy), "--config", str(config), "-q"]) == 1  # placeholders warned: a report with warnings exits 1
    assert not (copy / "observations.xml").exists() and not (copy / "observations.psv").exists()  # no aperture
    header, records, _ = read_mpc80((copy / "observations.mpc").read_text())
    assert "NET" not in header and "TEL" not in header and all(not np.isfinite(r.mag) for r in records)
    page = (copy / "report.html").read_text()
    for words in ("default zero point 25", "astCat UNK", "observatory code XXX", "telescope aperture unknown"):
        assert words in page and words in caplog.text, words
    config.write_text("[report]\nstation = \"XXX\"\ntelescope_aperture = 0.5\n")
    with caplog.at_level("WARNING", logger="ssodetect.report.products"):
        assert main(["report", str(copy), "--config", str(config), "-q"]) == 1  # placeholders warned: a report with warnings exits 1
    xml = (copy / "observations.xml").read_text()
    assert validate_xml(xml, xsd) == []
    ctx, rows = read_ades(xml)[0]
    assert {r["astCat"] for r in rows} == {"UNK"} and ctx["telescope"]["aperture"] == "0.5"
    assert not any("mag" in r or "photCat" in r for r in rows)  # a default zero point is not a magnitude
    # a zero point from the header: magnitudes reported, without claiming a photometric catalogue
    report_ctx["zeropoint_sources"] = {k: "header" for k in report_ctx["zeropoint_sources"]}
    (copy / "provenance.json").write_text(json.dumps(provenance))
    assert main(["report", str(copy), "--config", str(config), "-q"]) == 1  # placeholders warned: a report with warnings exits 1
    rows = read_ades(copy / "observations.xml")[0][1]
    assert any("mag" in r for r in rows) and not any("photCat" in r for r in rows)


def test_telescope_aperture_comes_from_the_header():
    from astropy.io import fits

    from ssodetect.io.headers import telescope_aperture

    assert telescope_aperture(fits.Header({"APTDIA": 354.6, "TELESCOP": "C14"})) == (pytest.approx(0.3546), "APTDIA")
    area = np.pi * (500.0 ** 2)  # a 1 m aperture in mm2
    assert telescope_aperture(fits.Header({"APTAREA": area}))[0] == pytest.approx(1.0)
    assert telescope_aperture(fits.Header({"TELESCOP": "NEOSSat"})) == (0.15, "TELESCOP NEOSSAT")
    assert telescope_aperture(fits.Header({"TELESCOP": "C14", "APTDIA": "n/a"})) is None
    # N8: APTDIA = 1e30 went into the ADES aperture, APTDIA = -1 gave Euclid's 1.2 m without a word
    for value in (1e30, -1.0, 5.0):
        problems: list = []
        assert telescope_aperture(fits.Header({"APTDIA": value, "TELESCOP": "EUCLID"}), problems) == (1.2, "TELESCOP EUCLID")
        assert len(problems) == 1 and f"APTDIA = {value!r} is no telescope aperture (10-50000 mm" in problems[0]
    # N19: MPCCODE = '<a>' was dropped without a word
    from ssodetect.io.headers import station_code

    problems = []
    assert station_code(fits.Header({"MPCCODE": "<a>", "OBSCODE": "i41"}), problems=problems) == "I41"
    assert problems == ["MPCCODE = '<a>' is no MPC observatory code (three digits or capital letters): not used"]


def test_exposure_regions_draw_the_trail_seen_on_a_trailed_exposure():
    """Issue 28: on an exposure whose stars trail, a mover's trail in streaks.ecsv holds its motion (length, theta)
    and the trail seen (detector_length, detector_theta: motion plus drift); the region file draws the trail seen,
    where the image shows it."""
    import math

    from astropy.table import Table
    from regions import LinePixelRegion

    from ssodetect.report.regions import exposure_regions

    streaks = Table({"exposure": [0], "ccd": ["1"], "x": [100.0], "y": [50.0], "length": [6.0], "theta": [0.0],
                     "detector_length": [30.0], "detector_theta": [math.pi / 2], "status": ["single"], "object": [""]})
    empty = Table(names=("object", "exposure", "ccd", "x", "y", "kind", "mjd", "ra", "dec"),
                  dtype=("U8", "i8", "U8", "f8", "f8", "U8", "f8", "f8", "f8"))
    regs = exposure_regions(0, "1", candidates=None, observations=empty, streaks=streaks, exposure_mjd={0: 60000.0})
    (line,) = [r for r in regs if isinstance(r, LinePixelRegion)]
    assert math.hypot(line.end.x - line.start.x, line.end.y - line.start.y) == pytest.approx(30.0)
    assert abs(line.end.x - line.start.x) < 1e-9  # along +y, as seen
    streaks.remove_columns(["detector_length", "detector_theta"])  # an older table: its length and axis
    (line,) = [r for r in exposure_regions(0, "1", candidates=None, observations=empty, streaks=streaks,
                                           exposure_mjd={0: 60000.0}) if isinstance(r, LinePixelRegion)]
    assert math.hypot(line.end.x - line.start.x, line.end.y - line.start.y) == pytest.approx(6.0)
