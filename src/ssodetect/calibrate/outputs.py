"""What ``ssodetect calibrate`` writes: the masters and the calibrated light frames, committed as one directory.

The output directory is replaced as a whole under its lock (never masters of two calls side by side, nothing left
by a failure or an interrupt); one that holds anything but an earlier calibration's products is refused.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from astropy.io import fits

from ssodetect.calibrate.masters import MasterFrames, calibrate_ccd
from ssodetect.config import Config
from ssodetect.errors import InputError, SSODetectError
from ssodetect.io.frames import read_ccd
from ssodetect.io.headers import fits_text
from ssodetect.io.outputs import RECORD, OutputStage, record_files, recorded_files, safe_name

log = logging.getLogger(__name__)

__all__ = ["CALIBRATE_PRODUCTS", "check_calibration_output", "master_folder", "write_calibration"]

#: What ``ssodetect calibrate`` writes into its output directory (besides ``ccd_<name>/`` folders of these).
CALIBRATE_PRODUCTS = ("master_bias.fits", "master_dark.fits", "master_flat.fits", "calibrated")


def check_calibration_output(out: str | Path) -> None:
    """Refuse an output directory that holds anything but an earlier calibration's products (a run, a scene, files
    of the user's): it is replaced as a whole.

    Raises
    ------
    InputError
        Naming the directory and the first such entry.
    """
    out = Path(out)
    if not out.is_dir():
        return
    others = sorted(p.name for p in out.iterdir() if not p.name.startswith(".") and p.name not in CALIBRATE_PRODUCTS
                    and not p.name.startswith("ccd_"))
    if others:
        raise InputError(f"{out}: holds {others[0]}, not a product of ssodetect calibrate (a run, a scene or files of "
                         "yours); calibrate replaces its output directory as a whole, so choose another one")


def _adopt_nested_record(out: Path, folder: str) -> None:
    """The calibrated frames an earlier version wrote into ``out/folder`` under a record of their own (it committed
    them apart from the masters) listed in ``out``'s record, so that they count as ours there: only when that record
    verifies every file in the folder and lists ``.fits`` frames alone (a run or scene kept there stays refused)."""
    inner = out / folder
    if not (inner / RECORD).is_file() or not (out / RECORD).is_file():
        return
    try:
        nested, outer = recorded_files(inner) or set(), recorded_files(out) or set()
    except SSODetectError:
        return  # not signed with this user's key: judged (and refused) where OUT is replaced
    present = {p.relative_to(inner).as_posix() for p in inner.rglob("*") if not p.is_dir() or p.is_symlink()}
    frames = nested - {RECORD}
    if present != nested or not all("/" not in name and name.endswith(".fits") for name in frames):
        return
    adopted = {f"{folder}/{name}" for name in nested} - outer
    if adopted:
        record_files(out, adopted)


def master_folder(ccd: str) -> str:
    """The folder of one CCD's masters when there are several: ``ccd_<name>`` (a name from the headers made safe:
    :func:`~ssodetect.io.outputs.safe_name`)."""
    return f"ccd_{safe_name(ccd)}"


#: Compression and FITS suffixes taken off a light frame's name for its calibrated copy (``x.fits.gz`` ->
#: ``x.fits``).
_SUFFIXES = (".gz", ".bz2", ".fz", ".fits", ".fit", ".fts")


def _light_names(lights: list, masters: dict) -> dict:
    """``(path, hdu) -> file name`` of each light frame's calibrated copy: its name less compression and FITS
    suffixes, ``_<ccd>`` when there are several CCDs, ``.fits``.  Refuses a light whose CCD has no masters and two
    lights that would share a name (``a/x.fits`` and ``b/x.fits``) before anything is written."""
    names: dict = {}
    taken: dict = {}
    for ref in lights:
        if ref.ccd not in masters:
            raise InputError(f"{ref.path}: CCD {ref.ccd} has no bias, dark or flat among the calibration frames "
                             f"(masters for {', '.join(sorted(masters))})")
        stem = Path(ref.path).name
        while stem.lower().endswith(_SUFFIXES):
            stem = stem[: stem.rfind(".")]
        name = f"{stem}_{safe_name(ref.ccd)}.fits" if len(masters) > 1 else f"{stem}.fits"
        if name in taken and taken[name] == ref.path:
            raise InputError(f"{ref.path}: two extensions of CCD {ref.ccd} (their CCD names must differ)")
        if name in taken:
            raise InputError(f"{ref.path}: its calibrated copy would be named {name}, like that of {taken[name]}; "
                             "calibrate frames of different names (or one folder at a time)")
        taken[name] = ref.path
        names[(ref.path, ref.sci)] = name
    return names


def write_calibration(out: str | Path, masters: dict[str, MasterFrames], lights: list, config: Config, *,
                      with_lights: bool = False) -> None:
    """Write ``master_*.fits`` (per CCD in ``ccd_<name>/`` when there are several) and, ``with_lights``, the
    calibrated light frames (``calibrated/``, masked pixels NaN) into ``out``, replacing it as a whole.

    Parameters
    ----------
    out : path
        Output directory (checked with :func:`check_calibration_output` first).
    masters : dict
        CCD name -> :class:`MasterFrames`.
    lights : list of CCDRef
        The light frames.
    config : Config
        ``[calibrate]`` overscan and trim, ``[io]`` reading.
    """
    out = Path(out)
    check_calibration_output(out)
    folders = {master_folder(ccd) for ccd in masters}
    if len(folders) < len(masters):  # (safe_name keeps names apart; a header naming two CCDs alike does not)
        raise InputError(f"{out}: CCD names {sorted(masters)} give the same folder name twice")
    names = _light_names(lights, masters) if with_lights else {}
    if out.is_dir():
        _adopt_nested_record(out, "calibrated")
    with OutputStage(out, replace=True, kind="calibration") as stage:
        ccd_keys = [k for k in config.io.detector_keys if k != "EXTNAME"]  # (none: EXTNAME of an extension)
        for ccd, m in masters.items():  # (the CCD's name in the masters' headers: a run given them finds its lights)
            m.write(stage.path if len(masters) == 1 else stage.path / master_folder(ccd), ccd=ccd, ccd_keys=ccd_keys)
        if with_lights:
            folder = stage.path / "calibrated"
            folder.mkdir()
            for ref in lights:
                image = calibrate_ccd(read_ccd(ref, config.io), masters[ref.ccd], overscan=config.calibrate.overscan,
                                      trim=config.calibrate.trim, saturation_keys=config.io.saturation_keys)
                header = image.header.copy()
                header["HISTORY"] = fits_text(f"ssodetect calibrate: {masters[ref.ccd].describe()}", None)
                data = np.where(image.mask, np.nan, image.data).astype(np.float32)
                fits.PrimaryHDU(data, header).writeto(folder / names[(ref.path, ref.sci)])
    log.info("calibration written to %s: %d CCD(s)%s", out, len(masters),
             f", {len(lights)} light frames" if with_lights else "")
