"""The launch form's settings, generated from the configuration's JSON Schema (``ssodetect config --schema``).

Every section of the configuration is a group of fields: a check box for a boolean, a choice for an enumeration,
a number or text box otherwise, a comma-separated list for an array; each shows its default and description.
What the user changes is laid over the configuration file chosen (or the defaults), validated by the same model
(:class:`ssodetect.config.Config`) and written as the run's configuration file; a value the schema refuses is a
one-line error naming the setting, and nothing is queued.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from ssodetect.config import REACHING_SETTINGS, Config, dump_toml, load_config
from ssodetect.profiles import builtin_profiles

__all__ = ["Setting", "settings_from_schema", "form_overrides", "settings_file", "FIELD_PREFIX", "OFF_THE_FORM",
           "TEXT_ON_THE_FORM"]

#: Name prefix of the settings' form fields: ``cfg.<section>.<key>``.
FIELD_PREFIX = "cfg."

#: Settings the launch form never shows nor takes: they name a command, a network address or a file, and would reach
#: outside the console's root (the files the form does take, inputs, catalogue, configuration and orbits, are confined
#: to it).  An ``[alerts] command`` set on the form had run a shell command as the console's user (fault campaign 20).
#: They stay with the configuration file chosen on the form.
OFF_THE_FORM = REACHING_SETTINGS

#: Settings whose text the form takes as it is (names, keywords, report fields): every other text setting of the
#: configuration is in :data:`OFF_THE_FORM` (a test keeps the two lists whole).
TEXT_ON_THE_FORM = frozenset({
    "io.time_keys", "io.exptime_keys", "io.gain_keys", "io.saturation_keys", "io.filter_keys", "io.obs_id_keys",
    "io.instrument_keys", "io.zeropoint_keys", "io.zeropoint_total_keys", "io.observer_position_keys",
    "io.tracking_rate_keys", "io.frame_type_keys", "io.detector_keys", "report.station", "report.observatory_name",
    "report.submitter", "report.institution", "report.observers", "report.measurers", "report.telescope_name",
    "report.telescope_design", "report.telescope_detector", "report.funding_source", "report.comment", "report.mode",
    "report.astcat", "report.header_astcat", "report.photcat", "report.band",
})


@dataclass(frozen=True)
class Setting:
    """One configurable value: where it lives, its kind (bool, int, float, str, enum, list-str, list-float), its
    default as the form shows it, its choices and description."""

    section: str
    key: str
    kind: str
    default: str
    description: str = ""
    choices: tuple = ()
    checked: bool = False  # a boolean's default

    @property
    def name(self) -> str:
        return f"{FIELD_PREFIX}{self.section}.{self.key}"


@dataclass
class Section:
    name: str
    title: str
    settings: list = field(default_factory=list)


def _shown(value) -> str:
    if isinstance(value, list):
        return ", ".join(_shown(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def settings_from_schema(schema: dict | None = None) -> list[Section]:
    """The form's sections from the configuration's JSON Schema (default: :class:`Config`'s own)."""
    schema = schema or Config.model_json_schema()
    defs = schema.get("$defs", {})
    sections = []
    for name, prop in schema.get("properties", {}).items():
        ref = prop.get("$ref", "")
        body = defs.get(ref.rsplit("/", 1)[-1], {}) if ref else prop
        section = Section(name, (body.get("description") or body.get("title") or name).strip().splitlines()[0])
        for key, p in body.get("properties", {}).items():
            kind = p.get("type")
            if "enum" in p:
                kind = "enum"
            elif kind == "array":
                item = p.get("items", {}).get("type")
                if item not in ("string", "number", "integer"):
                    continue
                kind = "list-str" if item == "string" else "list-float"
            elif kind in ("boolean", "integer", "number", "string"):
                kind = {"boolean": "bool", "integer": "int", "number": "float", "string": "str"}[kind]
            else:
                continue  # objects and unions stay with the configuration file
            if f"{name}.{key}" in OFF_THE_FORM:
                continue
            default = p.get("default")
            choices = tuple(p.get("enum", ()))
            if (name, key) == ("profile", "name"):  # the built-in profiles by name (a profile file: in the config file)
                kind, choices = "enum", ("auto", "none", *builtin_profiles())
            section.settings.append(Setting(name, key, kind, _shown(default), str(p.get("description", "")),
                                            choices, bool(default) if kind == "bool" else False))
        if section.settings:
            sections.append(section)
    return sections


def _parse(setting: Setting, text: str):
    label = f"{setting.section}.{setting.key}"
    try:
        if setting.kind == "int":
            value = int(text)
        elif setting.kind == "float":
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
        elif setting.kind == "list-float":
            value = [float(v) for v in text.split(",") if v.strip()]
            if not all(math.isfinite(v) for v in value):
                raise ValueError
        elif setting.kind == "list-str":
            value = [v.strip() for v in text.split(",") if v.strip()]
        elif setting.kind == "enum":
            if text not in setting.choices:
                raise ValueError
            value = text
        else:
            value = text
    except ValueError:
        what = {"int": "a whole number", "float": "a finite number", "list-float": "finite numbers separated by commas",
                "enum": "one of " + ", ".join(map(str, setting.choices))}.get(setting.kind, "text")
        raise ValueError(f"{label} = {text[:40]!r}: {what} expected") from None
    return value


def form_overrides(sections: list[Section], form) -> dict:
    """``{section: {key: value}}`` of the settings the form changes from their defaults.

    ``form`` maps field names to strings (a boolean's check box sends ``on``; its hidden twin ``<name>.shown``
    says the box was on the page, so an unticked box means false).  ValueError names a value that cannot be
    read as its kind, or a ``cfg.`` field that is no setting of the form (a misspelt ``cfg.link.max_rte`` had been
    dropped without a word, campaign 34)."""
    known = {s.name for section in sections for s in section.settings}
    for name in form:
        name = str(name)
        if name.startswith(FIELD_PREFIX) and name.removesuffix(".shown") not in known:
            key = name.removeprefix(FIELD_PREFIX).removesuffix(".shown")
            if key in OFF_THE_FORM:  # (a command, an address or a file: never taken from a web form)
                raise ValueError(f"{key}: kept off the form (a command, address or file); set it in a configuration "
                                 "file on the console's machine")
            raise ValueError(f"{key[:80]!r}: no setting of this form (unknown key)")
    out: dict = {}
    for section in sections:
        for s in section.settings:
            if s.kind == "bool":
                if f"{s.name}.shown" not in form:
                    continue
                value = str(form.get(s.name, "")) == "on"
                if value != s.checked:
                    out.setdefault(s.section, {})[s.key] = value
                continue
            text = str(form.get(s.name, "")).strip()
            if text == "" or text == s.default:
                continue
            if len(text) > 4096:
                raise ValueError(f"{s.section}.{s.key}: longer than 4096 characters")
            out.setdefault(s.section, {})[s.key] = _parse(s, text)
    return out


def settings_file(base: Path | None, overrides: dict, dest: Path) -> Config:
    """The configuration of ``base`` (a TOML file; None: the defaults) with ``overrides`` laid over it, validated
    and written to ``dest`` (TOML).  ValueError names the first setting the model refuses."""
    config = load_config(base) if base is not None else Config()  # refused here (ConfigError names the key)
    # only what the file and the form set: the rest stays with the defaults and the instrument profile
    data = {name: json.loads(getattr(config, name).model_dump_json(include=getattr(config, name).model_fields_set))
            for name in type(config).model_fields}
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    try:
        merged = Config.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ()))
        raise ValueError(f"{where}: {err.get('msg', 'refused').removeprefix('Value error, ')}") from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(dump_toml(merged, documented=False, only_set=True))
    return merged
