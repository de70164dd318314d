"""Known objects: orbit readers, the two-body ephemeris against published references and a numerical
integration, and the naming of linked objects on a simulated field built from real orbits."""
import json
from pathlib import Path

import re

import numpy as np
import pytest
from astropy.table import Table
from astropy.time import Time
from scipy.integrate import solve_ivp

from ssodetect.config import Config
from ssodetect.errors import InputError
from ssodetect.evaluate import evaluate_identification
from ssodetect.known import Observer, heliocentric_states, predict, read_mpcorb, read_orbits, read_sbdb
from ssodetect.known.orbits import GAUSS_K, orbits_table
from ssodetect.known.propagate import ECLIPTIC_TO_ICRS
from ssodetect.pipeline import run_pipeline
from ssodetect.simulate import SimulationConfig, simulate

#: (1) Ceres in MPCORB.DAT form, as quoted in skyfield's test suite (test_keplerlib.py), with the
#: geocentric astrometric position it gives for 2020-06-17 0h UTC: RA 23.1437 h, Dec -17.323 deg.
CERES_MPCORB = ("00001    3.4   0.15 K205V 162.68631   73.73161   80.28698   10.58862  0.0775571  0.21406009"
                "   2.7676569  0 MPO492748  6751 115 1801-2019 0.60 M-v 30h Williams   0000      (1) Ceres"
                "              20190915")
KSTARS_ASTEROIDS = Path("/usr/share/kstars/asteroids.dat")


def test_ceres_from_mpcorb_against_the_published_position():
    orbits = read_mpcorb([CERES_MPCORB])
    assert list(orbits["designation"]) == ["(1) Ceres"] and orbits["number"][0] == 1
    assert orbits["epoch"][0] == pytest.approx(Time("2020-05-31", scale="tt").mjd)
    p = predict(orbits, Time("2020-06-17T00:00:00", scale="utc").mjd)
    # the reference is rounded to 1e-4 h (1.4" of RA here) and 1e-3 deg (3.6")
    assert abs(p["ra"][0] / 15.0 - 23.1437) * 15 * 3600 * np.cos(np.radians(17.32)) < 3.0
    assert abs(p["dec"][0] + 17.323) * 3600 < 2.5
    assert 7.0 < p["V"][0] < 9.5 and 2.4 < p["r"][0] < 3.0


@pytest.mark.parametrize("compress", ["gzip", "bz2", "lzma"])
def test_compressed_mpcorb_files_are_read_and_damaged_ones_named(tmp_path, compress):
    import importlib

    from ssodetect.errors import InputError
    from ssodetect.known import read_orbits

    module = importlib.import_module(compress)
    path = tmp_path / "MPCORB.DAT.z"
    packed = module.compress((CERES_MPCORB + "\n").encode() * 50)
    path.write_bytes(packed)
    assert list(read_orbits(path)["designation"])[:1] == ["(1) Ceres"]
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(InputError, match="MPCORB.DAT.z: cannot read orbit file"):
        read_orbits(path)


def test_state_at_epoch_matches_horizons_to_millimetres():
    # JPL Horizons osculating elements of Ceres referred to the ICRF equator at TDB JD 2458886.5 and its
    # heliocentric position then (skyfield's test_against_horizons): the element-to-state conversion
    a, e = 2.768873850275102, 7.705857791518426e-02
    orbit = orbits_table([dict(designation="Ceres", q=a * (1 - e), e=e, i=27.18528770987308, node=23.36112629072238,
                               peri=132.8964361683606, M=138.2501360489816, epoch=58886.0)])
    equatorial = ECLIPTIC_TO_ICRS.T @ heliocentric_states(orbit, 58886.0)[0]  # the angles were equatorial
    horizons = np.array([1.334875927366032, -2.239607658161781, -1.328895183461897])
    sun = np.array([-0.004105894975783999, 0.006739680703224941, 0.002956344702049446])
    assert np.max(np.abs(equatorial - (horizons - sun))) * 1.495978707e11 < 0.01  # metres


@pytest.mark.parametrize("q,e", [(2.1, 0.15), (0.6, 0.85), (1.2, 1.6), (0.9, 1.0)])
def test_kepler_propagation_matches_numerical_integration(q, e):
    """Elliptic, highly eccentric, hyperbolic and parabolic orbits against an integration of the
    two-body equations over 60 days from perihelion - 20 days."""
    orbit = orbits_table([dict(designation="x", q=q, e=e, i=17.0, node=40.0, peri=250.0, tp=60000.0, epoch=60000.0)])
    t0, t1 = 59980.0, 60040.0
    h = 1e-3
    r0 = heliocentric_states(orbit, t0)[0]
    v0 = (heliocentric_states(orbit, t0 + h)[0] - heliocentric_states(orbit, t0 - h)[0]) / (2 * h)
    mu = GAUSS_K**2

    def rhs(_, y):
        r = y[:3]
        return np.concatenate([y[3:], -mu * r / np.linalg.norm(r) ** 3])

    sol = solve_ivp(rhs, (t0, t1), np.concatenate([r0, v0]), rtol=1e-12, atol=1e-14, dense_output=True)
    for t in (59990.0, 60000.0, 60025.0, 60040.0):
        assert np.linalg.norm(sol.sol(t)[:3] - heliocentric_states(orbit, t)[0]) < 2e-8  # au (3 km)


def test_sbdb_forms_and_bad_files(tmp_path):
    doc = {"object": {"fullname": "1 Ceres (A801 AA)", "des": "1"},
           "orbit": {"epoch": "2459000.5", "elements": [
               {"name": "e", "value": "0.0775571"}, {"name": "a", "value": "2.7676569"},
               {"name": "i", "value": "10.58862"}, {"name": "om", "value": "80.28698"},
               {"name": "w", "value": "73.73161"}, {"name": "ma", "value": "162.68631"}]},
           "phys_par": [{"name": "H", "value": "3.4"}]}
    single = read_sbdb(doc)
    table = read_sbdb({"fields": ["full_name", "epoch_mjd", "e", "a", "i", "om", "w", "ma", "H"],
                       "data": [["     1 Ceres (A801 AA)", "59000", "0.0775571", "2.7676569", "10.58862", "80.28698",
                                 "73.73161", "162.68631", "3.4"]]})
    mpc = read_mpcorb([CERES_MPCORB])
    t = Time("2020-06-17T00:00:00", scale="utc").mjd
    positions = [predict(o, t) for o in (single, table, mpc)]
    for p in positions[1:]:
        assert abs(p["ra"][0] - positions[0]["ra"][0]) * 3600 < 1e-3 and abs(p["dec"][0] - positions[0]["dec"][0]) * 3600 < 1e-3
    assert single["designation"][0] == table["designation"][0] == "(1) Ceres"
    path = tmp_path / "orbits.json"
    path.write_text(json.dumps(doc))
    assert len(read_orbits(path)) == 1
    bad = tmp_path / "bad.txt"
    bad.write_text("no orbit here\n")
    with pytest.raises(InputError, match="bad.txt"):
        read_orbits(bad)


def test_site_parallax_is_the_geometric_one():
    """A ground site moves the apparent position of a near-Earth object by its parallax."""
    orbit = orbits_table([dict(designation="near", q=0.98, e=0.1, i=5.0, node=10.0, peri=20.0, M=0.0, epoch=60000.0)])
    t = 60000.3
    geo = predict(orbit, t)
    site = predict(orbit, t, Observer(site=(-70.0, -30.0, 2000.0)))
    shift = np.hypot((site["ra"][0] - geo["ra"][0]) * np.cos(np.radians(geo["dec"][0])), site["dec"][0] - geo["dec"][0])
    max_parallax = np.degrees(6378.0 / (geo["delta"][0] * 149597870.7))
    assert 0.05 * max_parallax < shift <= 1.01 * max_parallax


def _text(column) -> np.ndarray:
    """A text column with empty strings (ECSV reads them back as masked)."""
    return np.asarray(column.filled("") if hasattr(column, "filled") else column).astype(str)


@pytest.fixture(scope="module")
def known_run(tmp_path_factory):
    if not KSTARS_ASTEROIDS.exists():
        pytest.skip("Debian kstars-data (real asteroid elements from JPL SBDB) is not installed")
    root = tmp_path_factory.mktemp("known")
    sim = root / "sim"
    simulate(SimulationConfig(seed=5, nccd=1, nx=1024, ny=1024, known_orbits=str(KSTARS_ASTEROIDS), known_count=24,
                              movers_per_ccd=60.0, mover_mag_min=20.0, mover_mag_max=24.0, star_density=150000.0), sim)
    # a real orbit aimed at the field but not drawn in it: predicted on the detector, never found
    from ssodetect.known import write_sbdb
    from ssodetect.simulate.known import aim_orbit

    truth = Table.read(sim / "truth.ecsv")
    ghost = read_orbits(KSTARS_ASTEROIDS)
    ghost = ghost[(ghost["e"] < 0.3) & (ghost["q"] > 2.0) & (ghost["i"] > 3.0)][:1]
    from astropy.time import Time

    from ssodetect.known.perturb import advance_orbits

    # elements at the field's time (as the simulator's placed orbits): the pipeline predicts them by two-body motion
    ghost, _ = advance_orbits(ghost, float(Time(np.mean(truth["mjd"]), format="mjd", scale="utc").tdb.mjd), min_days=0)
    aim = aim_orbit(ghost, float(np.mean(truth["mjd"])), 150.001, 25.002, Observer(), np.random.default_rng(0))
    ghost["node"][0], ghost["peri"][0], ghost["H"][0] = aim["node"], aim["peri"], 5.0
    ghost["designation"][0] = "(999999) Ghost"
    ghost["number"][0] = 999999
    write_sbdb(ghost, root / "ghost.json")
    config = Config()
    config.execution.progress = False
    config.known.orbits = [str(sim / "known_orbits.json"), str(root / "ghost.json")]
    result = run_pipeline([sim], root / "out", config, refcat=sim / "refcat.ecsv")
    return sim, root / "out", result


def test_known_objects_named_on_a_field_of_real_orbits(known_run):
    sim, out, result = known_run
    truth = Table.read(sim / "truth.ecsv")
    orbits = read_orbits(sim / "known_orbits.json")
    assert len(orbits) > 7000  # the placed orbits among every other real orbit, unchanged
    score = evaluate_identification(result.observations, result.objects, truth)
    assert score["n_known"] >= 20
    assert score["n_misnamed"] == 0
    assert score["named_of_known"] >= 0.99  # linked and named, or measured where predicted (kind = known)
    known = Table.read(out / "known.ecsv")
    designations = set(_text(truth["designation"]))
    on = set(known["designation"][known["on_detector"]])
    assert on == (designations - {""}) | {"(999999) Ghost"}  # every placed object predicted on the detector
    assert not _text(known["matched"])[known["designation"] == "(999999) Ghost"][0]  # predicted, absent: not found
    matched = known[_text(known["matched"]) != ""]
    assert len(matched) >= score["n_named"] and np.all(matched["offset"] < 0.1)  # arcsec (some seen in < 3 exposures)
    # identified objects carry their designation into ADES (permID or provID) and the 80-column file
    psv = (out / "observations.psv").read_text()
    numbered = [d for d in matched["designation"] if d.startswith("(")]
    assert numbered and all(f"{d[1:].split(')')[0]}" in psv for d in numbered)
    assert "permID" in psv.splitlines()[[k for k, line in enumerate(psv.splitlines()) if "|" in line][0]]
    # the report page links every identified object to its MPC and JPL pages and counts it as known
    from urllib.parse import quote

    page = (out / "report.html").read_text()
    named = [d for d in np.asarray(result.objects["designation"]).astype(str) if d.strip() not in ("", "--")]
    keys = [d[1:].split(")")[0] if d.startswith("(") else d for d in named]  # the number, or the provisional id
    assert named and all(f"object_id={quote(k)}" in page and f"sstr={quote(k)}" in page for k in keys)
    assert re.search(rf"{len(result.objects)} \({len(result.objects) - len(named)} new, {len(named)} known\)", page)


def test_skybot_answer_moved_along_its_rates_and_matched():
    """A SkyBoT-like answer (position, rates and V at the epoch, as astroquery returns it) gives the
    same positions as the ephemeris within milliarcseconds over +-1 h, and names a tracklet on them."""
    from astropy import units as u

    from ssodetect.known.identify import match_predictions
    from ssodetect.known.skybot import predictions_from_skybot

    orbits = read_mpcorb([CERES_MPCORB])
    epoch = Time("2020-06-17T00:00:00", scale="utc").mjd
    dt = 1e-3
    now, before, after = (predict(orbits, t) for t in (epoch, epoch - dt, epoch + dt))
    cosd = np.cos(np.radians(now["dec"][0]))
    answer = Table({
        "Number": np.ma.MaskedArray([1]), "Name": ["Ceres"], "RA": [now["ra"][0]] * u.deg, "DEC": [now["dec"][0]] * u.deg,
        "RA_rate": [(after["ra"][0] - before["ra"][0]) * cosd * 3600 / (2 * dt * 24)] * u.arcsec / u.h,
        "DEC_rate": [(after["dec"][0] - before["dec"][0]) * 3600 / (2 * dt * 24)] * u.arcsec / u.h,
        "V": [now["V"][0]] * u.mag,
    })
    times = np.round(epoch + np.array([-1.0, -0.5, 0.0, 0.5, 1.0]) / 24.0, 8)
    ident, pra, pdec, pV = predictions_from_skybot(answer, epoch, times)
    truth = predict(orbits, times)
    assert ident["designation"][0] == "(1) Ceres" and ident["number"][0] == 1
    assert np.max(np.abs(pra[0] - truth["ra"]) * cosd * 3600) < 0.05 and np.max(np.abs(pdec[0] - truth["dec"]) * 3600) < 0.05
    obs = Table({"object": ["SD00001"] * 5, "mjd": times, "ra": np.asarray(truth["ra"]) + 0.3 / 3600,
                 "dec": np.asarray(truth["dec"]), "ra_err": np.full(5, 0.1), "dec_err": np.full(5, 0.1)})
    identities, known, _ = match_predictions(obs, ident, times, pra, pdec, pV, centre=(truth["ra"][2], truth["dec"][2]),
                                             radius_deg=0.2)
    assert identities["SD00001"]["designation"] == "(1) Ceres" and identities["SD00001"]["offset"] == pytest.approx(0.3 * cosd, abs=0.06)


def test_known_objects_are_measured_at_their_predictions_when_nothing_was_linked(known_run, tmp_path):
    """Nothing linked (a tracklet would need an impossible total S/N): the catalogued objects predicted on the
    CCD are still measured where predicted (NEOWISE-like data: one or two frames per object)."""
    sim, _, linked = known_run
    config = Config()
    config.execution.progress = False
    config.link.min_total_snr = 1e9
    config.streaks.enabled = False
    config.known.orbits = [str(sim / "known_orbits.json")]
    result = run_pipeline([sim], tmp_path / "out", config, refcat=sim / "refcat.ecsv")
    kinds = set(np.asarray(result.objects["kind"]).astype(str))
    assert kinds == {"known"}  # every object comes from a prediction
    truth = Table.read(sim / "truth.ecsv")
    score = evaluate_identification(result.observations, result.objects, truth)
    assert score["n_misnamed"] == 0
    assert score["n_named"] >= 0.8 * evaluate_identification(linked.observations, linked.objects, truth)["n_named"]


def test_predictions_without_observations_at_unrounded_exposure_times():
    """Nothing linked: the sequence's middle is taken from exposure times that are not multiples of 1e-8 d
    (it had raised a KeyError in a quarter of random 4-exposure sets)."""
    from ssodetect.known.identify import identify

    orbit = orbits_table([dict(designation="near", q=2.2, e=0.1, i=5.0, node=10.0, peri=20.0, M=0.0, epoch=60000.0)])
    times = [60000.85740427659, 60000.86290806022, 60000.87885289192, 60000.886487726224]
    at = predict(orbit, np.array([np.mean(times)]))
    empty = Table(names=("object", "mjd", "ra", "dec", "ra_err", "dec_err"), dtype=("U8", "f8", "f8", "f8", "f8", "f8"))
    identities, known, predictions = identify(empty, orbit, centre=(float(at["ra"][0]), float(at["dec"][0])),
                                              radius_deg=0.2, times=times)
    assert identities == {} and list(known["designation"]) == ["near"] and "near" in predictions


def test_elements_and_states_round_trip_and_recent_elements_stay():
    """state_to_elements inverts the two-body state of the elements (every kind of orbit), and advance_orbits leaves
    elements within its window as they are, moving the others to the new epoch."""
    from astropy.table import Table

    from ssodetect.known.orbits import orbits_table
    from ssodetect.known.perturb import _velocity_states, advance_orbits, state_to_elements

    orbits = orbits_table([dict(designation="mba", q=2.2, e=0.15, i=12.0, node=80.0, peri=30.0, M=40.0, epoch=60000.0),
                           dict(designation="neo", q=0.9, e=0.5, i=25.0, node=200.0, peri=300.0, M=350.0, epoch=60000.0),
                           dict(designation="comet", q=1.5, e=1.2, i=100.0, node=10.0, peri=120.0, tp=60050.0,
                                epoch=60000.0)])
    back = state_to_elements(_velocity_states(orbits, np.full(3, 60000.0)), 60000.0)
    for name, tol in (("q", 1e-9), ("e", 1e-9), ("i", 1e-7), ("node", 1e-7), ("peri", 1e-6), ("tp", 1e-5)):
        np.testing.assert_allclose(back[name], np.asarray(orbits[name], float), atol=tol, err_msg=name)
    same, n = advance_orbits(orbits, 60010.0)
    assert n == 0 and all(np.array_equal(same[c], orbits[c]) for c in ("q", "e", "tp", "epoch"))
    moved, n = advance_orbits(orbits[:2], 60400.0)
    assert n == 2 and np.all(moved["epoch"] == 60400.0)
    # the planets' pull over 400 days changes a main-belt orbit's elements a little, not its nature
    assert np.all(np.abs(moved["q"] - orbits[:2]["q"]) < 0.01) and np.all(np.abs(moved["e"] - orbits[:2]["e"]) < 0.01)
    assert isinstance(moved, Table)
