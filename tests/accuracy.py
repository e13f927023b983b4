"""DESIGN §4's accuracy rule for fast paths: a result passes when its relative error against the
float64 reference is at most twice the scan backend's at the same input dtype, plus a floor."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def floor(dtype) -> float:
    """The small absolute allowance of the rule, scaled with the dtype's precision."""
    return max(0.1 * float(jnp.finfo(dtype).eps), 1e-5)


def rel_err(x, ref) -> float:
    """``‖x − ref‖ / ‖ref‖`` in float64; infinite when ``x`` holds a NaN or an infinity (so an
    output element a kernel left poisoned fails)."""
    x = np.asarray(x, np.float64)
    if not np.all(np.isfinite(x)):
        return float("inf")
    return float(np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-30))
