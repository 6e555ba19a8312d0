"""Data parallel training across processes, as on a cluster: ``jax.distributed`` on CPU.

``python examples/multi_process.py --processes 2`` starts 2 local worker processes (2 CPU
devices each) joined by ``jax.distributed.initialize`` over loopback, with gloo as the CPU
collectives. Each worker builds the global batch of every step from its own rows only
(``jax.make_array_from_process_local_data``), trains an NNX model (a jaxlstm LSTM and a linear
head) with optax on a mesh over all processes' devices, saves an orbax checkpoint from every
process half way, restores it into a fresh model and optimizer and resumes. The launcher then
trains the same model on the same global batches in one process, on one device, prints both
loss curves and their largest difference, and exits non-zero when it exceeds 1e-5.

On a cluster the worker is the whole program: start one per host (or per GPU) with
``--worker`` and let ``jax.distributed.initialize()`` find the coordinator (see
``docs/distributed.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

TOLERANCE = 1e-5
INPUT, HIDDEN, STEPS_PER_SEQUENCE = 3, 16, 12


def global_batch(seed: int, step: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Step ``step``'s global batch: sequences ``(size, T, INPUT)`` and, as targets, the sign
    of a running sum that the LSTM must carry through time ``(size, 1)``."""
    rng = np.random.default_rng([seed, step])
    x = rng.normal(size=(size, STEPS_PER_SEQUENCE, INPUT)).astype(np.float32)
    y = np.tanh(np.cumsum(x[:, :, 0], axis=1)[:, -1:] / 2).astype(np.float32)
    return x, y


def make_model(seed: int):
    from flax import nnx

    import jaxlstm

    class Regressor(nnx.Module):
        """A batch-first LSTM and a linear head on its last output."""

        def __init__(self, rngs: nnx.Rngs):
            self.lstm = jaxlstm.LSTM(INPUT, HIDDEN, batch_first=True, rngs=rngs)
            self.head = nnx.Linear(HIDDEN, 1, rngs=rngs)

        def __call__(self, x):
            out, _ = self.lstm(x)
            return self.head(out[:, -1])

    return Regressor(nnx.Rngs(seed))


def make_trainer(seed: int, lr: float):
    """A fresh model, its optimizer and a jitted train step ``step(model, optimizer, x, y)``."""
    import optax
    from flax import nnx

    model = make_model(seed)
    optimizer = nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
        def loss_fn(model):
            return ((model(x) - y) ** 2).mean()
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    return model, optimizer, step


def place(tree: Any, sharding) -> Any:
    """Every process holds the whole of ``tree`` (same seed): lay it out as ``sharding``."""
    import jax

    return jax.tree.map(
        lambda a: jax.make_array_from_callback(np.shape(a), sharding,
                                               lambda index: np.asarray(a)[index]), tree)


def worker(args: argparse.Namespace) -> None:
    """One process of the distributed run; process 0 writes the losses to ``--out``."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if args.coordinator:
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    else:  # on a TPU pod, SLURM or another detected cluster: everything found on its own
        jax.distributed.initialize()
    import orbax.checkpoint as ocp
    from _common import progress
    from flax import nnx
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    me, processes = jax.process_index(), jax.process_count()
    mesh = jax.make_mesh((jax.device_count(),), ("data",))  # Explicit axes, JAX's default
    rows, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    if args.batch_size % jax.device_count():
        raise SystemExit(f"--batch-size {args.batch_size} does not split over "
                         f"{jax.device_count()} devices")
    local = args.batch_size // processes

    def trainer():
        model, optimizer, step = make_trainer(args.seed, args.lr)
        graph, state = nnx.split((model, optimizer))
        model, optimizer = nnx.merge(graph, place(state, replicated))
        return model, optimizer, step

    def batch(step_index):
        # Only this process's rows of the global batch: on a cluster, its own data shard.
        x, y = (a[me * local:(me + 1) * local]
                for a in global_batch(args.seed, step_index, args.batch_size))
        return (jax.make_array_from_process_local_data(rows, x),
                jax.make_array_from_process_local_data(rows, y))

    model, optimizer, step = trainer()
    half = args.steps // 2
    losses = []
    bar = progress(args.steps, f"{processes} processes", disable=args.no_progress or me != 0)
    with jax.set_mesh(mesh):
        for i in range(half):
            losses.append(float(step(model, optimizer, *batch(i))))
            bar.update()
        directory = (Path(args.out) / "checkpoint").absolute()
        with ocp.StandardCheckpointer() as checkpointer:  # every process writes its part
            checkpointer.save(directory, nnx.state((model, optimizer)), force=True)
        model, optimizer, step = trainer()  # fresh, as after a restart
        with ocp.StandardCheckpointer() as checkpointer:
            abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.state((model, optimizer)))
            nnx.update((model, optimizer), checkpointer.restore(directory, abstract))
        for i in range(half, args.steps):
            losses.append(float(step(model, optimizer, *batch(i))))
            bar.update()
    bar.close()
    if me == 0:
        (Path(args.out) / "losses.json").write_text(json.dumps({
            "processes": processes, "devices": jax.device_count(),
            "local_devices": jax.local_device_count(), "losses": losses,
            "batch_devices": len(batch(0)[0].sharding.device_set),
        }))
    jax.distributed.shutdown()


def single_process(args: argparse.Namespace, show) -> list[float]:
    """The same training, on the same global batches, in this process on one device."""
    model, optimizer, step = make_trainer(args.seed, args.lr)
    losses = []
    for i in show(range(args.steps), "one process"):
        losses.append(float(step(model, optimizer, *global_batch(args.seed, i, args.batch_size))))
    return losses


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: argparse.Namespace) -> int:
    """Start the workers, wait for them, compare with the one-process run; the exit status."""
    from _common import output_dir, progress

    out = output_dir(args.out) / "multi_process"
    out.mkdir(exist_ok=True)
    coordinator = f"127.0.0.1:{free_port()}"
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={args.local_devices}")
    command = [sys.executable, __file__, "--worker", "--coordinator", coordinator,
               "--num-processes", str(args.processes), "--out", str(out)]
    for name in ("steps", "seed", "batch_size", "lr"):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    command += ["--no-progress"] if args.no_progress else []
    print(f"starting {args.processes} processes x {args.local_devices} CPU devices, "
          f"coordinator {coordinator}", flush=True)
    workers = [subprocess.Popen(command + ["--process-id", str(i)], env=env)
               for i in range(args.processes)]

    def show(items, what):
        bar = progress(len(items), what, disable=args.no_progress)
        for item in items:
            yield item
            bar.update()
        bar.close()

    try:
        codes = [w.wait(timeout=args.timeout) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    if any(codes):
        print(f"a worker failed: exit codes {codes}", file=sys.stderr)
        return 1
    run = json.loads((out / "losses.json").read_text())
    reference = single_process(args, show)
    diff = float(np.max(np.abs(np.asarray(run["losses"]) - np.asarray(reference))))
    print(f"{run['processes']} processes, {run['devices']} devices in all "
          f"({run['local_devices']} per process); checkpoint saved after step "
          f"{args.steps // 2} and restored")
    print("step  distributed      one process")
    for i, (a, b) in enumerate(zip(run["losses"], reference)):
        print(f"{i:4d}  {a:.9f}  {b:.9f}")
    print(f"max |loss difference| = {diff:.2e} (tolerance {TOLERANCE:.0e})")
    return 0 if diff <= TOLERANCE else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2, help="local worker processes")
    parser.add_argument("--local-devices", type=int, default=2,
                        help="CPU devices per worker process")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16, help="global batch size")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    parser.add_argument("--timeout", type=float, default=600, help="seconds for the workers")
    parser.add_argument("--no-progress", action="store_true")
    # A worker's own arguments; on a cluster, --worker alone (everything else detected).
    parser.add_argument("--worker", action="store_true", help="run as one worker process")
    parser.add_argument("--coordinator", help="host:port of process 0 (omit to auto-detect)")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    return launch(args)


if __name__ == "__main__":
    sys.exit(main())
