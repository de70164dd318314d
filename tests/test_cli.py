"""The command line: simulate -> run -> evaluate, and the configuration dump."""
import json
import tomllib

from ssodetect.cli import main
from ssodetect.config import Config


def test_config_dump_is_valid_toml(capsys):
    assert main(["config", "--dump"]) == 0
    text = capsys.readouterr().out
    assert Config.model_validate(tomllib.loads(text)) == Config()


def test_simulate_run_evaluate(tmp_path, capsys):
    sim, out = tmp_path / "sim", tmp_path / "out"
    assert main(["simulate", str(sim), "--seed", "4", "--size", "512", "--movers-per-ccd", "400", "-q"]) == 0
    assert (sim / "truth.ecsv").exists() and (sim / "refcat.ecsv").exists()
    # exit 1, success with warnings: a 512^2 CCD holds too few reference stars for an astrometric solution
    assert main(["run", str(sim), "--out", str(out), "--refcat", str(sim / "refcat.ecsv"), "--station", "C57", "-q"]) == 1
    assert "C57" in (out / "observations.psv").read_text()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["warnings"] >= 4 and "astrometric solution failed" in (out / "run.log").read_text()
    capsys.readouterr()
    # exit 1: the reports it rewrites warn (station XXX, astCat unknown), as the run did
    assert main(["evaluate", str(out), str(sim / "truth.ecsv")]) == 1
    report = capsys.readouterr().out
    assert "Completeness for movers" in report and "5-sigma point-source limit" in report


def test_simulate_rejects_bad_parameters(tmp_path, capsys):
    assert main(["simulate", str(tmp_path / "s"), "--size", "10", "-q"]) == 2
    assert "--size: Input should be greater than or equal to 128" in capsys.readouterr().err  # (the option named)


def test_a_library_warning_is_one_counted_log_line(capsys, monkeypatch):
    """E.g. astropy's ErfaWarning ("dubious year") on a frame dated far ahead: one WARNING line naming the category,
    not Python's two-line dump of the warning and its source line."""
    import warnings

    import ssodetect.config as config_module

    original = config_module.dump_toml

    def warning_dump(*args, **kwargs):
        warnings.warn('ERFA function "dtf2d" yielded 1 of "dubious year (Note 6)"', RuntimeWarning)
        return original(*args, **kwargs)

    monkeypatch.setattr(config_module, "dump_toml", warning_dump)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["config"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("WARNING ssodetect: RuntimeWarning: ERFA function") and "dubious" in err[0]


def test_serve_refuses_a_bad_port_in_one_line(tmp_path, capsys):
    import socket

    assert main(["serve", "--root", str(tmp_path), "--port", "80000", "-q"]) == 2
    assert "--port 80000" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(["serve", "--root", str(tmp_path), "--port", str(port), "-q"]) == 2
    assert "cannot listen there" in capsys.readouterr().err


def test_a_reader_that_goes_away_ends_the_command_as_sigpipe_would():
    """``ssodetect config | head`` with the reader gone before the write: exit 141 (128 + SIGPIPE), no traceback
    nor "internal error" (it was exit 3 with one)."""
    import os
    import signal
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-m", "ssodetect.cli", "config"], stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    finally:
        os.close(write)
    assert done.returncode == 128 + signal.SIGPIPE and done.stderr == "", done.stderr
