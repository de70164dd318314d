"""The operations console: runs listed newest first, launched from a form, watched live, reviewed (Starlette).

Everything lives under one root directory: the runs (each a run directory with its ``manifest.json``), the
registry (:mod:`ssodetect.pipeline.registry`) and the console's job logs.  Pages are rendered on the server
from Jinja2 templates; runs execute in separate ``ssodetect`` processes (:mod:`ssodetect.console.worker`), so a
page never waits for a pipeline.

Security: the server binds to loopback unless told otherwise, and then requires a token (``?token=`` once, then
a cookie); only paths under the root are listed, read or written; forms carry a per-server CSRF token; a launch
is validated (paths, names, configuration file and settings through the pydantic configuration) before it is
queued, and refused with its reason otherwise.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, HTMLResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from ssodetect import safejson
from ssodetect.config import ReportConfig, load_config
from ssodetect.console.graph import step_graph_svg
from ssodetect.console.form import FIELD_PREFIX, form_overrides, settings_file, settings_from_schema
from ssodetect.console.worker import PLAIN_NAME, PLAIN_NAME_RULE, Workers, job_log
from ssodetect.errors import SSODetectError
from ssodetect.io.outputs import RECORD
from ssodetect.pipeline.registry import Registry
from ssodetect.io.frames import FITS_PATTERNS
from ssodetect.pipeline.run import BUILTIN_STEPS
from ssodetect.pipeline.steps import pipeline_steps

log = logging.getLogger(__name__)

__all__ = ["create_app", "inputs_under", "FITS_SUFFIXES", "REFCAT_SUFFIXES", "ORBIT_SUFFIXES"]

#: Files that make a directory a candidate input of the launch form.
FITS_SUFFIXES = tuple(pattern.lstrip("*") for pattern in FITS_PATTERNS)
#: Reference catalogues and orbit files offered by the launch form (MPCORB / JPL SBDB JSON / MPC 1-line elements).
REFCAT_SUFFIXES = (".ecsv", ".fits.cat", ".ldac")
ORBIT_SUFFIXES = (".dat", ".json", ".dat.gz")


def _under(root: Path, relative: str) -> Path:
    """``root / relative`` when it resolves inside ``root`` (links followed), else ValueError."""
    path = Path(os.path.realpath(root / relative))
    if path != root and root not in path.parents:
        raise ValueError(f"{relative}: outside the console's root")
    return path


def _walk(root: Path, depth: int = 3):
    """``(relative directory, file names)`` under ``root``, ``depth`` levels down, neither into hidden directories
    nor into run directories (those holding a ``manifest.json``, which are not yielded)."""
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if len(rel.parts) < depth else []
        if "manifest.json" in filenames:
            dirnames[:] = []
            continue
        yield rel, sorted(filenames)


def inputs_under(root: Path, depth: int = 3) -> list[str]:
    """Directories under ``root`` holding FITS frames (relative paths), not inside run directories."""
    return [rel.as_posix() for rel, names in _walk(root, depth) if any(f.lower().endswith(FITS_SUFFIXES) for f in names)]


def _files_of(root: Path, suffixes: tuple, depth: int = 3) -> list[str]:
    """Files under ``root`` with one of ``suffixes`` (relative paths), hidden files and run directories left out."""
    return [(rel / f).as_posix() for rel, names in _walk(root, depth) for f in names
            if f.lower().endswith(suffixes) and not f.startswith(".")]


class _Gone(Exception):
    """The client went away in the middle of sending a form."""


async def _form(request: Request):
    """The request's form; a client that disconnects mid-body is answered 400 (no traceback in the server log)."""
    try:
        return await request.form()
    except ClientDisconnect:
        raise _Gone from None


#: Largest offset of the runs page's listing (a larger one, past any registry, lists nothing).
MAX_OFFSET = 10**9


def _loopback_host(host: str) -> bool:
    """Whether an HTTP ``Host`` header names a loopback address (``127.0.0.1:8765``, ``localhost``, ``[::1]:8765``)."""
    host = host.strip().lower()
    name = host[1:host.find("]")] if host.startswith("[") and "]" in host else host.rsplit(":", 1)[0]
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class _Guard(BaseHTTPMiddleware):
    """The token check (when the console has one): ``?token=`` sets a cookie; every request needs one of them."""

    def __init__(self, app, token: str | None):
        super().__init__(app)
        self.token = token

    async def dispatch(self, request: Request, call_next):
        if not self.token and not _loopback_host(request.headers.get("host", "")):
            # a console without a token listens on a loopback address: a page of another site that a browser resolved
            # to it (DNS rebinding) names its own host, and would otherwise read the form's CSRF token and post to it
            return PlainTextResponse("this console answers to its loopback address only (127.0.0.1, localhost, ::1)",
                                     status_code=403)
        if self.token:
            given = request.query_params.get("token") or request.cookies.get("ssodetect_token") or ""
            if not hmac.compare_digest(given, self.token):
                return PlainTextResponse("a token is needed: open the address the console printed", status_code=401)
        response = await call_next(request)
        if self.token and request.query_params.get("token"):
            response.set_cookie("ssodetect_token", self.token, httponly=True, samesite="strict")
        return response


def create_app(root: str | Path, *, token: str | None = None, workers: int = 1, start_workers: bool = True,
               scheduler: str | None = None, watchers: list | None = None) -> Starlette:
    """The console over ``root``.

    Parameters
    ----------
    root : path
        Directory of the runs, the inputs and the registry.
    token : str, optional
        Required on every request when given (a console reachable from other hosts).
    workers : int
        Runs executed at a time.
    start_workers : bool
        Start the worker threads (and the watchers) with the application (tests may run a job themselves).
    scheduler : str, optional
        Address of a Dask scheduler: every run launched from the form computes its CCDs on that cluster
        (``ssodetect run --scheduler``) unless its settings name another.
    watchers : list of Watcher, optional
        Watch folders whose complete visits are queued as runs (:class:`ssodetect.console.watch.Watcher`),
        started and stopped with the application and listed on the runs page.
    """
    root = Path(os.path.realpath(root))
    if not root.is_dir():
        raise SSODetectError(f"{root}: not a directory")
    with Registry(root):
        pass  # created or migrated now: a bad registry is refused before the server starts
    env = Environment(loader=PackageLoader("ssodetect.console", "templates"), autoescape=select_autoescape(["html"]))
    csrf = secrets.token_urlsafe(24)
    pool = Workers(root, workers)
    watchers = list(watchers or [])
    sections = settings_from_schema()

    def form_page(status_code: int = 200, values: dict | None = None, error: str = "", form=None) -> HTMLResponse:
        return page("launch.html", status_code, inputs=inputs_under(root), refcats=_files_of(root, REFCAT_SUFFIXES),
                    configs=_files_of(root, (".toml",)), orbit_files=_files_of(root, ORBIT_SUFFIXES),
                    sections=sections, form=form or {}, values=values or {}, error=error, scheduler=scheduler or "")

    def page(name: str, status_code: int = 200, **context) -> HTMLResponse:
        return HTMLResponse(env.get_template(name).render(root=str(root), csrf=csrf, **context), status_code=status_code)

    async def runs_page(request: Request):
        q = request.query_params
        search, status = q.get("search", "")[:200], q.get("status", "")
        try:
            offset = min(max(0, int(q.get("offset", "0"))), MAX_OFFSET)  # (SQLite holds 64-bit integers only)
        except ValueError:
            offset = 0
        try:
            registry = Registry(root)
        except SSODetectError as exc:  # a damaged registry file: said on the page, the server stays up
            return page("error.html", 503, message=str(exc).splitlines()[0])
        with registry as reg:
            reg.sync()
            for path, why in reg.damaged:  # (not listed: said in the server's log, each once)
                log.warning("%s: run manifest unreadable or damaged, not listed (%s)", path, why)
            rows = reg.runs(search=search, status=status if status in ("complete", "partial") else "", limit=100,
                            offset=offset)
            total, jobs = reg.count(), reg.jobs(limit=20)
        watches = [{"inbox": str(w.inbox), "exposures": w.exposures, "timeout": w.timeout} for w in watchers]
        return page("runs.html", runs=rows, total=total, jobs=jobs, search=search, status=status, offset=offset,
                    watches=watches)

    def _run_dir(request: Request) -> Path:
        path = _under(root, request.path_params["outdir"])
        try:
            found = (path / "manifest.json").is_file()
        except OSError:  # (a name longer than the file system takes: not a run, not a server error)
            found = False
        if not found:
            raise ValueError(f"{request.path_params['outdir'][:200]}: not a run directory")
        return path

    async def run_page(request: Request):
        try:
            path = _run_dir(request)
        except ValueError as exc:
            return page("error.html", 404, message=str(exc))
        manifest = safejson.read(path / "manifest.json")
        log_text = (path / "run.log").read_text(errors="replace") if (path / "run.log").is_file() else ""
        config_text = (path / "config.toml").read_text(errors="replace") if (path / "config.toml").is_file() else ""
        products = sorted(manifest.get("products") or {})
        declared = {step.name: step for step in pipeline_steps(BUILTIN_STEPS)}
        graph, boxes = [], []
        for entry in manifest.get("steps", []):
            step = declared.get(entry.get("step"))
            graph.append((entry.get("step"), entry.get("status"), entry.get("seconds"), entry.get("version"),
                          _code_of(step) if step else str(entry.get("origin") or ""),
                          ", ".join(step.inputs) if step else "",
                          ", ".join(step.outputs) if step else ""))
            boxes.append({"name": str(entry.get("step")), "status": entry.get("status"), "seconds": entry.get("seconds"),
                          "reads": list(step.inputs) if step else [], "writes": list(step.outputs) if step else []})
        return page("run.html", outdir=path.relative_to(root).as_posix(), manifest=manifest, log_text=log_text[-200000:],
                    steps=[step.name for step in pipeline_steps(BUILTIN_STEPS)],
                    config_text=config_text, products=products, graph=graph, graph_svg=step_graph_svg(boxes),
                    has_report=(path / "report.html").is_file())

    async def run_file(request: Request):
        try:
            path = _run_dir(request)
            name = request.path_params["name"]
            target = _under(path, name)
        except ValueError as exc:
            return PlainTextResponse(str(exc), status_code=404)
        try:
            listed = set(safejson.read(path / RECORD)["files"])
        except (OSError, ValueError, KeyError, TypeError):
            listed = set(safejson.read(path / "manifest.json").get("products") or {}) | {"manifest.json"}
        if name not in listed or not target.is_file():
            return PlainTextResponse(f"{name}: not a product of this run", status_code=404)
        inline = name.endswith((".html", ".log", ".json", ".toml", ".ecsv", ".psv", ".xml", ".mpc"))
        media = {".html": "text/html", ".json": "application/json", ".xml": "application/xml"}.get(target.suffix,
                                                                                                      "text/plain")
        if inline:
            return FileResponse(target, media_type=media)
        return FileResponse(target, filename=target.name)

    async def rerun(request: Request):
        form = await _form(request)
        if not hmac.compare_digest(str(form.get("csrf", "")), csrf):
            return PlainTextResponse("the form is stale or was not sent by this console (CSRF token)", status_code=403)
        try:
            path = _run_dir(request)
            argv = _rerun_argv(root, path, str(form.get("step", "")))
        except (ValueError, SSODetectError) as exc:
            return page("error.html", 400, message=str(exc).splitlines()[0])
        with Registry(root) as reg:
            job_id = reg.enqueue(path.relative_to(root).as_posix(), argv, "rerun")
        return RedirectResponse(f"/jobs/{job_id}", status_code=303)

    async def launch_form(request: Request):
        return form_page()

    async def launch(request: Request):
        form = await _form(request)
        values = {k: str(form.get(k, "")).strip() for k in ("inputs", "refcat", "config", "out", "obs_id", "station",
                                                             "keywords")}
        values["orbits"] = [str(v) for v in form.getlist("orbits") if str(v).strip()]
        fields = {k: str(v) for k, v in form.items() if k.startswith(FIELD_PREFIX)}
        if not hmac.compare_digest(str(form.get("csrf", "")), csrf):
            return PlainTextResponse("the form is stale or was not sent by this console (CSRF token)", status_code=403)
        try:
            argv = _launch_argv(root, values)
            overrides = form_overrides(sections, fields)
            if overrides:  # the settings changed on the form, laid over the chosen file, validated, saved
                saved = root / ".ssodetect-console" / "configs" / f"{secrets.token_hex(8)}.toml"
                merged = settings_file(_under(root, values["config"]) if values["config"] else None, overrides, saved)
                if "--config" in argv:
                    argv[argv.index("--config") + 1] = str(saved)
                else:
                    argv += ["--config", str(saved)]
            else:
                merged = load_config(_under(root, values["config"])) if values["config"] else None
            if scheduler and not (merged is not None and merged.execution.scheduler):
                argv += ["--scheduler", scheduler]
        except (ValueError, SSODetectError) as exc:
            return form_page(400, values, str(exc).splitlines()[0], fields)
        with Registry(root) as reg:
            job_id = reg.enqueue(values["out"], argv, values["keywords"])
        return RedirectResponse(f"/jobs/{job_id}", status_code=303)

    async def job_page(request: Request):
        with Registry(root) as reg:
            job = reg.job(int(request.path_params["job"]))
        if job is None:
            return page("error.html", 404, message="no such job")
        return page("job.html", job=job, argv=" ".join(json.loads(job["argv"])))

    async def job_cancel(request: Request):
        form = await _form(request)
        if not hmac.compare_digest(str(form.get("csrf", "")), csrf):
            return PlainTextResponse("the form is stale or was not sent by this console (CSRF token)", status_code=403)
        pool.cancel(int(request.path_params["job"]))
        return RedirectResponse(f"/jobs/{request.path_params['job']}", status_code=303)

    async def job_events(request: Request):
        """Server-sent events: the job's log as it grows, then its final status."""
        job_id = int(request.path_params["job"])
        path = job_log(root, job_id)

        async def stream():
            position = 0
            while True:
                if path.is_file():
                    with open(path, "rb") as handle:
                        handle.seek(position)
                        chunk = handle.read()
                    position += len(chunk)
                    for line in chunk.decode(errors="replace").splitlines():
                        yield f"event: log\ndata: {line}\n\n"
                with Registry(root) as reg:
                    job = reg.job(job_id)
                if job is None or job["status"] not in ("queued", "running"):
                    yield f"event: end\ndata: {json.dumps(job or {})}\n\n"
                    return
                if await request.is_disconnected():
                    return
                await asyncio.sleep(0.5)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def job_status(request: Request):
        with Registry(root) as reg:
            job = reg.job(int(request.path_params["job"]))
        return Response(json.dumps(job), media_type="application/json", status_code=200 if job else 404)

    routes = [
        Route("/", runs_page),
        Route("/launch", launch_form, methods=["GET"]),
        Route("/launch", launch, methods=["POST"]),
        Route("/jobs/{job:int}", job_page),
        Route("/jobs/{job:int}/status", job_status),
        Route("/jobs/{job:int}/events", job_events),
        Route("/jobs/{job:int}/cancel", job_cancel, methods=["POST"]),
        Route("/runs/{outdir:path}/rerun", rerun, methods=["POST"]),
        Route("/runs/{outdir:path}/files/{name:path}", run_file),
        Route("/runs/{outdir:path}", run_page),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if start_workers:
            pool.start()
            for watcher in watchers:
                watcher.start()
        try:
            yield
        finally:
            for watcher in watchers:
                watcher.stop()
            pool.stop()

    async def gone(request: Request, exc: Exception):
        return PlainTextResponse("the request's body did not arrive whole", status_code=400)

    app = Starlette(routes=routes, middleware=[Middleware(_Guard, token=token)], lifespan=lifespan,
                    exception_handlers={_Gone: gone})
    app.state.workers = pool
    app.state.root = root
    app.state.watchers = watchers
    return app


def _rerun_argv(root: Path, run: Path, step: str) -> list[str]:
    """``ssodetect run`` arguments that redo ``run`` from ``step`` with its own inputs and saved settings (ValueError
    when its inputs are not under the root any more, or the step is unknown)."""
    names = [s.name for s in pipeline_steps(BUILTIN_STEPS)]
    if step not in names:
        raise ValueError(f"step {step!r}: not one of {', '.join(names)}")
    manifest = safejson.read(run / "manifest.json")
    files = manifest.get("inputs") or []
    inputs = [str(f.get("path", "")) for f in files if isinstance(f, dict) and f.get("role") == "input"]
    refcat = [str(f.get("path", "")) for f in files if isinstance(f, dict) and f.get("role") == "refcat"]
    if not inputs:
        raise ValueError(f"{run.name}: its manifest lists no input frames")
    for name in inputs + refcat:
        if not Path(name).is_absolute():
            raise ValueError(f"{name}: a relative input path (the run was not launched here); run it again from the form")
        _under(root, name)
        if not Path(name).is_file():
            raise ValueError(f"{name}: no longer there")
    argv = ["run", *inputs, "--out", str(run), "--from-step", step]
    if refcat:
        argv += ["--refcat", refcat[0]]
    if (run / "config.toml").is_file():  # the run's own settings, kept outside the directory the run replaces
        saved = root / ".ssodetect-console" / "configs" / f"{secrets.token_hex(8)}.toml"
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text((run / "config.toml").read_text())
        argv += ["--config", str(saved)]
    if manifest.get("obs_id"):
        argv += ["--obs-id", str(manifest["obs_id"])]
    for word in manifest.get("keywords") or []:
        argv += ["--keyword", str(word)]
    return argv


def _code_of(step) -> str:
    """Where a step's code is: its function's module and name (and its origin: builtin or a plug-in)."""
    fn = step.run
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', '?')} ({step.origin})"


def _launch_argv(root: Path, values: dict) -> list[str]:
    """The ``ssodetect run`` arguments of a launch form, every value checked (ValueError / ConfigError says why)."""
    if not values["inputs"]:
        raise ValueError("choose the input directory")
    inputs = _under(root, values["inputs"])
    if not inputs.is_dir() or values["inputs"] not in inputs_under(root):
        raise ValueError(f"{values['inputs']}: not a directory of FITS frames under the root")
    if not PLAIN_NAME.match(values["out"]):
        raise ValueError(f"output name {values['out']!r}: {PLAIN_NAME_RULE} (a new directory under the root)")
    out = _under(root, values["out"])
    if out.exists() and not (out / "manifest.json").is_file():
        raise ValueError(f"{values['out']}: exists and is not a run directory")
    argv = ["run", str(inputs), "--out", str(out)]
    if values["refcat"]:
        refcat = _under(root, values["refcat"])
        if not refcat.is_file():
            raise ValueError(f"{values['refcat']}: no such catalogue under the root")
        argv += ["--refcat", str(refcat)]
    if values["config"]:
        config = _under(root, values["config"])
        load_config(config)  # refused here (ConfigError names the key) rather than in the queue
        argv += ["--config", str(config)]
    for name in values.get("orbits", []):
        orbits = _under(root, name)
        if not orbits.is_file() or name not in _files_of(root, ORBIT_SUFFIXES):
            raise ValueError(f"{name}: no such orbit file under the root")
        argv += ["--orbits", str(orbits)]
    if values["station"]:
        try:  # the configuration's own rule
            ReportConfig(station=values["station"])
        except ValidationError as exc:
            raise ValueError(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None
        argv += ["--station", values["station"]]
    if values["obs_id"]:
        if len(values["obs_id"]) > 64 or not values["obs_id"].isprintable():
            raise ValueError("observation id: printable text of at most 64 characters")
        argv += ["--obs-id", values["obs_id"]]
    for word in values["keywords"].split():
        if len(word) > 40 or not word.isprintable():
            raise ValueError(f"keyword {word[:40]!r}: printable words of at most 40 characters")
        argv += ["--keyword", word]
    return argv
