"""ML vetting: WCS resampling of sequences, datasets with injected movers, training, the shipped model, the run stage."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from astropy.table import Table

from ssodetect.errors import InputError
from ssodetect.ml import DatasetConfig, Frame, build_dataset, cut_sequences, grid_wcs, load_dataset, track_grids, write_dataset
from ssodetect.ml.sequences import GridSpec
from ssodetect.simulate import SimulationConfig
from ssodetect.simulate.render import DoubleGaussianPSF, splat, trail_points
from ssodetect.simulate.scene import draw_scene, render_ccd

EXPTIME = 566.0

#: What the ADES header needs to be written without a placeholder warning (a run that warns exits 1).
_REPORT = "[report]\nstation = \"C65\"\nheader_astcat = \"Gaia3\"\n"


@pytest.fixture(scope="module")
def sim_frames():
    """Four Euclid-like exposures of one 512^2 CCD rendered in memory (stars, galaxies, cosmic rays, hot pixels)."""
    cfg = SimulationConfig(seed=5, nx=512, ny=512, movers_per_ccd=0.0, transients_per_ccd=0.0, satellite=False,
                           star_density=150000.0)
    scene = draw_scene(cfg)
    frames = []
    for e in range(cfg.n_exposures):
        sci, rms, flg, wcs, _ = render_ccd(scene, e, 0)
        data = (sci - np.median(sci)).astype(np.float32)
        data[flg != 0] = np.nan
        frames.append(Frame(data=data, rms=rms, wcs=wcs, mjd=float(scene.exposure_mjd[e]), exptime=cfg.exptime,
                            gain=cfg.gain, fwhm=float(scene.fwhm[e]), zeropoint=25.6 - 2.5 * math.log10(cfg.gain)))
    stars = scene.stars[(scene.stars["mag"] > 19) & (scene.stars["mag"] < 22)]
    ra, dec = scene.plane.to_sky(np.asarray(stars["xi"]), np.asarray(stars["eta"]))
    x, y = frames[0].wcs.all_world2pix(ra, dec, 0)
    inside = (x > 40) & (x < 470) & (y > 40) & (y < 470)
    sources = Table({"ra": ra[inside], "dec": dec[inside], "kind": np.full(int(inside.sum()), "star")})
    return frames, sources


def _blank_frames(n=4, shape=(300, 300), noise=1.0, seed=0):
    """Pure-noise frames with a (mildly) distorted WCS, dithered by a few pixels, Euclid cadence."""
    from ssodetect.simulate.starfield import distorted_wcs

    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n):
        w = distorted_wcs(shape=shape, distortion=0.01)
        w.wcs.crpix = [w.wcs.crpix[0] + 3.3 * k, w.wcs.crpix[1] - 2.1 * k]
        w.wcs.set()
        frames.append(Frame(data=rng.normal(0, noise, shape).astype(np.float32), rms=noise, wcs=w,
                            mjd=60000.0 + k * 1100.0 / 86400.0, exptime=EXPTIME, fwhm=1.7))
    return frames


def test_resampling_matches_reproject_interp():
    reproject = pytest.importorskip("reproject")
    frame = _blank_frames(1, seed=1)[0]
    frame.data[100:140, 120:170] += 20.0  # structure, so that a misplaced grid would show
    ra, dec = frame.wcs.all_pix2world([150.3], [131.7], 0)
    spec = GridSpec(np.array([[ra[0]]]), np.array([[dec[0]]]), np.array([37.0]), np.array([1.0]), 0.1, 32)
    seqs = cut_sequences([frame], spec, order=1)
    ours = seqs.images[0, 0] * seqs.noise[0, 0]
    theirs, footprint = reproject.reproject_interp((frame.data, frame.wcs), grid_wcs(spec, 0, 0), shape_out=(32, 32),
                                                   order="bilinear")
    assert footprint.all()
    assert np.max(np.abs(ours - theirs)) < 2e-3 * np.max(np.abs(theirs))


def test_linearised_wcs_holds_on_a_distorted_4k_ccd_over_a_fast_movers_grid():
    from ssodetect.ml.sequences import frame_pixels, sample_pixels
    from ssodetect.simulate.starfield import distorted_wcs

    w = distorted_wcs(shape=(4096, 4096), distortion=1.5)  # Euclid-like: 1.5 px at the corners
    frame = Frame(data=np.zeros((4096, 4096), np.float32), rms=1.0, wcs=w, mjd=60000.0, exptime=EXPTIME)
    ra, dec = w.all_pix2world([3900.0], [3950.0], 0)
    spec = GridSpec(np.array([[ra[0]]]), np.array([[dec[0]]]), np.array([123.0]), np.array([8.0]), 0.1, 32)
    cx, cy, jac = frame_pixels(frame, spec, 0)
    px, py = sample_pixels(spec, 0, 8, cx[0], cy[0], jac[0])
    gy, gx = np.mgrid[0:32, 0:32]
    r, d = grid_wcs(spec, 0, 0).all_pix2world(gx.ravel(), gy.ravel(), 0)
    ex, ey = w.all_world2pix(r, d, 0)  # the exact mapping of each grid pixel centre
    assert np.ptp(px) > 200  # the grid spans 256 native px along the track
    assert np.max(np.hypot(px.reshape(32, 32, 8).mean(2).ravel() - ex, py.reshape(32, 32, 8).mean(2).ravel() - ey)) < 0.01


def _paint_mover(frames, ra, dec, v_ra, v_dec, mjd_ref, flux):
    psf = DoubleGaussianPSF(1.7)
    for f in frames:
        ends = []
        for dt in (-0.5 * f.exptime, 0.5 * f.exptime):
            spec = track_grids([ra], [dec], mjd_ref, [v_ra], [v_dec], [f.mjd + dt / 86400.0], f.exptime, 0.1)
            ends.append(f.wcs.all_world2pix(spec.ra[0], spec.dec[0], 0))
        (x0, y0), (x1, y1) = ends
        splat(f.data, *trail_points(float(x0[0]), float(y0[0]), float(x1[0]), float(y1[0]), flux), psf)


@pytest.mark.parametrize("rate", [2.0, 40.0])
def test_track_grid_holds_a_mover_at_the_centre_along_x(rate):
    frames = _blank_frames(shape=(600, 600), seed=2)  # 40"/h crosses 430 px during the sequence
    pa = math.radians(63.0)
    v_ra, v_dec = rate * math.sin(pa), rate * math.cos(pa)
    ra, dec = frames[0].wcs.all_pix2world([300.0], [300.0], 0)
    mjd_ref = float(np.mean([f.mjd for f in frames]))
    _paint_mover(frames, ra[0], dec[0], v_ra, v_dec, mjd_ref, flux=3000.0)
    spec = track_grids(ra, dec, mjd_ref, [v_ra], [v_dec], [f.mjd for f in frames], EXPTIME, 0.1)
    seqs = cut_sequences(frames, spec)
    assert not seqs.masks.any()
    c = 15.5
    yy, xx = np.mgrid[0:32, 0:32]
    trail = rate * EXPTIME / 3600.0 / 0.1 / spec.stretch[0]  # [grid px]
    for i in range(4):
        img = np.clip(seqs.images[0, i], 0, None) * (np.hypot(xx - c, yy - c) < 0.5 * trail + 5)
        cx, cy = (img * xx).sum() / img.sum(), (img * yy).sum() / img.sum()
        assert abs(cx - c) < 0.4 and abs(cy - c) < 0.3
        # elongated along x by the trail (second moments), round for the slow one
        sxx = (img * (xx - cx) ** 2).sum() / img.sum()
        syy = (img * (yy - cy) ** 2).sum() / img.sum()
        assert (sxx > 3 * syy) if trail > 5 else (sxx < 2 * syy)


def test_sky_grid_sees_the_mover_cross_and_a_track_grid_sees_the_velocity_difference():
    frames = _blank_frames(seed=3)
    rate = 2.0  # towards the east: -x on a north-up east-left sky grid
    ra, dec = frames[0].wcs.all_pix2world([150.0], [150.0], 0)
    mjd_ref = float(np.mean([f.mjd for f in frames]))
    _paint_mover(frames, ra[0], dec[0], rate, 0.0, mjd_ref, flux=3000.0)
    mjds = [f.mjd for f in frames]
    step = rate * 1100.0 / 3600.0 / 0.1  # px between exposures

    def peaks(seqs):
        return np.array([np.unravel_index(np.argmax(seqs.images[0, i]), (32, 32)) for i in range(4)])  # (y, x)

    sky = peaks(cut_sequences(frames, track_grids(ra, dec, mjd_ref, [0.0], [0.0], mjds, EXPTIME, 0.1, mode="sky")))
    assert np.allclose(np.diff(sky[:, 1]), -step, atol=1.0) and np.ptp(sky[:, 0]) <= 1
    # a grid following a northward motion (x north, y east) sees the object go east and fall behind to the south
    track = peaks(cut_sequences(frames, track_grids(ra, dec, mjd_ref, [0.0], [rate], mjds, EXPTIME, 0.1)))
    assert np.allclose(np.diff(track[:, 0]), step, atol=1.0) and np.allclose(np.diff(track[:, 1]), -step, atol=1.0)


def test_dataset_paints_every_kind_where_it_belongs(sim_frames, tmp_path):
    frames, sources = sim_frames
    cfg = DatasetConfig(n_sequences=320, rate_min=0.5, rate_max=20.0, snr_min=20.0, snr_max=60.0, seed=4, shard_size=100)
    seqs, meta = build_dataset(frames, cfg, sources=sources)
    assert set(meta["kind"]) == {"mover", "empty", "star", "hot_pixel", "cosmic", "transient", "pair", "misaligned"}
    assert abs(np.mean(meta["label"]) - 0.5) < 0.1
    centre = seqs.images[:, :, 14:18, 14:18].sum(axis=(2, 3))  # (N, T) signal at the grid centre
    kinds = np.asarray(meta["kind"])
    lit = centre > 12.0
    movers = kinds == "mover"
    # movers: at the centre of (nearly) every frame; transients: one frame; pairs: two; hot pixels: >= 1
    assert np.mean(lit[movers].sum(axis=1) >= 3) > 0.95
    assert np.mean(lit[kinds == "transient"].sum(axis=1) <= 2) > 0.8
    assert np.mean(lit[kinds == "pair"].sum(axis=1) == 2) > 0.6
    assert np.mean(lit[kinds == "hot_pixel"].any(axis=1)) > 0.9
    # the injected S/N is what a matched filter measures: trail template fitted in each frame
    from ssodetect.ml.sequences import trail_template

    tmpl = trail_template(meta["trail"][movers], np.full(movers.sum(), 1.7 / 2.3548), meta["stretch"][movers])
    img = seqs.images[movers]
    est = (img * tmpl[:, None]).sum(axis=(2, 3)) / np.sqrt((tmpl**2).sum(axis=(1, 2)))[:, None]  # per-frame S/N
    measured = np.sqrt(np.sum(np.clip(est, 0, None) ** 2, axis=1))
    ratio = np.median(measured / np.asarray(meta["snr"])[movers])
    assert 0.6 < ratio < 1.2  # interpolation smooths the noise and the hypothesis is off by 0.3 px: close, not exact
    # storage round trip (float16 images, packed masks)
    write_dataset(tmp_path / "ds", [(seqs, meta)], cfg, {})
    images, masks, meta2, doc = load_dataset(tmp_path / "ds")
    assert doc["n_shards"] == 4 and images.shape == seqs.images.shape
    assert np.array_equal(masks, seqs.masks) and np.allclose(images, seqs.images, rtol=2e-3, atol=2e-3)
    assert np.array_equal(meta2["label"], meta["label"])
    with pytest.raises(InputError, match="not a dataset directory"):
        load_dataset(tmp_path)
    # labels other than 0/1 (campaign 31: 7 and -3 trained as "movers, 0 negatives")
    meta2["label"] = np.where(np.asarray(meta2["label"]) == 1, 7, -3)
    meta2.write(tmp_path / "ds" / "meta.ecsv", format="ascii.ecsv", overwrite=True)
    with pytest.raises(InputError, match="labels must be 0"):
        load_dataset(tmp_path / "ds")


def test_dataset_configuration_is_validated():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="unknown negative kinds"):
        DatasetConfig(negatives={"asteroid": 1.0})
    with pytest.raises(ValidationError, match="rate_max"):
        DatasetConfig(rate_min=10.0, rate_max=1.0)
    with pytest.raises(ValidationError, match="orbit file"):
        DatasetConfig(tracks="orbits")


torch_required = pytest.mark.skipif(__import__("importlib").util.find_spec("torch") is None,
                                    reason="PyTorch ([ml] extra) not installed")


@torch_required
def test_shipped_model_separates_movers_from_hard_negatives_on_unseen_frames(sim_frames):
    """The built-in model on a field it never saw (seed 5, 512^2, 0.5-80"/h): measured accuracy and ROC AUC."""
    from ssodetect.ml.model import encode, load_model, score
    from ssodetect.ml.train import evaluate

    frames, sources = sim_frames
    cfg = DatasetConfig(n_sequences=400, rate_min=0.5, rate_max=15.0, snr_min=12.0, snr_max=100.0, seed=9)
    seqs, meta = build_dataset(frames, cfg, sources=sources)
    model, record = load_model("builtin")
    assert record["arch"]["frames"] == 4 and record["arch"]["mode"] == "track"
    scores = score(model, encode(seqs.images, seqs.masks, meta["trail"], meta["sigma"], meta["stretch"]))
    ev = evaluate(meta, scores, record["threshold"])
    assert ev["overall"]["auc"] > 0.99
    assert ev["overall"]["accuracy"] > 0.95
    by_kind = {r["kind"]: r["accuracy"] for r in ev["by_kind"]}
    assert by_kind["mover"] > 0.95 and by_kind["cosmic"] > 0.95 and by_kind["transient"] > 0.95


@torch_required
def test_training_learns_checkpoints_and_resumes(sim_frames, tmp_path):
    from ssodetect.ml.model import load_model
    from ssodetect.ml.train import train

    frames, sources = sim_frames
    cfg = DatasetConfig(n_sequences=300, rate_min=1.0, rate_max=10.0, snr_min=30.0, snr_max=100.0, seed=2,
                        negatives={"empty": 1.0, "transient": 1.0, "cosmic": 1.0})
    write_dataset(tmp_path / "ds", [build_dataset(frames, cfg, sources=sources)], cfg, {})
    first = train([tmp_path / "ds"], tmp_path / "m", epochs=1, batch=32, seed=1, progress=False)
    assert (tmp_path / "m" / "checkpoint.pt").is_file()
    result = train([tmp_path / "ds"], tmp_path / "m", epochs=4, batch=32, seed=1, progress=False)  # resumes epoch 1
    history = result["record"]["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[0] == first["record"]["history"][0]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert result["overall"]["auc"] > 0.9  # bright movers against transients and cosmic rays, 45 held apart
    model, record = load_model(tmp_path / "m" / "model.pt")
    assert record["training"]["n_validation"] == 45
    with pytest.raises(InputError, match="not an ssodetect model"):
        (tmp_path / "bad.pt").write_bytes(b"not a model")
        load_model(tmp_path / "bad.pt")
    # a checkpoint someone else wrote into MODEL_DIR is refused, never unpickled as code (the fault campaign's B34)
    import pickle

    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "m" / "checkpoint.pt").write_bytes(pickle.dumps({"model": Evil()}))
    with pytest.raises(InputError, match="checkpoint.pt"):  # not the checkpoint ssodetect wrote there
        train([tmp_path / "ds"], tmp_path / "m", epochs=5, batch=32, seed=1, progress=False)
    assert not marker.exists()
    # (one whose record was forged along with it would still be loaded with weights only)
    from ssodetect.io.outputs import record_files

    record_files(tmp_path / "m", ["checkpoint.pt"])
    with pytest.raises(InputError, match="not a training checkpoint"):
        train([tmp_path / "ds"], tmp_path / "m", epochs=5, batch=32, seed=1, progress=False)
    assert not marker.exists()


@torch_required
def test_vetting_stage_keeps_real_movers_and_rejects_false_tracks(tmp_path):
    """``[ml] enabled = true`` in a run scores every object; tracks off any mover score low, real ones high."""
    from astropy.table import vstack

    from ssodetect.cli import main
    from ssodetect.config import load_config
    from ssodetect.evaluate import evaluate_run
    from ssodetect.pipeline.ccd import subtracted_image
    from ssodetect.pipeline.ml import vet_objects
    from ssodetect.pipeline.run import run_pipeline, wcs_lookup
    from ssodetect.simulate import simulate

    sim, out, toml = tmp_path / "sim", tmp_path / "out", tmp_path / "ml.toml"
    simulate(SimulationConfig(seed=31, nx=640, ny=640, movers_per_ccd=600, mover_mag_min=21.0, mover_mag_max=25.5,
                              satellite=False), sim)
    toml.write_text("[ml]\nenabled = true\n" + _REPORT)
    assert main(["run", str(sim), "--out", str(out), "--config", str(toml), "-q"]) == 0
    vetting, objects = Table.read(out / "vetting.ecsv"), Table.read(out / "objects.ecsv")
    assert len(vetting) >= 15 and np.all(np.isfinite(vetting["ml_score"]))
    assert np.array_equal(vetting["kept"], vetting["ml_score"] >= 0.5)
    assert set(objects["object"]) == set(vetting["object"][vetting["kept"]]) and "ml_score" in objects.colnames
    # a finished run's objects scored again from its outputs: the same scores
    assert main(["ml", "predict", str(out), "--out", str(tmp_path / "again.ecsv"), "-q"]) == 0
    again = Table.read(tmp_path / "again.ecsv")
    kept = np.isin(vetting["object"], again["object"])
    assert kept.sum() == len(objects) and np.allclose(again["ml_score"], vetting["ml_score"][kept], atol=1e-5)
    # the same run without vetting, then its objects scored together with false tracks: each object moved by
    # up to 20" and its motion turned by 90 degrees
    config = load_config(toml)
    config.execution.progress = False
    config.ml.enabled = False
    result = run_pipeline([sim], None, config)
    real, obs = result.objects, result.observations
    rng = np.random.default_rng(0)
    fake, fake_obs = real.copy(), obs.copy()
    fake["object"] = ["F" + str(n)[1:] for n in fake["object"]]
    fake_obs["object"] = ["F" + str(n)[1:] for n in fake_obs["object"]]
    fake["ra"] = fake["ra"] + rng.uniform(-20, 20, len(fake)) / 3600.0
    fake["dec"] = fake["dec"] + rng.uniform(-20, 20, len(fake)) / 3600.0
    fake["v_ra"], fake["v_dec"] = -np.asarray(fake["v_dec"]), np.asarray(fake["v_ra"])
    _, _, scored = vet_objects(vstack([obs, fake_obs]), vstack([real, fake]), result.exposures, result.ccd_info,
                               wcs_lookup(result), lambda ref: subtracted_image(ref, config, with_noise=True),
                               config, {})
    names = np.asarray(scored["object"]).astype(str)
    is_fake = np.char.startswith(names, "F")
    assert np.mean(scored["ml_score"][is_fake] < 0.5) > 0.9
    true_names = list(evaluate_run(obs, truth := Table.read(sim / "truth.ecsv"), rate_range=(0.5, 80.0)).assigned)
    assert len(truth) and len(true_names) >= 15
    assert np.mean(scored["ml_score"][np.isin(names, true_names)] >= 0.5) > 0.95


@torch_required
def test_ml_commands_dataset_train_predict_and_bad_input(tmp_path, capsys):
    from ssodetect.cli import main
    from ssodetect.simulate import simulate

    sim = tmp_path / "sim"
    simulate(SimulationConfig(seed=8, nx=512, ny=512, movers_per_ccd=0.0, satellite=False), sim)
    before = {p: p.stat().st_mtime_ns for p in sim.iterdir()}
    ds = tmp_path / "ds"
    assert main(["ml", "dataset", str(sim), "--out", str(ds), "-n", "160", "--rate-max", "20", "--seed", "3", "-q"]) == 0
    assert {p: p.stat().st_mtime_ns for p in sim.iterdir()} == before  # inputs untouched
    images, masks, meta, doc = load_dataset(ds)
    assert images.shape == (160, 4, 32, 32) and doc["config"]["rate_max"] == 20.0
    assert len(doc["parts"][0]["frames"]) == 4 and all(abs(f - 1.7) < 0.11 for f in doc["parts"][0]["fwhm"])
    assert main(["ml", "train", str(ds), "--out", str(tmp_path / "m"), "--epochs", "1", "--batch", "32", "-q"]) == 0
    assert (tmp_path / "m" / "model.pt").is_file() and (tmp_path / "m" / "validation_by_rate.ecsv").is_file()
    capsys.readouterr()
    # campaign 32: --val-fraction 0.001 validated (and chose the threshold) on 1 sequence; now on one of each kind,
    # said to be noisy (exit 1: done, with a warning; campaign 34)
    assert main(["ml", "train", str(ds), "--out", str(tmp_path / "m1"), "--val-fraction", "0.001", "--epochs", "1",
                 "--batch", "32", "-q"]) == 1
    said = capsys.readouterr().err.splitlines()
    assert len(said) == 1 and "validation on 1 movers and 1 negatives" in said[0], said
    assert json.loads((tmp_path / "m1" / "metrics.json").read_text())["n_validation"] == 2
    assert main(["ml", "predict", str(ds), "--out", str(tmp_path / "scores.ecsv"), "-q"]) == 0
    text = capsys.readouterr().out
    assert "160 sequences scored" in text and "ROC AUC" in text
    scores = Table.read(tmp_path / "scores.ecsv")
    assert len(scores) == 160 and np.all((scores["ml_score"] >= 0) & (scores["ml_score"] <= 1))
    # chosen positions are used in turn
    pos = tmp_path / "pos.csv"
    pos.write_text("ra,dec\n" + "".join(f"{float(meta['ra'][k])!r},{float(meta['dec'][k])!r}\n" for k in (0, 1)))
    assert main(["ml", "dataset", str(sim), "--out", str(tmp_path / "chosen"), "-n", "6", "--positions", str(pos),
                 "-q"]) == 0
    chosen = load_dataset(tmp_path / "chosen")[2]
    assert np.allclose(chosen["ra"], np.tile(meta["ra"][:2], 3)) and np.allclose(chosen["dec"], np.tile(meta["dec"][:2], 3))
    # bad input: one line naming the file, exit status 2, nothing written
    for argv, needle in (
        (["ml", "predict", str(tmp_path / "nope")], "not a dataset directory"),
        (["ml", "predict", str(ds), "--model", str(sim / "truth.ecsv")], "not an ssodetect model"),
        (["ml", "dataset", str(sim), "--out", str(tmp_path / "bad"), "--rate-min", "5", "--rate-max", "1"], "rate_max"),
        (["ml", "dataset", str(sim), "--out", str(tmp_path / "bad"), "--positions", str(sim / "exp_00.fits")],
         "exp_00.fits: unreadable positions table"),
        # a learning rate that makes the weights NaN, or the loss huge (10: the largest taken): said, not saved as a
        # model (exit 0 before)
        (["ml", "train", str(ds), "--out", str(tmp_path / "div"), "--epochs", "1", "--batch", "32", "--lr", "10"],
         "diverged in epoch 1"),
        (["ml", "train", str(ds), "--out", str(tmp_path / "div"), "--epochs", "1", "--batch", "32", "--lr", "3"],
         "diverged in epoch 1"),
        # a resumed training keeps the rate it started with: another --lr is refused, not silently ignored
        (["ml", "train", str(ds), "--out", str(tmp_path / "m"), "--epochs", "2", "--batch", "32", "--lr", "1e-5"],
         "started with --lr 0.002"),
    ):
        assert main(argv + ["-q"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0]
    assert not (tmp_path / "div").exists()  # (nor the folder it had made)
    assert not (tmp_path / "bad").exists()
    # fault campaign 14: a training directory with a user's file, the dataset itself, a checkpoint of other data,
    # no epochs: refused, nothing written
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "metrics.json").write_text("mine")
    small = tmp_path / "small"
    assert main(["ml", "dataset", str(sim), "--out", str(small), "-n", "40", "--seed", "4", "-q"]) == 0
    capsys.readouterr()
    for argv, needle in (
        (["ml", "train", str(ds), "--out", str(mine), "--epochs", "1"], "holds files ssodetect did not write"),
        (["ml", "train", str(ds), "--out", str(ds), "--epochs", "1"], "holds the training's dataset"),
        (["ml", "train", str(ds), "--out", str(ds / "model"), "--epochs", "1"], "inside the dataset"),
        (["ml", "train", str(small), "--out", str(tmp_path / "m"), "--epochs", "2", "--batch", "32"],
         "started on other data"),
        (["ml", "train", str(ds), "--out", str(tmp_path / "m0"), "--epochs", "0"], "epochs = 0 is out of range"),
    ):
        assert main(argv + ["-q"]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
    assert (mine / "metrics.json").read_text() == "mine" and sorted(p.name for p in mine.iterdir()) == ["metrics.json"]
    assert not (ds / "model").exists() and not (ds / "model.pt").exists() and not (tmp_path / "m0").exists()
    # the datasets' order sets the validation split: resumed in another order, refused; a training directory of an
    # earlier version (no record of ours) is resumed from its checkpoint
    two = tmp_path / "two"
    assert main(["ml", "train", str(ds), str(small), "--out", str(two), "--epochs", "1", "--batch", "32", "-q"]) == 0
    capsys.readouterr()
    assert main(["ml", "train", str(small), str(ds), "--out", str(two), "--epochs", "2", "--batch", "32", "-q"]) == 2
    assert "started on other data" in capsys.readouterr().err
    (two / ".ssodetect-products.json").unlink()
    assert main(["ml", "train", str(ds), str(small), "--out", str(two), "--epochs", "2", "--batch", "32", "-q"]) == 0
    assert [h["epoch"] for h in json.loads((two / "metrics.json").read_text())["history"]] == [1, 2]
    # fault campaign 15: a dataset written over a trained model's folder (its model gone) or inside its scene, a
    # model written among another dataset's shards, a dataset given twice, a resume with fewer epochs than done
    capsys.readouterr()
    for argv, needle in (
        (["ml", "dataset", str(sim), "--out", str(two), "-n", "40"], "holds a trained model"),
        (["ml", "dataset", str(sim), "--out", str(sim / "ds"), "-n", "40"], "inside the input"),
        (["ml", "train", str(ds), "--out", str(small), "--epochs", "1"], "a dataset (dataset.json)"),
        (["ml", "train", str(ds), str(ds), "--out", str(tmp_path / "twice"), "--epochs", "1"], "a dataset given twice"),
        (["ml", "train", str(ds), str(small), "--out", str(two), "--epochs", "1"], "2 epochs are done already"),
    ):
        assert main(argv + ["-q"]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
    assert (two / "model.pt").is_file() and not (sim / "ds").exists() and not (small / "model.pt").exists()


def test_dataset_movers_follow_ephemerides_of_real_orbits(sim_frames, tmp_path):
    from ssodetect.known.orbits import orbits_table, write_sbdb

    rng = np.random.default_rng(1)
    a = rng.uniform(2.2, 3.2, 300)
    e = rng.uniform(0.05, 0.2, 300)
    rows = [dict(designation=f"T{k}", q=a[k] * (1 - e[k]), e=e[k], i=rng.uniform(12, 30), node=0.0, peri=0.0,
                 M=rng.uniform(0, 360), epoch=61120.0, H=15.0, G=0.15) for k in range(300)]
    write_sbdb(orbits_table(rows), tmp_path / "orbits.json")
    frames, sources = sim_frames
    cfg = DatasetConfig(n_sequences=40, positive_fraction=1.0, tracks="orbits", orbits=str(tmp_path / "orbits.json"),
                        snr_min=40.0, snr_max=80.0, seed=3, partial_fraction=0.0)
    seqs, meta = build_dataset(frames, cfg, sources=sources)
    assert np.all(meta["kind"] == "mover")
    assert np.all((meta["rate"] > 3.0) & (meta["rate"] < 100.0))  # main-belt motions, not the drawn ones
    centre = seqs.images[:, :, 14:18, 14:18].sum(axis=(2, 3))
    seen = (centre > 10.0) | seqs.masks[:, :, 16, 16]
    assert np.mean(seen.all(axis=1)) > 0.9  # on the grid centre wherever the frame covers the track


@torch_required
def test_sky_mode_dataset_of_a_longer_sequence_feeds_the_network():
    """LSST-like set-up: six frames, fixed sky grid; movers cross it at their rate; the network takes any length."""
    from ssodetect.ml.model import MoverNet, encode

    frames = _blank_frames(n=6, shape=(200, 200), seed=7)
    sources = Table({"ra": np.zeros(0), "dec": np.zeros(0), "kind": np.zeros(0, "U8")})
    cfg = DatasetConfig(n_sequences=60, mode="sky", rate_min=1.0, rate_max=2.0, snr_min=200.0, snr_max=300.0,
                        seed=1, order=1, partial_fraction=0.0)
    seqs, meta = build_dataset(frames, cfg, sources=sources)
    assert seqs.images.shape == (60, 6, 32, 32) and not {"star", "galaxy"} & set(meta["kind"])
    movers = np.nonzero(np.asarray(meta["kind"]) == "mover")[0]
    for k in movers:
        peaks = np.array([np.unravel_index(np.argmax(seqs.images[k, i]), (32, 32)) for i in range(6)], float)
        step = np.hypot(*np.diff(peaks, axis=0).T).mean()  # px per 1100 s
        assert abs(step - meta["rate"][k] * 1100.0 / 3600.0 / 0.1) < 1.5
    x = encode(seqs.images, seqs.masks, meta["trail"], meta["sigma"], meta["stretch"], mode="sky")
    import torch

    net = MoverNet()
    net.eval()
    with torch.inference_mode():
        assert net(torch.from_numpy(x)).shape == (60, 1)
