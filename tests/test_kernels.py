"""Fast kernels against their numpy reference twins, and what they measure."""
import numpy as np

from ssodetect.detect import shape_chi2, shape_chi2_reference
from ssodetect.detect.cosmics import sharp_pixel_mask
from ssodetect.simulate import DoubleGaussianPSF, splat, splat_reference, trail_points


def test_splat_parity_and_flux():
    rng = np.random.default_rng(0)
    psf = DoubleGaussianPSF(fwhm=1.7)
    xs, ys = rng.uniform(-5, 69, 40), rng.uniform(-5, 69, 40)
    fl = rng.uniform(10, 1000, 40)
    a = np.zeros((64, 64))
    b = np.zeros((64, 64))
    splat(a, xs, ys, fl, psf)
    splat_reference(b, xs, ys, fl, psf)
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
    c = np.zeros((64, 64))
    splat(c, [31.3], [30.8], [500.0], psf)
    assert abs(c.sum() - 500.0) < 0.5  # flux conserved well inside the image
    cy, cx = np.unravel_index(np.argmax(c), c.shape)
    assert (cy, cx) == (31, 31)


def _scene(rng):
    psf = DoubleGaussianPSF(fwhm=1.7)
    img = rng.normal(0, 5.0, (120, 120))
    splat(img, [30.2], [30.7], [3000.0], psf)  # star
    xs, ys, fl = trail_points(70.0, 30.0, 80.0, 36.0, 4000.0)  # trail
    splat(img, xs, ys, fl, psf)
    img[90, 30] += 1500.0  # single-pixel hit
    img[90, 70:74] += 600.0  # one-pixel-wide track
    return img


def test_shape_parity_and_classification():
    rng = np.random.default_rng(1)
    img = _scene(rng)
    var = np.full(img.shape, 25.0)
    mask = np.zeros(img.shape, bool)
    xs = np.array([30.2, 75.0, 30.0, 71.5])
    ys = np.array([30.7, 33.0, 90.0, 90.0])
    lengths = np.array([0.0, 11.7, 0.0, 3.0])
    thetas = np.array([0.0, np.arctan2(6, 10), 0.0, 0.0])
    p1, s1, n1 = shape_chi2(img, var, mask, xs, ys, lengths, thetas, 0.75, 3.5)
    p2, s2, n2 = shape_chi2_reference(img, var, mask, xs, ys, lengths, thetas, 0.75, 3.5)
    np.testing.assert_allclose(p1, p2, rtol=1e-9)
    np.testing.assert_allclose(s1, s2, rtol=1e-9)
    np.testing.assert_array_equal(n1, n2)
    delta = p1 - s1  # positive: the sharp model wins
    assert delta[0] < 0 and delta[1] < 0  # star and trail are PSF-like
    assert delta[2] > 100 and delta[3] > 100  # cosmic-ray hits are sharp


def test_sharp_pixel_mask_hits_cosmics_not_sources():
    rng = np.random.default_rng(2)
    img = _scene(rng)
    hits = sharp_pixel_mask(img, np.full(img.shape, 5.0), 0.75)
    assert hits[90, 30] and hits[90, 70:74].all()
    assert not hits[25:37, 25:37].any()  # the star
    assert not hits[25:42, 65:86].any()  # the trail
    assert hits.sum() < 12
