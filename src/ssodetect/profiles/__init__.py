"""Instrument profiles: settings chosen from the frames' headers, so that real nights work with the defaults.

A profile is a TOML file with four tables:

``[profile]``
    ``description``: one line for the log and the manifest.
``[match]``
    When the automatic choice picks it, from the first light frame's header and the sequence:
    ``telescope`` / ``instrument`` (``TELESCOP`` / ``INSTRUME`` contain one of these words,
    case-insensitive), ``min_pixel_scale`` / ``max_pixel_scale`` [arcsec/px], ``min_exposures``,
    ``observer`` (``"ground"`` or ``"space"``).  A profile matched by name outranks one matched by
    numbers only; two matches of the same rank are an error naming the file and both profiles.
``[settings.<section>]``
    Configuration values, as in a configuration file (sections ``io``, ``execution`` and ``profile``
    excluded: they are needed before a profile can be chosen).
``[scale]``
    Settings that follow the sequence: ``min_detections_fraction`` and ``min_detections_range``
    (``link.min_detections = ceil(fraction * exposures)``, within the range and at most the number of
    exposures), ``long_sequence`` and ``fast_min_exposures_long`` (``streaks.min_exposures`` in
    sequences of at least that many exposures).

Every profile also caps ``link.max_rate`` at the rate that keeps an object on the detector for
``link.min_detections`` exposures (the field's shorter side over that time): faster hypotheses
could never be linked.

Precedence: the package defaults < the profile < the user's configuration file < command-line flags.
A setting the user gave (in the file or by a flag) is never changed by a profile.  Built-in profiles
live in this package (:func:`builtin_profiles`); ``[profile] name`` (or ``--profile``) names one, a
TOML file, ``auto`` (the default) or ``none``.  Extra profiles for the automatic choice are read from
the directories in the ``SSODETECT_PROFILE_PATH`` environment variable (``os.pathsep``-separated).
"""
from __future__ import annotations

import logging
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from pydantic import ValidationError

from ssodetect.astrometry.register import nominal_pixel_scale
from ssodetect.astrometry.solve import pixel_scale
from ssodetect.config import REACHING_SETTINGS, Config, validation_problems
from ssodetect.errors import ConfigError, InputError
from ssodetect.io import celestial_wcs, group_exposures, scan_inputs
from ssodetect.safejson import read_regular

log = logging.getLogger(__name__)

__all__ = ["Profile", "SequenceFacts", "builtin_profiles", "load_profile", "sequence_facts", "choose_profile",
           "apply_profile", "named_profile", "resolve_profile", "SPACECRAFT_NAMES"]

#: Words in ``TELESCOP`` that name a spacecraft (the frame's observer is in space).
SPACECRAFT_NAMES = ("EUCLID", "NEOSSAT", "WISE", "NEOWISE", "HST", "HUBBLE", "JWST", "SPITZER", "GAIA", "TESS",
                    "KEPLER", "CHEOPS", "SOHO", "CASSINI", "ROMAN")

_PROFILE_DIR = Path(__file__).resolve().parent
_MATCH_KEYS = {"telescope", "instrument", "min_pixel_scale", "max_pixel_scale", "min_exposures", "observer"}
_SCALE_KEYS = {"min_detections_fraction", "min_detections_range", "long_sequence", "fast_min_exposures_long"}
_FORBIDDEN = {"io", "execution", "profile"}


@dataclass
class Profile:
    """One instrument profile read from its TOML file (see the module's documentation); ``ref``: the path a
    profile given as a file is named by in the saved configuration."""

    name: str
    path: Path
    description: str = ""
    match: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    scale: dict = field(default_factory=dict)
    ref: str = ""  # how ``[profile] name`` names it again when not by its name (a file given by its path)


@dataclass
class SequenceFacts:
    """What the headers say about a run's light frames (from the first one, and from their times).

    ``pixel_scale`` [arcsec/px] is NaN when no header keyword gives it; ``cadence_h`` is the median
    interval between exposures [h]; ``field_arcsec`` the shorter image side [arcsec] (NaN without a scale).
    """

    path: str
    telescope: str
    instrument: str
    pixel_scale: float
    n_exposures: int
    cadence_h: float
    span_h: float
    field_arcsec: float
    space: bool


def builtin_profiles() -> dict[str, Profile]:
    """The profiles installed with the package, by name (``euclid_vis``, ``ground_ccd``, ``small_space``,
    ``wise``)."""
    return {p.stem: load_profile(p) for p in sorted(_PROFILE_DIR.glob("*.toml"))}


def _user_profiles() -> dict[str, Profile]:
    """The profiles in the directories of ``SSODETECT_PROFILE_PATH``; a folder that is missing or no directory is
    said (a warning), a file named like a built-in profile refused (``ConfigError``: a built-in's name must mean one
    profile whether chosen by name or from the headers)."""
    found: dict[str, Profile] = {}
    builtin = {p.stem for p in _PROFILE_DIR.glob("*.toml")}
    for folder in filter(None, os.environ.get("SSODETECT_PROFILE_PATH", "").split(os.pathsep)):
        if not Path(folder).is_dir():
            log.warning("SSODETECT_PROFILE_PATH: %s is %s; no profiles read from it", folder,
                        "no directory" if Path(folder).exists() else "missing")
            continue
        for path in sorted(Path(folder).glob("*.toml")):
            if path.stem in builtin:
                raise ConfigError(f"{path}: a profile file named like the built-in profile {path.stem} (in "
                                  "SSODETECT_PROFILE_PATH); rename it: a built-in's name always means the built-in")
            found[path.stem] = load_profile(path)
    return found


def load_profile(path: str | Path) -> Profile:
    """Read and check a profile file.

    Raises
    ------
    ConfigError
        The file is missing or not TOML, has unknown tables or keys, or settings the
        configuration refuses (checked against :class:`~ssodetect.config.Config`).
    """
    path = Path(path)
    try:
        data = tomllib.loads(read_regular(path).decode("utf-8"))  # a pipe is never opened so as to block
    except FileNotFoundError:
        raise ConfigError(f"{path}: profile file not found") from None
    except ValueError as exc:
        if not isinstance(exc, (tomllib.TOMLDecodeError, UnicodeDecodeError)):
            raise ConfigError(f"{path}: not a regular file (a pipe, device or directory is not a profile)") from None
        raise ConfigError(f"{path}: not a valid profile TOML ({exc})") from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a valid profile TOML ({exc})") from None
    unknown = set(data) - {"profile", "match", "settings", "scale"}
    if unknown:
        raise ConfigError(f"{path}: unknown profile table(s) {', '.join(sorted(unknown))}; "
                          "expected profile, match, settings, scale")
    for label in ("profile", "match", "settings", "scale"):
        if not isinstance(data.get(label, {}), dict):
            raise ConfigError(f"{path}: [{label}] must be a table, not {_kind(data[label])}")
    match, settings, scale = data.get("match", {}), data.get("settings", {}), data.get("scale", {})
    for table, allowed, label in ((match, _MATCH_KEYS, "match"), (scale, _SCALE_KEYS, "scale")):
        if set(table) - allowed:
            raise ConfigError(f"{path}: unknown key(s) in [{label}]: {', '.join(sorted(set(table) - allowed))}")
    not_tables = sorted(section for section, values in settings.items() if not isinstance(values, dict))
    if not_tables:
        raise ConfigError(f"{path}: [settings] holds {', '.join(not_tables)} as a value; each must be a table "
                          "[settings.<section>] of configuration keys")
    if set(data.get("profile", {})) - {"description"}:
        raise ConfigError(f"{path}: unknown key(s) in [profile]: "
                          f"{', '.join(sorted(set(data['profile']) - {'description'}))}; expected description")
    description = data.get("profile", {}).get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{path}: [profile] description must be text, not {_kind(description)}")
    match = _checked_match(path, match)
    _check_scale(path, scale)
    reaching = sorted(f"{section}.{key}" for section, values in settings.items() if isinstance(values, dict)
                      for key in values if f"{section}.{key}" in REACHING_SETTINGS)
    if reaching:  # (a profile matched by its headers had run its [alerts] command)
        raise ConfigError(f"{path}: a profile cannot set {', '.join(reaching)} (a command, an address or a file: "
                          "it would act on any run whose headers match); put it in the configuration file")
    if set(settings) & _FORBIDDEN:
        raise ConfigError(f"{path}: a profile cannot set [{', '.join(sorted(set(settings) & _FORBIDDEN))}] "
                          "(read before a profile is chosen); put it in the configuration file")
    try:
        Config.model_validate(settings)
    except ValidationError as exc:
        problems = validation_problems(exc)
        raise ConfigError(f"{path}: invalid profile settings ({problems})") from None
    return Profile(name=path.stem, path=path, description=description, match=match, settings=settings, scale=scale)


def _kind(value) -> str:
    """How a TOML value is named in an error: ``text "x"``, ``a list``, ``the number 5``, ..."""
    if isinstance(value, bool):
        return f"the logical value {str(value).lower()}"
    if isinstance(value, str):
        return f"text {value[:40]!r}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    return {list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


#: The largest exposure count a profile's ``[match]`` or ``[scale]`` may name.
_MAX_EXPOSURES = 100_000


def _checked_match(path: Path, match: dict) -> dict:
    """``[match]`` with its words as lists of text (one word may be given as text); ConfigError naming ``path`` for
    a value of the wrong kind or out of range."""
    out = dict(match)
    for key in ("telescope", "instrument"):
        if key not in out:
            continue
        words = [out[key]] if isinstance(out[key], str) else out[key]
        if not (isinstance(words, list) and words and all(isinstance(w, str) for w in words)):
            raise ConfigError(f"{path}: [match] {key} must be a word or a list of words (text), not "
                              f"{_kind(out[key])}")
        if not all(w.strip() for w in words):
            raise ConfigError(f"{path}: [match] {key} holds an empty word (it would match nothing)")
        out[key] = words
    for key in ("min_pixel_scale", "max_pixel_scale"):
        if key in out and not (_number(out[key]) and out[key] > 0):
            raise ConfigError(f"{path}: [match] {key} must be a positive number [arcsec/px], not {_kind(out[key])}")
    if out.get("min_pixel_scale", 0.0) > out.get("max_pixel_scale", math.inf):
        raise ConfigError(f"{path}: [match] min_pixel_scale {out['min_pixel_scale']:g} is above max_pixel_scale "
                          f"{out['max_pixel_scale']:g}: the profile could never match")
    if "min_exposures" in out and not _integer(out["min_exposures"], 1, _MAX_EXPOSURES):
        raise ConfigError(f"{path}: [match] min_exposures must be an integer from 1 to {_MAX_EXPOSURES}, not "
                          f"{_kind(out['min_exposures'])}")
    if out.get("observer", "ground") not in ("ground", "space"):
        raise ConfigError(f"{path}: [match] observer must be \"ground\" or \"space\"")
    return out


def _check_scale(path: Path, scale: dict) -> None:
    """ConfigError naming ``path`` for a ``[scale]`` value of the wrong kind or out of range (a NaN fraction or a
    textual count had stopped the run with an internal error)."""
    low_high = scale.get("min_detections_range", [3, 3])
    if (not isinstance(low_high, list) or len(low_high) != 2 or not all(_integer(v, 3, _MAX_EXPOSURES) for v in low_high)
            or not low_high[0] <= low_high[1]):
        raise ConfigError(f"{path}: [scale] min_detections_range must be two integers 3 <= low <= high "
                          f"<= {_MAX_EXPOSURES}")
    fraction = scale.get("min_detections_fraction", 0.5)
    if not (_number(fraction) and 0 < fraction <= 1):
        raise ConfigError(f"{path}: [scale] min_detections_fraction must be a number above 0 and at most 1, not "
                          f"{_kind(fraction)}")
    for key, low in (("long_sequence", 2), ("fast_min_exposures_long", 2)):
        if key in scale and not _integer(scale[key], low, _MAX_EXPOSURES):
            raise ConfigError(f"{path}: [scale] {key} must be an integer from {low} to {_MAX_EXPOSURES}, not "
                              f"{_kind(scale[key])}")


#: Frames whose headers are read, first to last, for a pixel scale when the first gives none.
MAX_SCALE_HEADERS = 20


def _header_scale(header: fits.Header) -> float:
    """Pixel scale [arcsec/px] from the header's WCS (repaired like a frame's), else its plain keywords."""
    shape = (int(header.get("NAXIS2", 0)), int(header.get("NAXIS1", 0)))
    wcs, _ = celestial_wcs(header, shape=shape)
    return pixel_scale(wcs) if wcs is not None else nominal_pixel_scale(header, float("nan"))


def sequence_facts(paths, config: Config) -> SequenceFacts:
    """Read the facts a profile is chosen by from the inputs' headers (nothing is decoded but headers).

    Parameters
    ----------
    paths : list of path
        The run's input files (as :func:`ssodetect.io.find_inputs` returns them).
    config : Config
        Its ``io`` section says how to read the headers.
    """
    refs = [ref for ref in scan_inputs(paths, config.io, warn=False) if ref.frame_type == "light"]
    if not refs:
        raise InputError("no light frame among the inputs (only calibration frames)")
    exposures = group_exposures(refs, config.io, min_exposures=1)
    first = refs[0]
    header = fits.getheader(first.path, first.sci)
    primary = fits.getheader(first.path, 0) if first.sci != 0 else header
    text = {k: str(header.get(k, primary.get(k, ""))).strip() for k in ("TELESCOP", "INSTRUME")}
    scale = _header_scale(header)
    for ref in refs[1:MAX_SCALE_HEADERS]:  # the first frame may lack its WCS (campaign 33: the profile said nan"/px)
        if np.isfinite(scale):
            break
        scale = _header_scale(fits.getheader(ref.path, ref.sci))
    times = np.array([e.mid_time.mjd for e in exposures]) * 24.0
    steps = np.diff(times)
    ny, nx = int(header.get("NAXIS2", 0)), int(header.get("NAXIS1", 0))
    space = first.observer is not None or any(_has_word(text["TELESCOP"], w) for w in SPACECRAFT_NAMES)
    return SequenceFacts(path=str(first.path), telescope=text["TELESCOP"], instrument=text["INSTRUME"],
                         pixel_scale=scale, n_exposures=len(exposures),
                         cadence_h=float(np.median(steps)) if steps.size else 0.0,
                         span_h=float(times[-1] - times[0]) if times.size else 0.0,
                         field_arcsec=min(ny, nx) * scale if ny and nx else float("nan"), space=space)


def _has_word(text: str, word: str) -> bool:
    """``word`` in ``text`` as a whole word (case-insensitive; letters and digits on neither side)."""
    return re.search(r"(?<![0-9A-Z])" + re.escape(word.upper()) + r"(?![0-9A-Z])", text.upper()) is not None


def _matches(profile: Profile, facts: SequenceFacts) -> int:
    """0: no match; 1: matched by numbers; 2: matched by telescope or instrument name."""
    m = profile.match
    if not m:
        return 0
    named = False
    for key, value in (("telescope", facts.telescope), ("instrument", facts.instrument)):
        if key in m:
            if not any(_has_word(value, word) for word in m[key]):
                return 0
            named = True
    scale = facts.pixel_scale
    if "min_pixel_scale" in m and not (np.isfinite(scale) and scale >= m["min_pixel_scale"]):
        return 0
    if "max_pixel_scale" in m and not (np.isfinite(scale) and scale <= m["max_pixel_scale"]):
        return 0
    if facts.n_exposures < m.get("min_exposures", 0):
        return 0
    if "observer" in m and (m["observer"] == "space") != facts.space:
        return 0
    return 2 if named else 1


def choose_profile(facts: SequenceFacts, candidates: dict[str, Profile]) -> tuple[Profile | None, str]:
    """The one candidate whose ``[match]`` fits, preferring a match by name; (None, why) when none fits.

    Raises
    ------
    ConfigError
        Two candidates of the same rank match the header (the message names the file and both).
    """
    ranked = {rank: [p for p in candidates.values() if _matches(p, facts) == rank] for rank in (2, 1)}
    for rank, found in ranked.items():
        if len(found) > 1:
            names = " and ".join(sorted(p.name for p in found))
            raise ConfigError(f"{facts.path}: header matches the profiles {names}; choose one with --profile NAME")
        if found:
            how = "by name" if rank == 2 else "by pixel scale, sequence and observer"
            return found[0], (f"TELESCOP {facts.telescope!r}, INSTRUME {facts.instrument!r}, {_scale_text(facts)}, "
                              f"{facts.n_exposures} exposures: matched {how}")
    return None, (f"TELESCOP {facts.telescope!r}, INSTRUME {facts.instrument!r}, {_scale_text(facts)}, "
                  f"{facts.n_exposures} exposures: no profile matches; the package defaults are used")


def _scale_text(facts: SequenceFacts) -> str:
    if not np.isfinite(facts.pixel_scale):
        return "pixel scale unknown (no header gives it)"
    return f"{facts.pixel_scale:.3g}\"/px"


def apply_profile(config: Config, profile: Profile | None, facts: SequenceFacts) -> tuple[Config, dict]:
    """A copy of ``config`` with the profile's settings and scale rules where the user set nothing.

    The user's settings are those set in ``config`` before the profile (its sections'
    ``model_fields_set``: the configuration file and command-line flags).  Each section is validated
    once with all its new values (a profile's ``min_rate`` and ``max_rate`` together).  The rate cap
    is skipped, with a log line, where it would fall below ``link.min_rate``.

    Returns
    -------
    config : Config
        The resolved configuration (``profile.name`` set to the profile used, or ``none``).
    applied : dict
        ``"section.key" -> value`` of every setting the profile (or a scale rule) changed.

    Raises
    ------
    ConfigError
        The profile's values are refused in combination with the user's (names the profile's file).
    """
    user_set = {name: set(getattr(config, name).model_fields_set) for name in type(config).model_fields}
    changes: dict[str, dict] = {}

    def put(section: str, key: str, value) -> None:
        if key not in user_set[section]:  # the user's own setting wins
            changes.setdefault(section, {})[key] = value

    if profile is not None:
        for section, values in profile.settings.items():
            for key, value in values.items():
                put(section, key, value)
        scale = profile.scale
        n = facts.n_exposures
        if "min_detections_fraction" in scale:
            low, high = scale.get("min_detections_range", [3, 8])
            wanted = math.ceil(scale["min_detections_fraction"] * n)
            put("link", "min_detections", max(3, min(n, high, max(low, wanted))))
        if "long_sequence" in scale and n >= scale["long_sequence"]:
            put("streaks", "min_exposures", int(scale.get("fast_min_exposures_long", 3)))
    link = {**config.link.model_dump(), **changes.get("link", {})}
    if np.isfinite(facts.field_arcsec) and facts.cadence_h > 0:
        reach = float(f"{facts.field_arcsec / (max(link['min_detections'] - 1, 1) * facts.cadence_h):.4g}")
        if reach < link["max_rate"] and "max_rate" not in user_set["link"]:
            if reach > link["min_rate"]:
                put("link", "max_rate", reach)
            else:
                log.info("link.max_rate not capped at %.3g\"/h (an object faster than that leaves the %.0f\" field "
                         "within %d exposures): below link.min_rate %.3g\"/h", reach, facts.field_arcsec,
                         link["min_detections"], link["min_rate"])
    data = config.model_dump()
    applied: dict = {}
    for section, values in changes.items():
        for key, value in values.items():
            if data[section][key] != value:
                applied[f"{section}.{key}"] = value
        data[section].update(values)
    data["profile"]["name"] = "none" if profile is None else (profile.ref or profile.name)
    try:
        resolved = Config.model_validate(data)
    except ValidationError as exc:
        problems = validation_problems(exc)
        where = profile.path if profile is not None else "profile"
        raise ConfigError(f"{where}: its settings are refused with the configuration's ({problems})") from None
    for name in user_set:  # keep what the user set marked as set (a later profile never overrides it)
        getattr(resolved, name).__pydantic_fields_set__.intersection_update(user_set[name])
    return resolved, applied


def named_profile(name: str, builtin: dict[str, Profile] | None = None) -> Profile | None:
    """The profile a name gives (a built-in name, a profile TOML file, a profile on ``SSODETECT_PROFILE_PATH``);
    None for ``auto`` and ``none``.

    Raises
    ------
    ConfigError
        No such profile, or a bad profile file.
    """
    if name in ("auto", "none"):
        return None
    builtin = builtin_profiles() if builtin is None else builtin
    if name in builtin:
        return builtin[name]
    if Path(name).is_dir():
        raise ConfigError(f"profile {name!r}: a directory, not a profile TOML file (directories of profiles go in "
                          "SSODETECT_PROFILE_PATH)")
    if name.endswith(".toml") or Path(name).is_file():
        profile = load_profile(name)
        profile.ref = str(Path(name).resolve())
        return profile
    user = _user_profiles()
    if name not in user:
        raise ConfigError(f"profile {name!r}: no such profile; built-in: {', '.join(builtin)}, "
                          "or a TOML file, auto, none")
    return user[name]


def resolve_profile(config: Config, paths) -> tuple[Config, dict]:
    """Choose and apply the profile of a run (``[profile] name``: auto, none, a built-in name or a TOML file).

    Returns
    -------
    config : Config
        The resolved configuration.
    record : dict
        For the manifest: ``name``, ``path``, ``description``, ``chosen`` (auto | named | none),
        ``reason`` and ``applied`` (the settings it changed).

    Raises
    ------
    ConfigError
        An unknown profile name, a bad profile file, or a header matching two profiles.
    """
    name = config.profile.name
    builtin = builtin_profiles()
    facts = sequence_facts(paths, config)
    if name == "auto":
        profile, reason = choose_profile(facts, {**builtin, **_user_profiles()})
        chosen = "auto"
    elif name == "none":
        profile, reason, chosen = None, "profile 'none': the package defaults", "none"
    else:
        profile = named_profile(name, builtin)
        reason, chosen = "named in the configuration or with --profile", "named"
    resolved, applied = apply_profile(config, profile, facts)
    label = profile.name if profile is not None else "none"
    log.info("profile %s (%s): %s%s", label, chosen, reason,
             "; settings " + ", ".join(f"{k}={v}" for k, v in applied.items()) if applied else "; no setting changed")
    return resolved, {"name": label, "path": str(profile.path) if profile is not None else "",
                      "description": profile.description if profile is not None else "",
                      "chosen": chosen, "reason": reason, "applied": applied}
