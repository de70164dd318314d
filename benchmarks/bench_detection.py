"""Detection speed on one 4096^2 Euclid-like CCD: ssodetect versus SourceExtractor (run on demand).

    python benchmarks/bench_detection.py [--size 4096] [--seed 1]

Simulates one exposure of one CCD (cosmic rays included), writes it as a plain FITS file
with a weight (RMS) map, then times on the same machine, one run each:
  * ssodetect's per-CCD step (read, background, cosmic-ray pixel mask, matched-filter extraction,
    measurement, shape classification, sky coordinates);
  * SourceExtractor (Debian package ``source-extractor``) with a Gaussian filter of the PSF
    size, threshold 1.5 sigma per pixel over 3 pixels (about its usual faint setting), RMS weight map.
Reports both wall times, their ratio, and the detection counts.  SourceExtractor missing: says so.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

from ssodetect.config import Config
from ssodetect.io import find_inputs, group_exposures, scan_inputs
from ssodetect.pipeline.ccd import process_ccd
from ssodetect.simulate import SimulationConfig
from ssodetect.simulate.scene import _primary_header, draw_scene, render_ccd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        scene = draw_scene(SimulationConfig(seed=args.seed, nx=args.size, ny=args.size, n_exposures=3))
        for e in range(3):
            sci, rms, flg, wcs, _ = render_ccd(scene, e, 0)
            h = _primary_header(scene, e)
            h.extend(wcs.to_header())
            fits.PrimaryHDU(sci, header=h).writeto(tmp / f"exp{e}.fits")
            if e == 0:
                fits.PrimaryHDU(rms).writeto(tmp / "rms0.fits")
        config = Config()
        refs = scan_inputs(find_inputs([tmp / "exp0.fits", tmp / "exp1.fits", tmp / "exp2.fits"]), config.io)
        ref = group_exposures(refs, config.io)[0].ccds[0]
        process_ccd(ref, config)  # compile the numba kernels (cached afterwards)
        t0 = time.perf_counter()
        table, info = process_ccd(ref, config)
        t_sso = time.perf_counter() - t0
        print(f"ssodetect per-CCD step on {args.size}x{args.size}: {t_sso:.2f} s, {info['n_raw']} raw detections, "
              f"{len(table)} measured ({info.get('n_point', 0)} point, {info.get('n_trail', 0)} trail, "
              f"{info.get('n_sharp', 0)} sharp), sharp-pixel fraction {info['sharp_pixel_fraction']:.4f}")
        sex = shutil.which("source-extractor") or shutil.which("sex")
        if sex is None:
            print("SourceExtractor not installed (apt-get install -y source-extractor): no comparison")
            return
        conv = tmp / "gauss.conv"
        sigma = info["psf_sigma"]
        r = np.arange(-3, 4)
        g = np.exp(-0.5 * (r[:, None] ** 2 + r[None, :] ** 2) / sigma**2)
        conv.write_text("CONV NORM\n" + "\n".join(" ".join(f"{v:.5f}" for v in row) for row in g) + "\n")
        params = tmp / "default.param"
        params.write_text("NUMBER\nX_IMAGE\nY_IMAGE\nXWIN_IMAGE\nYWIN_IMAGE\nFLUX_AUTO\nFLUXERR_AUTO\nFLAGS\n")
        cmd = [
            sex, str(tmp / "exp0.fits"), "-c", "/dev/null", "-CATALOG_NAME", str(tmp / "sex.cat"),
            "-CATALOG_TYPE", "FITS_LDAC", "-PARAMETERS_NAME", str(params), "-FILTER", "Y",
            "-FILTER_NAME", str(conv), "-DETECT_THRESH", "1.5", "-ANALYSIS_THRESH", "1.5", "-DETECT_MINAREA", "3",
            "-WEIGHT_TYPE", "MAP_RMS", "-WEIGHT_IMAGE", str(tmp / "rms0.fits"), "-GAIN", "3.5",
            "-BACK_SIZE", "64", "-VERBOSE_TYPE", "QUIET", "-CHECKIMAGE_TYPE", "NONE",
        ]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        t_sex = time.perf_counter() - t0
        n_sex = len(fits.getdata(tmp / "sex.cat", 2))
        print(f"SourceExtractor on the same frame: {t_sex:.2f} s, {n_sex} detections")
        print(f"ratio ssodetect / SourceExtractor: {t_sso / t_sex:.2f}")


if __name__ == "__main__":
    main()
