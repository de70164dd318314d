"""Configuration-driven runs: the per-CCD step, executors, and the end-to-end pipeline."""
from ssodetect.pipeline.ccd import process_ccd
from ssodetect.pipeline.executor import DaskExecutor, SerialExecutor, make_executor
from ssodetect.pipeline.run import RunResult, run_astrometry, run_pipeline, select_candidates

__all__ = ["process_ccd", "DaskExecutor", "SerialExecutor", "make_executor", "RunResult", "run_astrometry", "run_pipeline", "select_candidates"]
