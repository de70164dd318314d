"""Resources and environment checks made before any work: free space, optional extras, bounded blind-solve memory,
the reference catalogue cut to the field, hints about the exposures' times."""
from __future__ import annotations

import os
from collections import namedtuple

import numpy as np
import pytest
from astropy.table import Table
from astropy.time import Time

from ssodetect.astrometry.blind import SkyIndex, blind_solve, build_sky_indexes
from ssodetect.astrometry.refcat import cut_to_field
from ssodetect.cli import main
from ssodetect.io.frames import CCDRef, Exposure, sequence_problems, time_order_differs


def test_no_room_for_the_products_is_refused_before_any_work(scene, tmp_path, capsys, monkeypatch):
    import ssodetect.io.outputs as outputs

    real = os.statvfs
    Fake = namedtuple("Fake", "f_bavail f_frsize")
    monkeypatch.setattr(outputs.os, "statvfs", lambda path: Fake(10, 4096) if str(path) == str(tmp_path) else real(path))
    out = tmp_path / "out"
    code = main(["run", str(scene), "--out", str(out), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "MB free" in err[0] and str(out) in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no stage, no lock, no OUT left


def test_missing_dask_is_a_one_line_install_hint(scene, tmp_path, capsys, monkeypatch):
    import ssodetect.pipeline.executor as executor

    real = executor.find_spec
    monkeypatch.setattr(executor, "find_spec", lambda name: None if name in ("dask", "distributed") else real(name))
    code = main(["run", str(scene), "--out", str(tmp_path / "out"), "--workers", "2", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pip install 'ssodetect[dask]'" in err[0]
    assert not (tmp_path / "out").exists()


def _catalogue(rng, n, ra0=150.0, dec0=25.0, half=1.0):
    return Table({"ra": ra0 + rng.uniform(-half, half, n) / np.cos(np.radians(dec0)),
                  "dec": dec0 + rng.uniform(-half, half, n), "phot_g_mean_mag": rng.uniform(14, 21, n)})


def test_blind_index_memory_is_bounded_and_the_tile_limit_is_reported():
    rng = np.random.default_rng(7)
    cat = _catalogue(rng, 200_000)
    indexes = build_sky_indexes(cat["ra"], cat["dec"], cat["phot_g_mean_mag"], (1024, 1024), (0.09, 0.11))
    n_tiles = sum(len(index) for index in indexes)
    assert n_tiles > 5000  # a 2 x 2 deg catalogue in ~80" tiles
    xy = rng.uniform(0, 1023, (40, 2))  # sources that match nothing in the catalogue
    result, why = blind_solve(xy, (1024, 1024), indexes, pointing=(150.0, 25.0, 180.0), max_tiles=150)
    assert result is None and "stopped at the limit of 150" in why and f"of {n_tiles} tiles" in why
    assert all(len(index._cache) <= SkyIndex.MAX_CACHED for index in indexes)  # tiles built lazily, few kept


def test_blind_index_tiles_a_fine_scale_around_its_stars_only_the_same_tiles(monkeypatch):
    """Campaign 25: a pixel-scale range down to 1e-6"/px made the blind index allocate a 72 GiB grid.  A grid of more
    cells than 25 per star is now made only around the stars: the tiles are the same as the full grid's."""
    rng = np.random.default_rng(9)
    clumps = _catalogue(rng, 100, half=0.3)  # 100 clusters of 20 stars within ~10" over 0.6 x 0.6 deg
    ra = np.repeat(np.asarray(clumps["ra"]), 20) + rng.normal(0, 5 / 3600, 2000)
    dec = np.repeat(np.asarray(clumps["dec"]), 20) + rng.normal(0, 5 / 3600, 2000)
    args = (ra, dec, rng.uniform(14, 21, 2000))
    sparse = SkyIndex(*args, half_diag=4.0, scale_range=(0.01, 0.02))  # ~540^2 cells for 2000 stars
    monkeypatch.setattr(SkyIndex, "DENSE_GRID_PER_STAR", 10**9)
    dense = SkyIndex(*args, half_diag=4.0, scale_range=(0.01, 0.02))
    assert len(sparse) == len(dense) > 1000
    key = lambda index: sorted(zip(np.round(index._cx, 6), np.round(index._cy, 6)))  # noqa: E731
    assert key(sparse) == key(dense)
    # and a range the configuration refuses: below 0.005"/px
    from ssodetect.config import AstrometryConfig

    with pytest.raises(ValueError, match="pixel_scale_range"):
        AstrometryConfig(pixel_scale_range=[1e-6, 5.0])
    with pytest.raises(ValueError, match="pixel_scale_range"):
        AstrometryConfig(pixel_scale_range=[0.1, 1e5])


def test_catalogue_cut_to_the_field_matches_a_direct_distance():
    rng = np.random.default_rng(8)
    cat = _catalogue(rng, 20_000)
    centres_ra, centres_dec = np.array([149.8, 150.3]), np.array([24.9, 25.4])
    kept = cut_to_field(cat, centres_ra, centres_dec, 0.3)
    from astropy.coordinates import SkyCoord

    stars = SkyCoord(cat["ra"], cat["dec"], unit="deg")
    near = np.zeros(len(cat), bool)
    for ra, dec in zip(centres_ra, centres_dec):
        near |= stars.separation(SkyCoord(ra, dec, unit="deg")).deg <= 0.3
    assert len(kept) == int(near.sum()) > 0


def _exposures(names, mjds):
    out = []
    for k, (name, mjd) in enumerate(zip(names, mjds)):
        ref = CCDRef(path=f"/data/{name}", sci=0, rms=None, flg=None, ccd="0", mjd=mjd, exptime=60.0, filter="V", time_source="DATE-OBS",
                     instrument="CCD")
        out.append(Exposure(k, Time(mjd, format="mjd"), 60.0, [ref]))
    return out


def test_hints_about_the_exposures_times():
    good = _exposures(["a1.fits", "a2.fits", "a3.fits"], [60000.0, 60000.02, 60000.04])
    assert sequence_problems(good) == [] and time_order_differs(good) == ""
    apart = _exposures(["a1.fits", "a2.fits", "a3.fits"], [60000.0, 60000.02, 61096.0])
    (line,) = sequence_problems(apart)
    assert "exposures 1 (a2.fits) and 2 (a3.fits) are 1096.0 days apart" in line
    shuffled = _exposures(["a2.fits", "a3.fits", "a1.fits"], [60000.0, 60000.02, 60000.04])
    assert "a2.fits, a3.fits, a1.fits" in time_order_differs(shuffled)
    # exposures of 60 s whose mid-times are 50 s apart overlap (N1: EXPTIME = 1e6 with starts 1100 s apart)
    close = _exposures(["a1.fits", "a2.fits", "a3.fits"], [60000.0, 60000.0 + 50 / 86400, 60000.04])
    (line,) = sequence_problems(close)
    assert "exposures 0 (a1.fits, 60 s) and 1 (a2.fits, 60 s) overlap by 10 s" in line and "EXPTIME" in line
    touching = _exposures(["a1.fits", "a2.fits", "a3.fits"], [60000.0, 60000.0 + 60 / 86400, 60000.04])
    assert sequence_problems(touching) == []


@pytest.mark.parametrize("replace", [True, False])
def test_an_outdir_with_a_name_as_long_as_the_file_system_allows(tmp_path, replace):
    """A 250-byte OUTDIR name: its lock, stage and previous directories beside it get shortened, distinct names."""
    from ssodetect.io.outputs import OutputStage, sibling_name

    out = tmp_path / ("x" * 249 + "1")
    other = tmp_path / ("x" * 249 + "2")
    assert len(sibling_name(out.name)) <= 160 and sibling_name(out.name) != sibling_name(other.name)
    assert sibling_name("short/name") == "short__name"
    for target in (out, other):
        if not replace:
            target.mkdir()
        for k in range(2):  # a new directory, then a replacement (or a merge) of it
            with OutputStage(target, replace=replace) as stage:
                stage.file(f"product{k}.txt").write_text("ok")
            assert (target / f"product{k}.txt").read_text() == "ok"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == sorted([out.name, other.name])


def test_every_run_product_is_recognised_in_a_directory_without_a_signed_record():
    """A run's products are known by name to the fallback that reads a manifest (a new product must be added)."""
    from ssodetect.io.outputs import LEGACY_PRODUCTS
    from ssodetect.pipeline.run import RUN_PRODUCTS

    assert set(RUN_PRODUCTS) <= set(LEGACY_PRODUCTS)


def test_a_lock_that_cannot_be_written_is_not_left_behind(tmp_path, monkeypatch):
    """Eighth campaign's N11: on a full disk the lock file was made (a new inode fits) but its process number could
    not be written, and the empty ``.out.lock`` stayed."""
    import errno

    from ssodetect.io import outputs

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs.os, "write", full)
    with pytest.raises(OSError, match="No space left"):
        outputs.OutputLock(tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
