"""pytest plugin for scripts/gpu_check.sh: collects per-case errors of the fused-kernel tests and
writes the GPU summary JSON (``{"gpu", "passed", "failed", "cases": [...]}``).

Loaded with ``-p gpu_summary``; the path comes from ``$FLASHRNN_GPU_SUMMARY``. Tests add a case
through the ``gpu_case`` fixture. Cases travel in the test reports' ``user_properties``, so the
summary is complete under pytest-xdist too (reports reach the controller, which writes it).
"""

from __future__ import annotations

import json
import os

import pytest

_cases: list[dict] = []
_outcomes = {"passed": 0, "failed": 0}


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


def pytest_sessionfinish(session):
    path = os.environ.get("FLASHRNN_GPU_SUMMARY")
    if not path or hasattr(session.config, "workerinput"):  # xdist workers: controller writes
        return
    import jax

    with open(path, "w") as f:
        json.dump({"gpu": jax.devices()[0].device_kind, **_outcomes, "cases": _cases}, f,
                  indent=1)
