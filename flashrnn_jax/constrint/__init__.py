"""ConstrINT: a small integer constraint-satisfaction solver (pure Python, no jax).

flashrnn_jax uses it to choose CUDA kernel tilings: the kernel's resource limits (registers,
shared memory, threads, SMs, cluster size, divisibility of tiles) are written as constraints
over the tile sizes, and the solver picks the best tiling in a given preference order.

Quick start::

    from flashrnn_jax.constrint import solve, Model

    solve('''
        X * 1024 <= 232448;        # bytes of shared memory
        X % 64 == 0;               # a multiple of 64
        X == [64, 128, 256];       # one of these
    ''', order=[("X", "largest")])            # -> [{'X': 128}]

    m = Model()
    x, w = m.vars("X", "W")
    m.add(x * 4 <= 64, x % 2 == 0, (w == 1) | (x <= 8))
    m.solve(order=[(x, "largest")])            # -> [{'X': 16, 'W': 1}]

The language (:mod:`.parser`): constraints end with ``;``; relations ``==``, ``<=`` and
divisibility ``A % B == 0``; alternatives ``R1 | R2`` (looser than relations); terms with
``+``, ``*``, ``^`` (precedence ``^`` > ``*`` > ``+``, ``^`` right-associative), non-negative
integers, variables (positive integers) and value lists ``[a, b, c]``; ``#`` comments.
Parentheses are accepted and **ignored** (they do not change precedence; a warning flags
parentheses that suggest another grouping). No ``-`` or ``/``.

Modules, one concern each:

* :mod:`.expressions` -- the model representation (:class:`Program` and its nodes);
* :mod:`.parser` -- text to :class:`Program`; :class:`ConstrintSyntaxError`;
* :mod:`.builder` -- :class:`Model`, the Python builder producing the same :class:`Program`;
* :mod:`.propagation` -- domains and bounds/arc-consistency propagation;
* :mod:`.solver` -- the search and :func:`solve`;
* :mod:`.cache` -- the on-disk cache of results.

Extension point: ``hardware.py`` (the GPU kernel model, owned separately) describes a device
(SM count, registers per SM, shared memory per block, threads per block, maximum cluster size)
and builds a model per (cell, dtype, head size) from it -- as text or with :class:`Model`;
constants as plain ints or ``X == value`` relations, tile sizes as variables -- then calls
:func:`solve` with an ``order`` that states the preferences (e.g. fewest CTAs per head
first, then the largest batch tile). ``benchmarks/constrint_bench.py`` times a stand-in model
of that shape and size.
"""

from .builder import Model
from .expressions import Program
from .parser import ConstrintParenthesesWarning, ConstrintSyntaxError, parse
from .solver import UnboundedVariableError, solve

__all__ = [
    "solve",
    "parse",
    "Model",
    "Program",
    "ConstrintSyntaxError",
    "ConstrintParenthesesWarning",
    "UnboundedVariableError",
]
