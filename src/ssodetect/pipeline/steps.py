"""The declared step graph of a run, plug-in steps, and the per-step cache that lets runs resume.

A :class:`Step` names the products it reads and writes, the configuration it
depends on and a version.  :func:`pipeline_steps` gives the run's steps in
execution order: the built-in ones (:data:`ssodetect.pipeline.run.BUILTIN_STEPS`)
with any plug-in steps installed under the entry-point group
:data:`ENTRY_POINT_GROUP` put in place of a built-in step of the same name or
after the step they name.

Each step that ran stores what it produced in ``OUT/steps/<name>.pkl`` with a
record ``OUT/steps/<name>.json`` holding the step's *key*: a SHA-256 over
ssodetect's version, the step's name and version, the configuration it reads
and the keys of the steps whose products it reads (the first step's key covers
the input files' checksums).  Each step's log lines also go to
``OUT/logs/<name>.log``.  A
later run into the same directory loads a step whose key is unchanged and whose
stored products still match their checksum, instead of running it.

A pickle can run code when it is loaded, and anyone who can write ``OUT`` can
change both a pickle and its record.  So every stored pickle is signed with an
HMAC-SHA256 under a per-user secret key kept outside the output directory
(:func:`cache_key`: ``$SSODETECT_CACHE_KEY``, else
``$XDG_CONFIG_HOME/ssodetect/cache.key`` or ``~/.config/ssodetect/cache.key``,
created with mode 0600 on first use), and a pickle is unpickled only when its
signature verifies: products written by another user, or edited, are computed
again, never loaded.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import pickle
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable

from ssodetect import safejson
from ssodetect._version import __version__
from ssodetect.config import Config
from ssodetect.errors import ConfigError
from ssodetect.io.outputs import sha256_file
from ssodetect.keys import cache_key, cache_key_path, sign_bytes, sign_file

__all__ = ["ENTRY_POINT_GROUP", "Step", "pipeline_steps", "describe_graph", "config_slice", "step_key", "StepCache",
           "what_changed", "cache_key", "cache_key_path", "sign_file"]

log = logging.getLogger(__name__)

#: Entry-point group of plug-in steps: each entry point loads a :class:`Step` (or a callable returning one).
ENTRY_POINT_GROUP = "ssodetect.steps"


@dataclass(frozen=True)
class Step:
    """One step of the pipeline.

    Attributes
    ----------
    name : str
        Unique name (``--from-step``/``--to-step`` take it).
    run : callable
        ``run(products: dict, config: Config, context) -> dict``: the products it makes (a subset of
        ``outputs``), from the products of earlier steps (a dict, name -> value) and the run's
        :class:`~ssodetect.pipeline.run.StepContext` (inputs, executor, intermediate directory, timings).
    inputs, outputs : tuple of str
        Product names read and written (the graph's edges).
    config : tuple of str
        Configuration the step depends on: section names (``"link"``) or single fields (``"astrometry.blind"``).
    version : str
        Bumped when the step's code changes what it produces (cached products of another version are not used).
    description : str
        One line for ``ssodetect steps``.
    enabled : callable
        ``enabled(config) -> bool``; a disabled step passes its inputs through.
    cache : bool
        Store the products for later runs (False for steps that only write files, or cost less than a load).
    after : str
        For a plug-in adding a new step: the step it runs after.
    origin : str
        ``builtin``, or the distribution that provides a plug-in.
    """

    name: str
    run: Callable
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    config: tuple[str, ...] = ()
    version: str = "1"
    description: str = ""
    enabled: Callable[[Config], bool] = field(default=lambda config: True, compare=False)
    cache: bool = True
    after: str = ""
    origin: str = "builtin"


def _plugins() -> list[Step]:
    found = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
            step = obj() if callable(obj) and not isinstance(obj, Step) else obj
        except Exception as exc:  # a broken plug-in is named, not fatal to the error message's clarity
            raise ConfigError(f"plug-in step {ep.name!r} ({ep.value}) failed to load: {exc}") from None
        if not isinstance(step, Step):
            raise ConfigError(f"plug-in step {ep.name!r} ({ep.value}) is not an ssodetect.pipeline.steps.Step")
        dist = getattr(ep, "dist", None)
        origin = f"plugin {dist.name} {dist.version}" if dist is not None else f"plugin {ep.value}"
        found.append(Step(**{**step.__dict__, "origin": origin}))
    return found


def pipeline_steps(builtin: list[Step], *, plugins: bool = True) -> list[Step]:
    """The run's steps in execution order: ``builtin`` with the installed plug-ins applied.

    A plug-in step named like a built-in one replaces it (same place in the graph);
    another is inserted after the step named by its ``after``.

    Raises
    ------
    ConfigError
        A plug-in that does not load, or that names an unknown step to follow.
    """
    steps = list(builtin)
    for plugin in _plugins() if plugins else []:
        names = [s.name for s in steps]
        if plugin.name in names:
            steps[names.index(plugin.name)] = plugin
            log.info("step %s replaced by %s", plugin.name, plugin.origin)
        elif plugin.after in names:
            steps.insert(names.index(plugin.after) + 1, plugin)
            log.info("step %s (%s) added after %s", plugin.name, plugin.origin, plugin.after)
        else:
            raise ConfigError(f"plug-in step {plugin.name!r} ({plugin.origin}) runs after unknown step "
                              f"{plugin.after!r}; steps: {', '.join(names)}")
    return steps


def describe_graph(steps: list[Step], fmt: str = "text", products: dict[str, str] | None = None) -> str:
    """The step graph as text (one block per step), Graphviz DOT or Mermaid.

    Edges join the step that last produced a product to each later step reading it,
    labelled with the product names; ``products`` (name -> type) adds the products'
    types to the text form.
    """
    producer: dict[str, str] = {}
    edges: dict[tuple[str, str], list[str]] = {}
    for step in steps:
        for product in step.inputs:
            if product in producer:
                edges.setdefault((producer[product], step.name), []).append(product)
        for product in step.outputs:
            producer[product] = step.name
    if fmt == "dot":
        lines = ["digraph ssodetect {", "  rankdir=LR;", "  node [shape=box, style=rounded];"]
        for step in steps:
            label = f"{step.name}\\nv{step.version}" + ("" if step.origin == "builtin" else f"\\n{step.origin}")
            lines.append(f'  "{step.name}" [label="{label}"];')
        for (a, b), products in edges.items():
            lines.append(f'  "{a}" -> "{b}" [label="{", ".join(products)}"];')
        return "\n".join(lines + ["}"]) + "\n"
    if fmt == "mermaid":
        lines = ["flowchart LR"]
        for step in steps:
            lines.append(f'  {step.name}["{step.name} v{step.version}"]')
        for (a, b), products in edges.items():
            lines.append(f"  {a} -->|{', '.join(products)}| {b}")
        return "\n".join(lines) + "\n"
    if fmt != "text":
        raise ConfigError(f"unknown graph format {fmt!r} (text, dot, mermaid)")
    blocks = []
    if products:
        used = {p for step in steps for p in (*step.inputs, *step.outputs)}
        blocks.append("products:\n" + "\n".join(f"   {name}: {kind}" for name, kind in products.items() if name in used))
    for k, step in enumerate(steps, 1):
        blocks.append("\n".join([
            f"{k}. {step.name} (version {step.version}, {step.origin}{'' if step.cache else ', not cached'})",
            f"   {step.description}",
            f"   inputs:  {', '.join(step.inputs) or '(files named on the command line)'}",
            f"   outputs: {', '.join(step.outputs) or '(files in the output directory)'}",
            f"   config:  {', '.join(step.config) or '-'}",
        ]))
    return "\n\n".join(blocks) + "\n"


def config_slice(config: Config, keys: tuple[str, ...]) -> dict:
    """The part of ``config`` named by ``keys`` (sections or ``section.field``), as plain JSON values."""
    out = {}
    for key in keys:
        section, _, name = key.partition(".")
        part = getattr(config, section)
        out[key] = getattr(part, name) if name else part.model_dump(mode="json")
        if hasattr(out[key], "model_dump"):
            out[key] = out[key].model_dump(mode="json")
    return json.loads(json.dumps(out, default=str))


def step_key(step: Step, config: Config, upstream: dict[str, str], extra: dict | None = None) -> str:
    """SHA-256 identifying what a step would compute: ssodetect's and the step's versions, its configuration
    and its inputs' keys (``upstream``: product -> key of the step that made it; ``extra``: e.g. file checksums)."""
    payload = {"ssodetect": __version__, "step": step.name, "version": step.version, "origin": step.origin,
               "config": config_slice(config, step.config), "upstream": dict(sorted(upstream.items())),
               "extra": extra or {}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def what_changed(record: dict, expected: dict) -> str:
    """Why a step's stored products do not fit it now: its version, the settings that differ (``section.key``) or the
    products and files it reads, from its stored ``record`` and ``expected`` (``version``, ``config`` slice,
    ``upstream`` keys); records of an earlier version without them get the general reason."""
    parts = []
    if "version" in expected and record.get("version") != expected["version"]:
        parts.append(f"its version ({record.get('version')} -> {expected['version']})")
    old, new = record.get("config"), expected.get("config")
    if isinstance(old, dict) and isinstance(new, dict):
        changed = []
        for key in sorted(set(old) | set(new)):
            a, b = old.get(key), new.get(key)
            if isinstance(a, dict) and isinstance(b, dict):
                changed += [f"{key}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
            elif a != b:
                changed.append(key)
        if changed:
            parts.append("the settings " + ", ".join(changed[:6]) + (" ..." if len(changed) > 6 else ""))
    if isinstance(record.get("upstream"), dict) and record["upstream"] != expected.get("upstream", record["upstream"]):
        now = expected["upstream"]
        changed = sorted(name for name in set(record["upstream"]) | set(now)
                         if record["upstream"].get(name) != now.get(name))
        parts.append(f"the products it reads from earlier steps ({', '.join(changed)}: their steps' settings or "
                     "input files changed)")
    if parts:
        return "changed since its products were stored: " + "; ".join(parts)
    if isinstance(old, dict):
        return "its input files (frames, catalogue) changed since its products were stored"
    return "its version, configuration or inputs changed"


class StepCache:
    """The stored products of the steps of one output directory.

    Parameters
    ----------
    outdir : Path or None
        The run's output directory (where ``steps/`` is read from); None: nothing cached.
    stage : Path or None
        Where new records go (the run's staging directory, committed with the outputs).
    """

    def __init__(self, outdir: Path | None, stage: Path | None):
        self.outdir = Path(outdir) if outdir is not None else None
        self.stage = Path(stage) if stage is not None else None
        self._key: bytes | None = None

    @property
    def key(self) -> bytes:
        if self._key is None:
            self._key = cache_key()[0]
        return self._key

    def record(self, name: str) -> dict | None:
        """The stored record of step ``name`` (key, checksum, ...), None when absent or unreadable."""
        if self.outdir is None:
            return None
        try:
            record = safejson.read(self.outdir / "steps" / f"{name}.json")
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def load(self, name: str, key: str, expected: dict | None = None) -> tuple[dict | None, str]:
        """The products stored for step ``name`` under ``key``; ``(None, reason)`` when not usable.

        The pickle is read only after its HMAC under the user's key (:func:`cache_key`) matches the record
        written with it: a pickle that someone else wrote or changed is never loaded.  ``expected``: the step's
        ``version``, ``config`` slice and ``upstream`` keys now, to say which of them changed (:func:`what_changed`).
        """
        record = self.record(name)
        if record is None:
            return None, "no stored products"
        if record.get("key") != key:
            return None, what_changed(record, expected or {})
        path = self.outdir / "steps" / f"{name}.pkl"
        try:
            # read once: the bytes checked are the bytes loaded (a file swapped between two opens never runs); a
            # named pipe in its place is never read (it would block)
            data = safejson.read_regular(path)
            signature = record.get("hmac")
            if not isinstance(signature, str) or not hmac.compare_digest(sign_bytes(data, f"{name}:{key}", self.key),
                                                                         signature):
                log.warning("step %s: stored products in %s are not signed by this user's key (written by another "
                            "user or changed since); they are not loaded", name, path)
                return None, "stored products are not signed by this user's cache key"
            return pickle.loads(data), ""
        except (OSError, ValueError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
            return None, f"stored products unreadable ({exc})"

    def save(self, name: str, key: str, products: dict, info: dict) -> dict:
        """Store ``products`` of step ``name`` in the stage; returns the record."""
        folder = self.stage / "steps"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.pkl"
        with open(path, "wb") as handle:
            pickle.dump(products, handle, protocol=pickle.HIGHEST_PROTOCOL)
        record = {"step": name, "key": key, "sha256": sha256_file(path), "hmac": sign_file(path, f"{name}:{key}", self.key),
                  "bytes": path.stat().st_size, **info}
        (folder / f"{name}.json").write_text(json.dumps(record, indent=2))
        return record
