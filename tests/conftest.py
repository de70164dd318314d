"""Shared fixtures: small seeded simulated scenes and paths to the real data in ../shared."""
from __future__ import annotations

from pathlib import Path

import pytest

from types import SimpleNamespace

from faultkit import cli_uncaptured, snapshot
from ssodetect.config import Config
from ssodetect.simulate import SimulationConfig, simulate

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def real_data(*parts) -> Path:
    """Path under ../shared/data; the test is skipped when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path}")
    return path


def small_scene_config(seed: int, **overrides) -> SimulationConfig:
    """A 768^2 single-CCD Euclid-like scene with many movers (for statistics in a small area)."""
    params = dict(seed=seed, nccd=1, nx=768, ny=768, movers_per_ccd=600.0, transients_per_ccd=3.0)
    params.update(overrides)
    return SimulationConfig(**params)


#: Header WCS errors of the session scene: pointing [arcsec], rotation [deg]; a star field dense
#: enough (~16 unsaturated Gaia-like stars on 768^2 px) for a SIP fit per exposure.
PERTURBED = dict(star_density=150000.0, header_pointing_error=20.0, header_rotation_error=0.5)


@pytest.fixture(scope="session", autouse=True)
def _cache_key(tmp_path_factory):
    """The step cache's signing key in the session's temporary directory (the user's own key is not touched)."""
    import os

    path = tmp_path_factory.mktemp("key") / "cache.key"
    # and the user's cache (run registries of `ssodetect runs`) in the session's temporary directory
    values = {"SSODETECT_CACHE_KEY": str(path), "XDG_CACHE_HOME": str(tmp_path_factory.mktemp("xdg_cache"))}
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    yield path
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def scene(tmp_path_factory):
    """A simulated 4-exposure scene on disk (Euclid MEF layout) whose headers are off by up to 20" and 0.5 deg."""
    out = tmp_path_factory.mktemp("scene") / "sim"
    simulate(small_scene_config(11, **PERTURBED), out)
    return out


@pytest.fixture()
def quiet_config() -> Config:
    config = Config()
    config.execution.progress = False
    return config


# fixtures of the fault-injection suite (tests/faults)

@pytest.fixture(scope="session")
def good_run(scene, tmp_path_factory):
    """One complete ``ssodetect run SCENE --out OUT`` (no reference catalogue: header WCSs checked against each
    other), shared by the whole suite (once per xdist worker; a run is the suite's main cost).  Tests copy
    ``good_run.out`` and never write into it (checked after each test)."""
    out = tmp_path_factory.mktemp("good") / "out"
    outcome = cli_uncaptured("run", scene, "--out", out)
    assert outcome.code in (0, 1), outcome.err
    return SimpleNamespace(out=out, outcome=outcome, snapshot=snapshot(out))


@pytest.fixture(autouse=True)
def _good_run_untouched(request):
    """A test that uses ``good_run`` must not have changed it (tests work on copies)."""
    yield
    if "good_run" in request.fixturenames:
        good = request.getfixturevalue("good_run")
        assert snapshot(good.out) == good.snapshot, "a test wrote into the shared good run"
