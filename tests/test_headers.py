"""Header quirks: times and WCS read explicitly, on synthetic and real headers."""
import numpy as np
import pytest
from astropy.io import fits
from astropy.time import Time

from ssodetect.config import IOConfig
from ssodetect.io import celestial_wcs, observation_time, sanitize_wcs_header

from conftest import real_data


def mid(h):
    return observation_time(h, IOConfig()).mid


def test_date_obs_with_time_is_start():
    h = fits.Header({"DATE-OBS": "2024-01-02T03:04:05.5", "EXPTIME": 100.0})
    assert abs((mid(h) - Time("2024-01-02T03:04:55.5", scale="utc")).sec) < 1e-3


def test_date_only_completed_by_time_obs():
    h = fits.Header({"DATE-OBS": "2024-01-02", "TIME-OBS": "10:00:00", "EXPTIME": 60.0})
    assert abs((mid(h) - Time("2024-01-02T10:00:30", scale="utc")).sec) < 1e-3


def test_date_only_without_time_is_unusable():
    h = fits.Header({"DATE-OBS": "2024-01-02", "EXPTIME": 60.0})
    with pytest.raises(ValueError, match="no usable observation time"):
        mid(h)


def test_old_style_date_with_tm_year():
    h = fits.Header({"DATE-OBS": "26/07/102", "TIME-OBS": "19:36:37", "EXPTIME": 60.0})
    assert abs((mid(h) - Time("2002-07-26T19:37:07", scale="utc")).sec) < 1e-3
    h = fits.Header({"DATE-OBS": "05/11/98", "TIME-OBS": "01:00:00", "EXPTIME": 0.0})
    assert mid(h).isot.startswith("1998-11-05T01:00:00")


def test_mjd_and_midpoint_keywords():
    h = fits.Header({"MJD-OBS": 60000.0, "EXPTIME": 86.4})
    assert abs(mid(h).mjd - (60000.0 + 43.2 / 86400)) < 1e-9
    h = fits.Header({"MIDTIMJD": 60000.5, "EXPTIME": 300.0})
    assert abs(mid(h).mjd - 60000.5) < 1e-9
    h = fits.Header()
    h["MJD_OBS"] = (58090.10323391, "[days] Obs. midpoint Modified Julian Day")
    h["EXPTIME"] = 7.7
    assert abs(mid(h).mjd - 58090.10323391) < 1e-9


def test_jd_end_of_exposure_and_utcstart():
    h = fits.Header()
    h["JD"] = (2452482.5, "Time at end of exposure")
    h["EXPTIME"] = 120.0
    cfg = IOConfig(time_keys=["JD"])
    t = observation_time(h, cfg).mid
    assert abs((t - Time(2452482.5, format="jd", scale="utc")).sec + 60.0) < 1e-3
    h = fits.Header({"DATE-OBS": "2020-05-01", "UTCSTART": "23:59:00", "EXPTIME": 120.0})
    t = observation_time(h, IOConfig(time_keys=["UTCSTART"])).mid
    assert t.isot.startswith("2020-05-02T00:00:00")


def test_tt_timesys_converted_to_utc():
    h = fits.Header({"MJD-OBS": 60000.0, "EXPTIME": 0.0, "TIMESYS": "TT"})
    assert abs((mid(h) - Time(60000.0, format="mjd", scale="tt")).sec) < 1e-6
    assert mid(h).scale == "utc"


def _tan(**extra):
    h = fits.Header()
    h.update(
        {"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 150.0, "CRVAL2": 20.0, "CRPIX1": 50.0,
         "CRPIX2": 50.0, "CD1_1": -1e-4, "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": 1e-4}
    )
    h.update(extra)
    return h


def test_wcs_numbers_stored_as_strings():
    h = _tan(CRVAL1="150.0", CD1_1="-1.0E-4")
    fixed, notes = sanitize_wcs_header(h)
    assert fixed["CRVAL1"] == 150.0 and any("string" in n for n in notes)
    wcs, problem = celestial_wcs(h, shape=(100, 100))
    assert problem == ""
    ra, dec = wcs.all_pix2world([49.0], [49.0], 0)
    assert abs(ra[0] - 150.0) < 1e-9 and abs(dec[0] - 20.0) < 1e-9


def test_tan_with_pv_terms_reads_as_tpv():
    h = _tan(PV1_0=0.0, PV1_1=1.0, PV1_4=0.5, PV2_0=0.0, PV2_1=1.0, PV2_4=0.0)
    fixed, notes = sanitize_wcs_header(h)
    assert fixed["CTYPE1"] == "RA---TPV"
    wcs, problem = celestial_wcs(h, shape=(100, 100))
    plain, _ = celestial_wcs(_tan(), shape=(100, 100))
    # the distortion term must act: a corner moves relative to the undistorted TAN
    a = np.array(wcs.all_pix2world([0.0], [0.0], 0)).ravel()
    b = np.array(plain.all_pix2world([0.0], [0.0], 0)).ravel()
    assert np.hypot((a[0] - b[0]) * np.cos(np.radians(20)), a[1] - b[1]) * 3600 > 1e-3


def test_tan_with_sip_coefficients_gets_sip_suffix():
    h = _tan(A_ORDER=2, B_ORDER=2, A_2_0=1e-5, B_0_2=1e-5)
    fixed, _ = sanitize_wcs_header(h)
    assert fixed["CTYPE1"] == "RA---TAN-SIP"
    wcs, problem = celestial_wcs(h, shape=(100, 100))
    assert problem == "" and wcs.sip is not None


def test_missing_wcs_reported():
    wcs, problem = celestial_wcs(fits.Header({"NAXIS": 2}), shape=(10, 10))
    assert wcs is None and "no celestial WCS" in problem


def test_real_astride_header():
    path = real_data("real", "streak_astride", "long.fits")
    h = fits.getheader(path)
    t = observation_time(h, IOConfig())
    assert t.mid.isot.startswith("2002-07-26T19:37:07")  # DATE-OBS '26/07/102' + TIME-OBS, start + 30 s
    wcs, problem = celestial_wcs(h, shape=(512, 512))
    assert problem == ""
    scale = np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))) * 3600
    assert abs(scale - 3.04) < 0.02


def test_real_neowise_header():
    path = real_data("real", "neowise_known_asteroids", "88422a106-w1-int-1b.fits")
    h = fits.getheader(path)
    t = observation_time(h, IOConfig())
    assert abs(t.mid.mjd - 58090.10323391) < 1e-8  # MJD_OBS is the midpoint
    wcs, problem = celestial_wcs(h, shape=(1016, 1016))
    assert problem == "" and wcs.sip is not None


def test_station_code_from_header():
    from ssodetect.io.headers import station_code

    h = fits.Header()
    assert station_code(h) is None
    h["ORIGIN"] = "MIT Wallace Astrophysical Observatory (810)"
    assert station_code(h) == "810"
    h["MPCCODE"] = "c51"
    assert station_code(h) == "C51"  # an explicit code keyword wins
    h2 = fits.Header()
    h2["ORIGIN"] = "ssodetect 0.1 simulate"  # no code in parentheses
    assert station_code(h2) is None


def test_cunit_degrees_is_read_as_deg():
    h = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 10.0, "CRVAL2": 20.0, "CRPIX1": 5.0,
                     "CRPIX2": 5.0, "CD1_1": -0.0008, "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": 0.0008,
                     "CUNIT1": "degrees", "CUNIT2": "degrees"})  # NEOSSat's headers
    fixed, notes = sanitize_wcs_header(h)
    assert fixed["CUNIT1"] == "deg" and fixed["CUNIT2"] == "deg" and any("CUNIT1" in n for n in notes)
    wcs, problem = celestial_wcs(h, shape=(10, 10))
    assert wcs is not None and problem == ""


def test_unusable_or_disagreeing_time_keywords_are_noted():
    """MJD-OBS = 'abc' beside a good DATE-OBS, or MJD-OBS and DATE-OBS 60 s apart: the time used is said, and why the
    other keyword was not (the frame's time is still the first usable keyword's)."""
    h = fits.Header({"DATE-OBS": "2024-03-01T02:00:00", "EXPTIME": 60.0, "MJD-OBS": "abc"})
    t = observation_time(h, IOConfig())
    assert abs(t.mid.mjd - Time("2024-03-01T02:00:30", scale="utc").mjd) * 86400 < 1e-3
    assert len(t.notes) == 1 and "MJD-OBS" in t.notes[0]
    h = fits.Header({"DATE-OBS": "2024-03-01T02:00:00", "EXPTIME": 60.0,
                     "MJD-OBS": Time("2024-03-01T02:01:00", scale="utc").mjd})
    t = observation_time(h, IOConfig())
    assert len(t.notes) == 1 and ("+60.0 s" in t.notes[0] or "-60.0 s" in t.notes[0]), t.notes
    h = fits.Header({"DATE-OBS": "2024-03-01T02:00:00", "EXPTIME": 60.0,
                     "MJD-OBS": Time("2024-03-01T02:00:00.4", scale="utc").mjd})
    assert observation_time(h, IOConfig()).notes == ()
    # a usable keyword first: a later one that cannot be read is no concern (a date-only DATE-OBS beside MJD-OBS)
    h = fits.Header({"MJD-OBS": 60370.0, "DATE-OBS": "2024-03-01", "EXPTIME": 60.0})
    assert observation_time(h, IOConfig()).notes == ()


def test_merged_header_prefers_the_extension_and_fills_from_the_primary():
    """merge_headers (linear: the second campaign's 20,000-card header took 20 s to scan through astropy's
    extend(update=True), 0.6 s now): the extension's value wins, the primary fills what it lacks, the primary's
    commentary cards are left out."""
    from astropy.io import fits

    from ssodetect.io.headers import merge_headers

    primary = fits.Header([("EXPTIME", 100.0), ("FILTER", "r"), ("HISTORY", "old")])
    ext = fits.Header([("EXPTIME", 50.0), ("CCDID", "1-1"), ("COMMENT", "kept")])
    merged = merge_headers(ext, primary)
    assert merged["EXPTIME"] == 50.0 and merged["FILTER"] == "r" and merged["CCDID"] == "1-1"
    assert list(merged["COMMENT"]) == ["kept"] and "HISTORY" not in merged
    assert merge_headers(ext) == ext


@pytest.mark.parametrize("timesys, offset, note", [("UTC", 0.0, None), ("TAI", -37.0, None), ("GPS", -18.0, None),
                                                   ("TT", -69.184, None), ("UT1", 0.0, "read as UTC"),
                                                   ("MARS", 0.0, "not a time scale")])
def test_time_scales_are_read_or_named(timesys, offset, note):
    """Seventh campaign: TIMESYS = 'GPS' was read as TAI (19 s off) and an unknown TIMESYS silently as UTC."""
    h = fits.Header({"DATE-OBS": "2026-03-21T00:00:00", "EXPTIME": 0.0, "TIMESYS": timesys})
    obs = observation_time(h, IOConfig())
    assert (obs.mid - Time("2026-03-21T00:00:00", scale="utc")).sec == pytest.approx(offset, abs=1e-3)
    assert (note is None and not obs.notes) or (note is not None and any(note in n for n in obs.notes)), obs.notes


@pytest.mark.parametrize("card, value, said", [("DATE-OBS", "0001-01-01T00:00:00", "year 1,"),
                                               ("DATE-OBS", "9999-12-31T00:00:00", "year 9999,"),
                                               ("EXPTIME", 1e-300, "exposure time"),
                                               ("EXPTIME", 1e300, "exposure time")])
def test_absurd_times_are_refused_naming_the_keyword_without_library_warnings(card, value, said, recwarn):
    """Seventh campaign: year 1 or 9999 printed ERFA "dubious year" lines naming no file; EXPTIME = 1e-300 overflowed
    magnitudes later, and EXPTIME = 1e300 was blamed on the date."""
    h = fits.Header({"DATE-OBS": "2026-03-21T00:00:00", "EXPTIME": 10.0})
    h[card] = value
    with pytest.raises(ValueError, match=said):
        observation_time(h, IOConfig())
    assert not [w for w in recwarn if "dubious" in str(w.message)]


def test_a_distortion_that_cannot_be_inverted_makes_the_header_wcs_unusable():
    """Seventh campaign's D1: SIP A_2_0 = 0.01 on a 512 px image (the distortion folds it over) made astropy's
    all_world2pix raise NoConvergence in the astrometry step: exit 3.  A usable SIP passes."""
    h = fits.Header({"CTYPE1": "RA---TAN-SIP", "CTYPE2": "DEC--TAN-SIP", "CRVAL1": 150.0, "CRVAL2": 2.0,
                     "CRPIX1": 256.0, "CRPIX2": 256.0, "CD1_1": -2.8e-5, "CD2_2": 2.8e-5, "CD1_2": 0.0, "CD2_1": 0.0,
                     "A_ORDER": 2, "B_ORDER": 2, "A_2_0": 1e-2, "B_0_2": -1e-2})
    wcs, problem = celestial_wcs(h, shape=(512, 512))
    assert wcs is None and "cannot be inverted" in problem
    h["A_2_0"], h["B_0_2"] = 1e-7, -1e-7
    wcs, problem = celestial_wcs(h, shape=(512, 512))
    assert wcs is not None and problem == ""
