"""Linking and stationary tests on synthetic detection lists with known truth."""
import numpy as np

from ssodetect.link import link_tracklets, static_on_detector, static_on_sky


def _movers_and_noise(rng, n_exp=4, n_movers=20, n_noise=300, sigma=0.02, drop=()):
    times = np.arange(n_exp) * 1100.0 / 3600.0
    rows = []
    truth = []
    for k in range(n_movers):
        x0, y0 = rng.uniform(0, 200, 2)
        rate = rng.uniform(0.5, 10.0)
        pa = rng.uniform(0, 2 * np.pi)
        vx, vy = rate * np.sin(pa), rate * np.cos(pa)
        truth.append((x0, y0, vx, vy))
        for e, t in enumerate(times):
            if (k, e) in drop:
                continue
            rows.append((e, t, x0 + vx * t + rng.normal(0, sigma), y0 + vy * t + rng.normal(0, sigma), k))
    for e, t in enumerate(times):
        for _ in range(n_noise):
            rows.append((e, t, rng.uniform(0, 200), rng.uniform(0, 200), -1))
    arr = np.array(rows)
    return arr, truth


def _link(arr, sigma=0.02):
    n = len(arr)
    return link_tracklets(
        arr[:, 0].astype(int), arr[:, 1], arr[:, 2], arr[:, 3], np.full(n, sigma), np.full(n, 100.0),
        np.full(n, 10.0), min_rate=0.3, max_rate=12.0,
    )


def test_links_movers_among_noise_and_tolerates_missing_detections():
    rng = np.random.default_rng(3)
    arr, truth = _movers_and_noise(rng, drop={(0, 1), (5, 3)})
    trks = _link(arr)
    labels = arr[:, 4].astype(int)
    found = {}
    chance = 0
    for trk in trks:
        ids = set(labels[list(trk.members)])
        assert len(ids) == 1, "a tracklet mixes two objects or an object and noise"
        k = ids.pop()
        if k == -1:
            chance += 1  # a chance alignment of unrelated detections
            assert len(trk.members) == 3
        else:
            found[k] = trk
    assert len(found) == len(truth)
    assert chance <= 1  # 300 random detections per exposure: ~0.5 chance triplets expected
    assert len(found[0].members) == 3 and len(found[5].members) == 3
    for k, (x0, y0, vx, vy) in enumerate(truth):
        assert abs(found[k].vx - vx) < 0.1 and abs(found[k].vy - vy) < 0.1


def test_long_sequence_is_one_object():
    rng = np.random.default_rng(4)
    arr, truth = _movers_and_noise(rng, n_exp=12, n_movers=3, n_noise=30, drop={(1, 4), (1, 5)})
    trks = _link(arr)
    sizes = sorted(len(t.members) for t in trks)
    assert sizes == [10, 12, 12]


def test_static_sources_are_found_and_slow_movers_kept():
    rng = np.random.default_rng(5)
    t = np.repeat(np.arange(4) * 1100 / 3600.0, 2)
    e = np.repeat(np.arange(4), 2)
    # source 0 static, source 1 moving at 0.5"/h
    x = np.where(np.arange(8) % 2 == 0, 10.0, 50.0 + 0.5 * t) + rng.normal(0, 0.01, 8)
    y = np.full(8, 20.0) + rng.normal(0, 0.01, 8)
    static = static_on_sky(e, t, x, y, np.full(8, 0.01), radius=0.12, min_matches=2, min_rate=0.3)
    assert static[::2].all() and not static[1::2].any()


def test_hot_pixel_moving_with_dithers():
    e = np.array([0, 1, 2, 3])
    dither = np.array([0.0, 3.1, -2.2, 1.4])  # arcsec
    x = np.full(4, 100.0)  # same pixel
    xi = 10.0 + dither
    flagged = static_on_detector(e, np.array(["1-1"] * 4), x, np.full(4, 50.0), xi, np.zeros(4), radius_px=0.5, min_sky_shift=0.36)
    assert flagged.all()
    # a real mover that happens to cross the same pixel in only two exposures is not flagged
    flagged = static_on_detector(e[:2], np.array(["1-1"] * 2), x[:2], np.full(2, 50.0), xi[:2], np.zeros(2), radius_px=0.5, min_sky_shift=0.36)
    assert flagged.all()  # with only 2 exposures one partner is all there can be
    x3 = np.array([100.0, 100.0, 140.0, 180.0])
    flagged = static_on_detector(e, np.array(["1-1"] * 4), x3, np.full(4, 50.0), xi, np.zeros(4), radius_px=0.5, min_sky_shift=0.36)
    assert not flagged.any()
