"""Data parallel training of the tagger: the batch sharded over all devices with ``jax.sharding``.

The training step is ``tagger.py``'s, unchanged. A mesh over every device (``jax.make_mesh``,
Explicit axes) has one axis, ``'data'``; each batch array is placed with
``NamedSharding(mesh, P('data'))`` (split along the batch axis), parameters and optimizer
state with ``NamedSharding(mesh, P())`` (replicated), and
``jax.jit`` compiles the step for that layout: every device runs the LSTM on its slice and XLA
all-reduces the gradients. The same code runs on one device, on 8 fake CPU devices and on real
GPUs/TPUs. Before training, the script checks that the sharded loss and gradients equal those of
the same step on a single device.

Run from the repository root (8 fake CPU devices; on GPUs/TPUs drop ``XLA_FLAGS``)::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python examples/data_parallel.py
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import optax
import tagger
from _common import add_common_args, output_dir, plt, progress, save_figure
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis ``'data'`` over ``devices`` (default: all of them), made by
    ``jax.make_mesh`` as current JAX documents it: its axes are Explicit."""
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh((len(devices),), ("data",), devices=devices)


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Place each batch array split along its first (batch) axis over the mesh's devices."""
    num_devices = mesh.devices.size
    for name, array in batch.items():
        if array.shape[0] % num_devices:
            raise ValueError(
                f"batch[{name!r}] has {array.shape[0]} rows, which do not split evenly over "
                f"{num_devices} devices; use a batch size divisible by {num_devices}"
            )
    return jax.device_put(batch, NamedSharding(mesh, P("data")))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place a copy of every array of ``tree`` on each device of the mesh."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


def sharded_train_step(model: tagger.Tagger, tx: optax.GradientTransformation, mesh: Mesh):
    """``tagger``'s train step, jitted for a replicated state and a batch sharded on ``'data'``."""
    replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    return jax.jit(
        tagger.make_train_step(model, tx),
        in_shardings=(replicated, replicated, split),
        out_shardings=(replicated, replicated, replicated),
    )


def loss_and_grads(
    model: tagger.Tagger, params: Any, batch: dict[str, np.ndarray], mesh: Mesh
) -> tuple[jax.Array, Any]:
    """Loss and gradients of one batch, computed with the batch sharded over ``mesh``."""
    replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    value_and_grad = jax.jit(
        jax.value_and_grad(lambda p, b: tagger.loss_fn(model, p, b)),
        in_shardings=(replicated, split), out_shardings=replicated,
    )
    return value_and_grad(replicate(params, mesh), shard_batch(batch, mesh))


def max_tree_diff(a: Any, b: Any) -> float:
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def plot(path, losses: list[float], mesh: Mesh, accuracy: float) -> None:
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(losses, lw=0.8)
    kind = mesh.devices.flat[0].platform.upper()
    axis.set(xlabel="step", ylabel="cross-entropy (global batch)",
             title=f"BiLSTM tagger, batch sharded over {mesh.devices.size} {kind} device(s): "
                   f"held-out accuracy {accuracy:.3f}")
    save_figure(figure, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Check sharded == single-device for one step, train sharded, report, plot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, steps=500)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64, help="global batch size")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--devices", type=int, default=None, help="use the first N devices")
    parser.add_argument("--eval-size", type=int, default=1000, help="held-out sequences")
    args = parser.parse_args(argv)
    out = output_dir(args.out)

    devices = jax.devices()
    if args.devices is not None:
        if not 1 <= args.devices <= len(devices):
            raise ValueError(f"--devices must lie in [1, {len(devices)}], got {args.devices}")
        devices = devices[: args.devices]
    mesh = make_mesh(devices)
    num_devices = mesh.devices.size
    print(f"mesh: {num_devices} {devices[0].platform} device(s) on axis 'data'; global batch "
          f"{args.batch_size} -> {args.batch_size // max(num_devices, 1)} per device")

    task = tagger.Task()
    model = tagger.make_model(task, args.hidden, bidirectional=True)
    params = tagger.init_params(model, task, args.seed)
    rng = np.random.default_rng(args.seed)

    # The same step on one device and on the mesh: data parallelism must not change the math.
    probe = tagger.make_batch(np.random.default_rng(args.seed + 1), args.batch_size, task)
    loss_1, grads_1 = loss_and_grads(model, params, probe, make_mesh(devices[:1]))
    loss_n, grads_n = loss_and_grads(model, params, probe, mesh)
    loss_diff = abs(float(loss_1) - float(loss_n))
    grad_diff = max_tree_diff(grads_1, grads_n)

    tx = optax.adam(args.lr)
    params = replicate(params, mesh)
    opt_state = replicate(tx.init(params), mesh)
    train_step = sharded_train_step(model, tx, mesh)
    losses = []
    bar = progress(args.steps, f"data parallel x{num_devices}", disable=args.no_progress)
    for step in bar:
        batch = shard_batch(tagger.make_batch(rng, args.batch_size, task), mesh)
        params, opt_state, loss = train_step(params, opt_state, batch)
        losses.append(float(loss))
        if step % 20 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()

    held_out = tagger.make_batch(np.random.default_rng(args.seed + 10_000), args.eval_size, task)
    accuracy = tagger.accuracy(model, params, held_out)
    result = {
        "num_devices": num_devices,
        "platform": devices[0].platform,
        "batch_devices": len(batch["tokens"].sharding.device_set),
        "loss_diff": loss_diff,
        "grad_diff": grad_diff,
        "losses": losses,
        "accuracy": accuracy,
        "plot": out / "data_parallel.png",
    }
    plot(result["plot"], losses, mesh, accuracy)
    print(
        f"data_parallel: {num_devices} {devices[0].platform} device(s), held-out accuracy "
        f"{accuracy:.3f} after {args.steps} steps; sharded vs 1 device: |loss diff| "
        f"{loss_diff:.1e}, max |grad diff| {grad_diff:.1e}; plot: {result['plot']}"
    )
    return result


if __name__ == "__main__":
    main()
