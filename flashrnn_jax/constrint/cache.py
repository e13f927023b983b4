"""On-disk cache of ConstrINT results.

Where: ``$FLASHRNN_JAX_CACHE_DIR/constrint`` if that variable is set, else
``$XDG_CACHE_HOME/flashrnn_jax/constrint``, else ``~/.cache/flashrnn_jax/constrint``. The
directory is read each time, so changing the variable takes effect at once.

What: one JSON file per request. A request is everything that determines the answer -- the
solver version, the canonical form of the model (:meth:`Program.key
<flashrnn_jax.constrint.expressions.Program.key>`: comments, whitespace and redundant
parentheses do not matter; anything else does), the search order, the number of solutions and
the exclusions. The file name is the SHA-256 of the request, and the file stores the request
itself too: an entry is used only when its stored request equals the current one. A file that
cannot be read or parsed, or whose solutions do not check out against the model, is ignored
(and replaced by the next store). Writes go through a temporary file and an atomic rename;
failures to write (read-only home, full disk) are ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["cache_dir", "request_key", "load", "store", "clear", "ENV_VAR"]

#: Environment variable that overrides the flashrnn_jax cache directory.
ENV_VAR = "FLASHRNN_JAX_CACHE_DIR"
_FORMAT = 1


def cache_dir() -> Path:
    """The directory where ConstrINT results are cached (it may not exist yet)."""
    base = os.environ.get(ENV_VAR)
    if base:
        return Path(base).expanduser() / "constrint"
    xdg = os.environ.get("XDG_CACHE_HOME")
    root = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return root / "flashrnn_jax" / "constrint"


def _canonical(request: dict) -> str:
    return json.dumps({"format": _FORMAT, **request}, sort_keys=True, separators=(",", ":"))


def request_key(request: dict) -> str:
    """SHA-256 hex digest of the canonical JSON of a request."""
    return hashlib.sha256(_canonical(request).encode("utf-8")).hexdigest()


def _path(request: dict) -> Path:
    return cache_dir() / f"{request_key(request)}.json"


def load(request: dict) -> Any | None:
    """The stored solutions for ``request``, or None (missing, unreadable or mismatched).

    The caller must still validate the returned value: it is whatever JSON was on disk.
    """
    try:
        with open(_path(request), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or record.get("request") != json.loads(_canonical(request)):
        return None
    return record.get("solutions")


def store(request: dict, solutions: list[dict[str, int]]) -> None:
    """Store ``solutions`` for ``request``; errors are ignored (the cache is optional)."""
    try:
        path = _path(request)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"request": json.loads(_canonical(request)), "solutions": solutions}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(record, f, separators=(",", ":"))
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except (OSError, ValueError, TypeError):
        pass


def clear() -> int:
    """Delete every cached result; returns how many files were removed."""
    removed = 0
    try:
        entries = list(cache_dir().glob("*.json"))
    except OSError:
        return 0
    for p in entries:
        try:
            p.unlink()
            removed += 1
        except OSError:
            pass
    return removed
