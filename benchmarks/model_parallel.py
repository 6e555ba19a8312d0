"""What splitting the weights along their gate rows costs on 8 fake CPU devices.

``python -m benchmarks.model_parallel`` times one mid-size LSTM's forward+backward pass (loss
gradient in the weights) unsharded on one device, and on 8 devices: the batch split over all
8 (data parallel), and the batch over 4 and the weights' 4H gate rows over 2 (``data`` x
``model``), with Explicit and with Auto axes. Interleaved rounds, medians, each printed as a
ratio to the unsharded run measured in the same process. The fake devices share this
machine's cores, so the ratios show the cost of the layout (collectives, resharding), never a
speed-up; on real accelerators model parallelism pays when one device cannot hold or compute
the weights (see ``docs/distributed.md``).
"""

from __future__ import annotations

import os

# JAX fixes its device count when it starts: 8 fake CPU devices, set before it is imported.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jaxlstm  # noqa: E402
from jaxlstm import functional  # noqa: E402

GATE_ROWS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def layouts(params, x):
    """``{name: (mesh or None, params, x)}``: each layout's arrays placed on its devices."""
    found = {"unsharded (1 device)": (None, params, x)}
    for name, shape, names, types in (
        ("data x8", (8,), ("data",), (AxisType.Explicit,)),
        ("data x4 . model x2, Explicit", (4, 2), ("data", "model"), (AxisType.Explicit,) * 2),
        ("data x4 . model x2, Auto", (4, 2), ("data", "model"), (AxisType.Auto,) * 2),
    ):
        mesh = jax.make_mesh(shape, names, axis_types=types)
        model = "model" in names
        split = {k: jax.device_put(v, NamedSharding(
            mesh, P("model") if model and k.startswith(GATE_ROWS) else P()))
            for k, v in params.items()}
        found[name] = (mesh, split, jax.device_put(x, NamedSharding(mesh, P(None, "data"))))
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.model_parallel",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--input", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--proj", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    m = jaxlstm.LSTM(args.input, args.hidden, proj_size=args.proj, rngs=nnx.Rngs(0))
    config = m.config
    x = jnp.asarray(np.random.default_rng(0).normal(
        size=(args.steps, args.batch, args.input)), jnp.float32)

    def loss(params, x):
        out, _ = functional.lstm(params, x, config=config)
        return jnp.sum(out ** 2)

    grad = jax.jit(jax.grad(loss))
    runs = {}
    for name, (mesh, params, xs) in layouts(m.params(), x).items():
        def run(mesh=mesh, params=params, xs=xs):
            if mesh is None:
                return grad(params, xs)
            with jax.set_mesh(mesh):
                return grad(params, xs)
        jax.block_until_ready(run())  # compile
        runs[name] = run
    times = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            jax.block_until_ready(run())
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    anchor = medians["unsharded (1 device)"]
    print(f"LSTM T={args.steps} N={args.batch} I={args.input} H={args.hidden} "
          f"proj={args.proj}, forward+backward, median of {args.rounds} rounds, "
          f"{jax.device_count()} fake CPU devices on {os.cpu_count()} cores")
    for name, median in medians.items():
        print(f"  {name:<32} {median / anchor:5.2f} x unsharded")


if __name__ == "__main__":
    main()
