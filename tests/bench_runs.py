"""The benchmark scripts' smoke tests run them in subprocesses, as they are run for real (their
own jax process, their own flags), in parallel and with XLA's CPU optimisations turned down,
because compile time, not run time, is what a tiny run spends."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Beside running them as subprocesses, tests import benchmark scripts (and the scripts each
# other: render_results imports suite) in process.
sys.path.insert(0, str(ROOT / "benchmarks"))
FAST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def run_parallel(script: pathlib.Path, argv: dict[str, list[str]], xla_flags: str = ""
                 ) -> dict[str, tuple[int, str, str]]:
    """name -> (return code, stdout, stderr) of ``script`` run with each argument list."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"{xla_flags} {FAST_XLA_FLAGS}".strip()}
    procs = {name: subprocess.Popen([sys.executable, str(script), *a], env=env, cwd=ROOT,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, a in argv.items()}
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        out[name] = (proc.returncode, stdout, stderr)
    return out
