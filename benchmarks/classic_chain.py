"""The classic chain the seed pipeline used, on plain FITS frames: SourceExtractor then SCAMP, fully offline.

``source-extractor`` (FITS_LDAC, windowed centroids; the usual star preselection before SCAMP: FLAGS < 4,
FLUX_RADIUS > 0.7 px, ELONGATION < 1.5, S/N > 10) then ``scamp`` with ``ASTREF_CATALOG FILE`` (an LDAC
reference catalogue propagated to the epoch of the frames), ``MATCH_RESOL 1.0``, ``PROJECTION_TYPE TAN``,
``DISTORT_DEGREES 3``, no check plots, one thread.  Shared by the benchmarks that compare with it.
"""
from __future__ import annotations

import resource
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.time import Time

from ssodetect.astrometry.refcat import ldac_reference_table, load_reference_catalogue, propagate
from ssodetect.io.ldac import write_ldac

__all__ = ["classic_tools", "run_classic"]


def classic_tools() -> tuple[str | None, str | None]:
    """Paths of source-extractor (or sex) and scamp, None where missing."""
    return shutil.which("source-extractor") or shutil.which("sex"), shutil.which("scamp")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_classic(files: list[Path], refcat: Path, work: Path, sex: str, scamp: str, *, gain: float = 3.5,
                verbose: str = "QUIET") -> dict:
    """Extract every frame with SourceExtractor and solve them all with SCAMP.

    Returns
    -------
    dict
        ``t_sex``, ``t_scamp`` (wall [s]), ``cpu_sex``, ``cpu_scamp`` (CPU [s] of the child processes),
        ``catalogues`` (LDAC paths, one per frame; SCAMP's ``.head`` files beside them).
    """
    work.mkdir(parents=True, exist_ok=True)
    params = work / "scamp.param"
    params.write_text(
        "NUMBER\nXWIN_IMAGE\nYWIN_IMAGE\nERRAWIN_IMAGE\nERRBWIN_IMAGE\nERRTHETAWIN_IMAGE\n"
        "X_WORLD\nY_WORLD\nFLUX_AUTO\nFLUXERR_AUTO\nMAG_AUTO\nMAGERR_AUTO\nFLAGS\nFLUX_RADIUS\nELONGATION\n"
    )
    conv = work / "gauss.conv"
    r = np.arange(-2, 3)
    g = np.exp(-0.5 * (r[:, None] ** 2 + r[None, :] ** 2) / 0.75**2)
    conv.write_text("CONV NORM\n" + "\n".join(" ".join(f"{v:.5f}" for v in row) for row in g) + "\n")
    cats = []
    t0, c0 = time.perf_counter(), _children_cpu()
    for f in files:
        cat = work / (Path(f).stem + ".cat")
        subprocess.run(
            [sex, str(f), "-c", "/dev/null", "-CATALOG_NAME", str(cat), "-CATALOG_TYPE", "FITS_LDAC",
             "-PARAMETERS_NAME", str(params), "-FILTER", "Y", "-FILTER_NAME", str(conv), "-DETECT_THRESH", "5",
             "-ANALYSIS_THRESH", "5", "-DETECT_MINAREA", "5", "-GAIN", str(gain), "-SATUR_LEVEL", "57000",
             "-BACK_SIZE", "64", "-VERBOSE_TYPE", "QUIET", "-CHECKIMAGE_TYPE", "NONE"],
            check=True,
        )
        with fits.open(cat) as hdul:
            d = hdul[2].data
            keep = (d["FLAGS"] < 4) & (d["FLUX_RADIUS"] > 0.7) & (d["ELONGATION"] < 1.5)
            keep &= d["FLUX_AUTO"] > 10 * d["FLUXERR_AUTO"]
            hdul[2].data = d[keep]
            hdul.writeto(cat, overwrite=True)
        cats.append(cat)
    t_sex, cpu_sex = time.perf_counter() - t0, _children_cpu() - c0
    # reference catalogue at the epoch of the sequence (SCAMP is given no proper motions)
    ref = load_reference_catalogue(refcat)
    epoch = Time(np.mean([fits.getheader(f)["MJD-OBS"] for f in files]), format="mjd", scale="utc")
    ra, dec = propagate(ref, epoch)
    at_epoch = ref.copy()
    at_epoch["ra"], at_epoch["dec"] = ra, dec
    at_epoch["ref_epoch"] = epoch.jyear
    at_epoch["pmra"] = 0.0
    at_epoch["pmdec"] = 0.0
    write_ldac(work / "ref.cat", [(ldac_reference_table(at_epoch), None)])
    t0, c0 = time.perf_counter(), _children_cpu()
    subprocess.run(
        [scamp, *map(str, cats), "-c", "/dev/null", "-ASTREF_CATALOG", "FILE", "-ASTREFCAT_NAME", str(work / "ref.cat"),
         "-ASTREFMAG_KEY", "MAG", "-ASTREFMAGERR_KEY", "MAGERR", "-ASTREFPROP_KEYS", "PMALPHA,PMDELTA",
         "-MATCH_RESOL", "1.0", "-PROJECTION_TYPE", "TAN", "-DISTORT_DEGREES", "3", "-POSITION_MAXERR", "1.5",
         "-POSANGLE_MAXERR", "3.0", "-PIXSCALE_MAXERR", "1.05", "-CROSSID_RADIUS", "1.0", "-SOLVE_PHOTOM", "N",
         "-CHECKPLOT_TYPE", "NONE", "-CHECKPLOT_DEV", "NULL", "-WRITE_XML", "N", "-VERBOSE_TYPE", verbose,
         "-SN_THRESHOLDS", "10,100", "-NTHREADS", "1"],
        check=True, cwd=work,
    )
    return {"t_sex": t_sex, "cpu_sex": cpu_sex, "t_scamp": time.perf_counter() - t0, "cpu_scamp": _children_cpu() - c0,
            "catalogues": cats}
