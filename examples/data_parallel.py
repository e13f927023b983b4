"""Data- and head-parallel training of a head-wise RNN with optax on a device mesh.

The devices form a ``data × heads`` mesh. Every batch is split over ``data`` (data
parallelism) and every parameter with a heads axis over ``heads`` (the heads are independent
RNNs, so each device runs its own heads with no communication): ``FlashRNN(batch_axis="data",
head_axis="heads")`` puts partitioning metadata on its parameters, ``nn.get_sharding`` turns
it into the shardings ``init`` writes them in, and the optimizer state follows the parameters.
Inside the recurrence nothing moves between devices; the gradients of the parameters are
summed over ``data`` once per step, and the readout sums its per-head partial products over
``heads``.

The task: tokens in ``{0, ..., m-1}``; at every position predict the running sum modulo ``m``
(see ``examples/state_tracking.py``, which trains it to full accuracy on one device).

Without an accelerator the script splits the CPU into 8 devices
(``--xla_force_host_platform_device_count``), so the mesh is real on any machine; on GPUs it
uses the GPUs. About 10 s on a 2-core CPU::

    PYTHONPATH=. python examples/data_parallel.py                    # 4 x 2 on 8 CPU devices
    PYTHONPATH=. python examples/data_parallel.py --data 2 --heads 4 --function slstm
"""

from __future__ import annotations

import argparse
import os
import time

# Before jax is imported: let the CPU show 8 devices. It changes nothing on GPUs, whose
# devices are real; flags the caller has set stay in force.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = " ".join(
        filter(None, (os.environ.get("XLA_FLAGS"), "--xla_force_host_platform_device_count=8"))
    )

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402

from flashrnn_jax.cells import FUNCTIONS  # noqa: E402
from flashrnn_jax.linen import FlashRNN  # noqa: E402


class Tracker(nn.Module):
    """One-hot tokens -> head-wise RNN split over the mesh -> per-step logits."""

    modulus: int
    hidden: int
    heads: int
    function: str

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = jax.nn.one_hot(tokens, self.modulus)
        h = FlashRNN(self.hidden, function=self.function, num_heads=self.heads,
                     batch_axis="data", head_axis="heads")(x)
        # The hidden units are split by heads like h, so each device multiplies its own
        # units and the partial logits are summed over "heads".
        readout = nn.with_partitioning(nn.initializers.lecun_normal(), ("heads", None))
        return nn.Dense(self.modulus, kernel_init=readout)(h)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=int, default=None,
                        help="devices along the batch (default: all devices / --heads)")
    parser.add_argument("--heads", type=int, default=2, help="devices along the heads")
    parser.add_argument("--function", default="lstm", choices=FUNCTIONS)
    parser.add_argument("--modulus", type=int, default=3)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seq-len", type=int, default=24)
    parser.add_argument("--batch", type=int, default=64, help="global batch size")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--num-heads", type=int, default=8, help="RNN heads")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    data = args.data or len(jax.devices()) // args.heads
    if data < 1 or data * args.heads > len(jax.devices()):
        raise SystemExit(f"a {data} x {args.heads} mesh needs more than the "
                         f"{len(jax.devices())} devices here")
    # Auto axes: XLA lays out what the model leaves open, and Linen applies the partitioning
    # metadata as sharding constraints, which Explicit axes would reject. The RNN is told its
    # axes (batch_axis/head_axis) and finds the mesh in jax.set_mesh.
    mesh = jax.make_mesh((data, args.heads), ("data", "heads"),
                         axis_types=(AxisType.Auto, AxisType.Auto))
    print(f"mesh {dict(mesh.shape)} on {mesh.devices.size} {jax.devices()[0].platform} devices; "
          f"{args.function}, {args.num_heads} heads, global batch {args.batch}")

    model = Tracker(args.modulus, args.hidden, args.num_heads, args.function)
    batch_sharding = NamedSharding(mesh, P("data"))
    rng = np.random.default_rng(args.seed)

    def make_batch():
        tokens = rng.integers(0, args.modulus, (args.batch, args.seq_len))
        targets = np.cumsum(tokens, axis=1) % args.modulus
        return jax.device_put((tokens, targets), batch_sharding)

    with jax.set_mesh(mesh):  # the mesh of every computation below
        tokens, _ = make_batch()
        abstract = jax.eval_shape(model.init, jax.random.key(args.seed), tokens)
        params = jax.jit(model.init, out_shardings=nn.get_sharding(abstract, mesh))(
            jax.random.key(args.seed), tokens)
        params = nn.unbox(params)
        print("RNN parameter shardings:", {k: v.sharding.spec
                                           for k, v in params["params"]["FlashRNN_0"].items()})
        optimizer = optax.adam(args.lr)
        opt_state = jax.jit(optimizer.init)(params)

        @jax.jit
        def train_step(params, opt_state, tokens, targets):
            def loss_fn(params):
                logits = model.apply(params, tokens)
                return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        start = time.perf_counter()
        for step in range(1, args.steps + 1):
            params, opt_state, loss = train_step(params, opt_state, *make_batch())
            if step == 1 or step % 50 == 0:
                elapsed = time.perf_counter() - start
                print(f"step {step:4d}  loss {float(loss):.4f}  ({elapsed:.1f} s)")
    print(f"chance level is log({args.modulus}) = {np.log(args.modulus):.4f}")


if __name__ == "__main__":
    main()
