"""pytest plugin for scripts/gpu_check.sh: collects per-case errors of the fused-kernel tests and
writes the GPU summary JSON (``{"gpu", "passed", "failed", "cases": [...]}``).

Loaded with ``-p gpu_summary``; the path comes from ``$FLASHRNN_GPU_SUMMARY``. Tests add a case
through the ``gpu_case`` fixture. Cases travel in the test reports' ``user_properties``, so the
summary is complete under pytest-xdist too (reports reach the controller, which writes it).
The file is rewritten after every test, with ``"complete": false`` until the session ends, so a
run cut off by the device lease still leaves the cases that finished.
"""

from __future__ import annotations

import json
import os

import pytest

_cases: list[dict] = []
_outcomes = {"passed": 0, "failed": 0}
_tests: list[dict] = []  # every test's id and outcome, so that a partial run says which ran
_state = {"writer": False}


def pytest_configure(config):
    # xdist workers only report; the controller (or a run without xdist) writes.
    _state["writer"] = bool(os.environ.get("FLASHRNN_GPU_SUMMARY")) and not hasattr(
        config, "workerinput")


def _write(complete: bool) -> None:
    if not _state["writer"]:
        return
    import jax

    from flashrnn_jax import fused

    path = os.environ["FLASHRNN_GPU_SUMMARY"]
    with open(path + ".tmp", "w") as f:
        json.dump({"gpu": jax.devices()[0].device_kind,
                   "tensor_core": fused.tensor_core_kernels(), **_outcomes,
                   "complete": complete, "tests": _tests, "cases": _cases}, f, indent=1)
    os.replace(path + ".tmp", path)


@pytest.fixture
def gpu_case(request):
    """Record one case: ``gpu_case(function=..., dtype=..., D=..., ..., fwd_rel_err=...)``."""

    def record(**fields):
        request.node.user_properties.append(("gpu_case", fields))

    return record


def pytest_runtest_logreport(report):
    if report.when == "call":
        _cases.extend(value for key, value in report.user_properties if key == "gpu_case")
    if report.when == "call" or (report.when == "setup" and report.failed):
        if report.passed:
            _outcomes["passed"] += 1
        elif report.failed:
            _outcomes["failed"] += 1
        _tests.append({"test": report.nodeid, "outcome": report.outcome})
        _write(complete=False)


def pytest_sessionfinish(session):
    _write(complete=True)
