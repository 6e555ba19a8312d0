"""Time jaxlstm against torch ``nn.LSTM`` and the JAX peers (Flax, Equinox, Keras, torchax)
in one process.

Every implementation runs the same shape with the same ``float32`` weights (those of the seeded
torch module, :func:`torch_lstm`) and the same inputs; forward is the output alone,
forward+backward is the gradient of ``sum(output)`` with respect to every parameter and the
input. Times are medians over interleaved rounds after warm-up, so that drift in the machine's
load hits every implementation alike; ratios are to torch measured in the same run.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import os
import platform
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

import jaxlstm
from jaxlstm import functional
from jaxlstm.config import param_suffix
from jaxlstm.formats._common import directions, torch_names


def machine() -> dict[str, str]:
    """The machine and the versions that a table of timings was measured with."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
            cpu = f"{names[0]} x{len(names)}" if names else cpu
    info = {
        "cpu": cpu,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jax devices": ", ".join(d.device_kind for d in jax.devices()),
        "torch": torch.__version__,
        "torch threads": str(torch.get_num_threads()),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cudnn"] = str(torch.backends.cudnn.version())
    return info


@dataclasses.dataclass(frozen=True)
class Shape:
    seq_len: int
    batch: int
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False
    batch_first: bool = False  # every candidate then takes (B, T, I) input

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def label(self) -> str:
        bi = "bi" if self.bidirectional else "uni"
        label = (f"T{self.seq_len} B{self.batch} I{self.input_size} H{self.hidden_size} "
                 f"L{self.num_layers} {bi}")
        return label + (" batch_first" if self.batch_first else "")


CPU_SHAPES = [
    Shape(50, 16, 64, 128),
    Shape(100, 32, 256, 256, 2, True),
    # The seed model's shape: two unidirectional layers, batch-first.
    Shape(100, 32, 64, 128, 2, batch_first=True),
    # Long-sequence inference.
    Shape(2000, 4, 40, 128),
]
# Long sequences: activation memory with and without remat, against torch.
MEMORY_SHAPES = [Shape(1000, 32, 256, 256)]
GPU_SHAPES = [
    Shape(150, 16, 128, 128),
    Shape(100, 64, 512, 512),
    Shape(100, 64, 512, 512, 2, True),
    Shape(25, 128, 1024, 1024),
    Shape(1000, 32, 256, 256),
    # Stacked unidirectional layers with short steps: where the wavefront (L + T - 1 sequential
    # steps instead of L * T) should pay on a GPU.
    Shape(200, 16, 128, 128, 4),
]


@dataclasses.dataclass
class Timing:
    implementation: str
    forward_s: float | None = None
    forward_backward_s: float | None = None
    compile_s: float | None = None  # first call of the last kind timed: trace + compile + run
    activation_bytes: int | None = None  # tensors saved by the forward pass for the backward
    peer: bool = False  # one of the JAX peers that jaxlstm is ranked against


@dataclasses.dataclass
class Candidate:
    """One implementation of one shape: zero-argument callables that block until done."""

    name: str
    forward: Callable[[], object]
    forward_backward: Callable[[], object] | None = None  # None: timed forward only
    activation_bytes: Callable[[], int] | None = None
    # An optional candidate that fails on its first call is left out of the run (with the
    # reason printed) instead of ending it.
    optional: bool = False
    peer: bool = False  # a JAX peer: the fastest of them is a second anchor for the ratios


class LeftOut(Exception):
    """Raised by an optional candidate's first call to leave it out of the run; the message is
    the reason, printed and recorded as it is."""


def peer(name: str, build: Callable[[], Candidate]) -> Candidate:
    """The optional JAX peer ``build()`` returns, named ``name``; when building it fails (its
    package is missing, say) a stand-in whose first call raises that error, so that the run
    leaves it out with the reason."""
    try:
        candidate = build()
    except Exception as error:  # any failure (a missing package, say) leaves the peer out
        def fail(error=error):
            raise error
        candidate = Candidate(name, fail, fail)
    candidate.name, candidate.optional, candidate.peer = name, True, True
    return candidate


def torch_lstm(shape: Shape) -> torch.nn.LSTM:
    """The torch ``nn.LSTM`` of ``shape`` every implementation takes its weights from (seed 0)."""
    torch.manual_seed(0)
    return torch.nn.LSTM(shape.input_size, shape.hidden_size, shape.num_layers,
                         bidirectional=shape.bidirectional, batch_first=shape.batch_first)


def time_major_inputs(shape: Shape, seed: int = 0) -> np.ndarray:
    """``(T, B, I)`` standard normal inputs."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((shape.seq_len, shape.batch, shape.input_size)).astype(np.float32)


def _inputs(shape: Shape, seed: int = 0) -> np.ndarray:
    """The inputs every candidate of ``shape`` reads: ``(T, B, I)``, ``(B, T, I)`` batch-first."""
    x = time_major_inputs(shape, seed)
    return np.ascontiguousarray(np.swapaxes(x, 0, 1)) if shape.batch_first else x


def cell_weights(module: torch.nn.LSTM, layer: int, direction: int) -> dict[str, np.ndarray]:
    """One (layer, direction) of ``module`` as ``nn.LSTMCell`` weights (numpy, float32)."""
    _, layers = directions(module.state_dict(), fmt="the benchmark's peers")
    return layers[layer][direction]._asdict()


def random_lengths(shape: Shape, seed: int = 0) -> np.ndarray:
    """Lengths uniform in [1, T] with the longest present, unsorted."""
    rng = np.random.default_rng(seed + 1)
    lengths = rng.integers(1, shape.seq_len + 1, size=shape.batch)
    lengths[rng.integers(shape.batch)] = shape.seq_len
    return lengths


def _residual_bytes(fn: Callable, *args) -> int:
    _, vjp = jax.vjp(fn, *args)
    leaves = jax.tree.leaves(vjp)
    seen, total = set(), 0
    for leaf in leaves:
        if hasattr(leaf, "nbytes") and id(leaf) not in seen:
            seen.add(id(leaf))
            total += leaf.nbytes
    return total


def jax_candidate(name: str, run: Callable, weights, x, *, saved: bool = True) -> Candidate:
    """A JAX implementation ``run(weights, x) -> output``: its jitted forward, and the gradient
    of ``sum(output)`` with respect to ``weights`` and ``x`` (and, with ``saved``, the size of
    what its forward pass keeps for the backward pass)."""
    forward = jax.jit(run)
    grad = jax.jit(jax.grad(lambda w, x: jnp.sum(run(w, x)), argnums=(0, 1)))
    return Candidate(
        name,
        lambda: jax.block_until_ready(forward(weights, x)),
        lambda: jax.block_until_ready(grad(weights, x)),
        (lambda: _residual_bytes(run, weights, x)) if saved else None,
    )


def jaxlstm_candidate(module: torch.nn.Module, shape: Shape, device, *, name: str = "jaxlstm",
                      seq_lengths: np.ndarray | None = None, precision=None,
                      **options) -> Candidate:
    model = jaxlstm.from_torch(module, **options)
    config = model.config
    params = jax.device_put(model.params(), device)
    x = jax.device_put(_inputs(shape), device)
    lengths = None if seq_lengths is None else jax.device_put(jnp.asarray(seq_lengths), device)
    unroll, remat, wavefront = model.unroll, model.remat, model.wavefront

    def run(params, x):
        out, _ = functional.lstm(params, x, config=config, seq_lengths=lengths,
                                 precision=precision, unroll=unroll, remat=remat,
                                 wavefront=wavefront)
        return out

    return jax_candidate(name, run, params, x)


def flax_candidate(module: torch.nn.LSTM, shape: Shape, device) -> Candidate:
    """Flax's own ``OptimizedLSTMCell`` in ``nnx.RNN`` (``nnx.Bidirectional``), layers stacked,
    with ``module``'s weights (``jaxlstm.formats.flax.to_nnx_cell``)."""
    from jaxlstm.formats.flax import to_nnx_cell

    time_major = not shape.batch_first

    def rnn(layer, direction):
        cell = to_nnx_cell(cell_weights(module, layer, direction), optimized=True,
                           merge_biases=True)
        return nnx.RNN(cell, time_major=time_major)

    layers = []
    for layer in range(shape.num_layers):
        if shape.bidirectional:
            layers.append(nnx.Bidirectional(rnn(layer, 0), rnn(layer, 1), time_major=time_major))
        else:
            layers.append(rnn(layer, 0))
    graphdef, state, rest = nnx.split(nnx.List(layers), nnx.Param, ...)
    state = jax.device_put(state, device)
    x = jax.device_put(_inputs(shape), device)

    zeros = jnp.zeros((shape.batch, shape.hidden_size), jnp.float32)
    carry = ((zeros, zeros), (zeros, zeros)) if shape.bidirectional else (zeros, zeros)

    def run(state, x):
        for layer in nnx.merge(graphdef, state, rest):
            x = layer(x, initial_carry=carry)
        return x

    return jax_candidate("flax OptimizedLSTMCell", run, state, x)


def _layers_time_major(shape: Shape, layer_fn: Callable, weights, x):
    """``layer_fn(layer_weights, x)`` over each layer in turn, on time-major ``x`` (the input
    transposed from and the output back to batch-first when ``shape.batch_first``)."""
    if shape.batch_first:
        x = jnp.swapaxes(x, 0, 1)
    for layer in weights:
        x = layer_fn(layer, x)
    return jnp.swapaxes(x, 0, 1) if shape.batch_first else x


def equinox_candidate(module: torch.nn.LSTM, shape: Shape, device) -> Candidate:
    """``equinox.nn.LSTMCell`` (vmapped over the batch) in one ``jax.lax.scan`` per layer and
    direction, with ``module``'s weights (``jaxlstm.formats.equinox.to_equinox_cell``); the
    reverse direction scans backwards and is concatenated after the forward one, as torch."""
    from jaxlstm.formats.equinox import to_equinox_cell

    cells = [[to_equinox_cell(cell_weights(module, layer, d), merge_biases=True)
              for d in range(shape.directions)] for layer in range(shape.num_layers)]
    cells = jax.device_put(cells, device)
    x = jax.device_put(_inputs(shape), device)
    zeros = jnp.zeros((shape.batch, shape.hidden_size), jnp.float32)

    def direction(cell, x, reverse):
        step = jax.vmap(cell)

        def body(state, x_t):
            state = step(x_t, state)
            return state, state[0]

        return jax.lax.scan(body, (zeros, zeros), x, reverse=reverse)[1]

    def layer(cells, x):
        return jnp.concatenate([direction(c, x, reverse=d == 1) for d, c in enumerate(cells)],
                               axis=-1)

    def run(cells, x):
        return _layers_time_major(shape, layer, cells, x)

    return jax_candidate("equinox LSTMCell", run, cells, x)


def keras_candidate(module: torch.nn.LSTM, shape: Shape, device) -> Candidate:
    """Keras 3's ``keras.layers.LSTM`` on the JAX backend (``Bidirectional`` for two
    directions), one layer per torch layer, with ``module``'s weights
    (``jaxlstm.formats.keras.to_keras_lstm``), run as a pure jitted function:
    ``layer.stateless_call`` over the trainable variables."""
    from jaxlstm.formats import keras as keras_format

    keras = keras_format._keras()  # after the module above chose the JAX backend
    if keras.backend.backend() != "jax":
        raise RuntimeError(f"Keras runs on the {keras.backend.backend()!r} backend here; "
                           "set KERAS_BACKEND=jax before keras is first imported")
    layers = []
    for index in range(shape.num_layers):
        weights = {name: value for d in range(shape.directions)
                   for name, value in torch_names(cell_weights(module, index, d), layer=0,
                                                  direction=d).items()}
        layer = keras_format.to_keras_lstm(weights, merge_biases=True, return_state=False)
        for lstm in ([layer.forward_layer, layer.backward_layer] if shape.bidirectional
                     else [layer]):
            # Keras' defaults are torch's gates; a change in a Keras release would show here.
            if (lstm.activation is not keras.activations.tanh
                    or lstm.recurrent_activation is not keras.activations.sigmoid):
                raise ValueError(f"Keras LSTM {lstm.name!r} does not use tanh and sigmoid gates")
        layers.append(layer)
    trainable = jax.device_put(
        [[jnp.asarray(v.value) for v in layer.trainable_variables] for layer in layers], device)
    fixed = [[jnp.asarray(v.value) for v in layer.non_trainable_variables] for layer in layers]
    x = jax.device_put(_inputs(shape), device)

    def run(trainable, x):
        if not shape.batch_first:  # Keras reads (B, T, I)
            x = jnp.swapaxes(x, 0, 1)
        for layer, values, other in zip(layers, trainable, fixed):
            x, _ = layer.stateless_call(values, other, x)
        return x if shape.batch_first else jnp.swapaxes(x, 0, 1)

    return jax_candidate("keras LSTM", run, trainable, x)


# torchax traces torch's LSTM step by step into one unrolled program, so its first calls (trace
# and XLA compile of the forward and of the gradient) grow with the steps it unrolls, n = T x
# layers x directions, faster than n: on the 2-core development machine the two first calls took
# 4.8 s at n=20, 10 s at n=50 and 190 s (5 GB while compiling) at n=200, about
# TORCHAX_FIRST_CALL_S * n**2. Shapes whose estimate passes TORCHAX_MAX_FIRST_CALL_S leave it out.
TORCHAX_FIRST_CALL_S = 0.0045
TORCHAX_MAX_FIRST_CALL_S = 60.0


def torchax_steps(shape: Shape) -> int:
    """The LSTM steps torchax unrolls for ``shape``."""
    return shape.seq_len * shape.num_layers * shape.directions


def torchax_first_call_s(shape: Shape) -> float:
    """The estimated seconds of torchax's first forward and forward+backward calls."""
    return TORCHAX_FIRST_CALL_S * torchax_steps(shape) ** 2


def _import_torchax():
    """``torchax`` with its operator tables loaded.

    torchax 0.0.13 lists, in tables of operators it handles, named-tensor overloads
    (``aten.prod.dim_Dimname`` and the like) that torch 2.13 no longer has, and fails on import
    with an ``AttributeError``. While it builds those tables (its import and its first
    environment), a missing overload reads as an unused placeholder key; torch is restored
    afterwards, and nothing that runs looks those overloads up.
    """
    from torch import _ops

    lookup = _ops.OpOverloadPacket.__getattr__

    def tolerant(self, key):
        try:
            return lookup(self, key)
        except AttributeError:
            if key.startswith("__"):
                raise
            return ("missing overload", self._qualified_op_name, key)

    _ops.OpOverloadPacket.__getattr__ = tolerant
    try:
        import torchax

        torchax.default_env()
    finally:
        _ops.OpOverloadPacket.__getattr__ = lookup
    return torchax


def torchax_candidate(module: torch.nn.LSTM, shape: Shape, device) -> Candidate:
    """torch's own ``nn.LSTM`` run as a JAX function by torchax (``torchax.extract_jax``), with
    ``module``'s weights; left out where its unrolled first call would take too long."""
    estimate = torchax_first_call_s(shape)
    if estimate > TORCHAX_MAX_FIRST_CALL_S:
        def too_long():
            raise LeftOut(f"torchax unrolls every step: first call estimated at {estimate:.0f} s "
                          f"({torchax_steps(shape)} steps; limit "
                          f"{TORCHAX_MAX_FIRST_CALL_S:.0f} s)")
        return Candidate("torchax nn.LSTM", too_long, too_long)
    torchax = _import_torchax()
    weights, forward = torchax.extract_jax(copy.deepcopy(module).cpu())
    weights = jax.device_put(weights, device)
    x = jax.device_put(_inputs(shape), device)

    def run(weights, x):
        return forward(weights, (x,))[0]

    return jax_candidate("torchax nn.LSTM", run, weights, x)


def cudnn_weights(params: dict, config) -> jnp.ndarray:
    """torch-named LSTM parameters as the flat vector ``jax.experimental.rnn`` takes (cuDNN's
    layout): every (layer, direction)'s ``W_ih`` then ``W_hh``, then every one's ``b_ih`` then
    ``b_hh``, gates in torch's order."""
    if not config.bias or config.proj_size:
        raise ValueError("jax.experimental.rnn takes LSTMs with biases and without a projection; "
                         f"got bias={config.bias}, proj_size={config.proj_size}")
    suffixes = [param_suffix(layer, d) for layer in range(config.num_layers)
                for d in range(config.num_directions)]
    names = [f"weight_{k}{s}" for s in suffixes for k in ("ih", "hh")]
    names += [f"bias_{k}{s}" for s in suffixes for k in ("ih", "hh")]
    return jnp.concatenate([jnp.ravel(params[name]) for name in names])


def jax_rnn_candidate(module: torch.nn.Module, shape: Shape, device, precision=None) -> Candidate:
    """``jax.experimental.rnn.lstm`` (cuDNN through XLA; GPU only), batch-first as it expects."""
    from jax.experimental import rnn

    model = jaxlstm.from_torch(module)
    config = model.config
    weights = jax.device_put(cudnn_weights(model.params(), config), device)
    x = jax.device_put(np.swapaxes(time_major_inputs(shape), 0, 1), device)
    state = jax.device_put(jnp.zeros((config.num_directions * config.num_layers, shape.batch,
                                      config.hidden_size), jnp.float32), device)
    lengths = jax.device_put(jnp.full((shape.batch,), shape.seq_len, jnp.int32), device)

    def run(weights, x):
        y, _, _ = rnn.lstm(x, state, state, weights, lengths, config.input_size,
                           config.hidden_size, config.num_layers, 0.0, config.bidirectional,
                           precision=precision)
        return y

    candidate = jax_candidate("jax.experimental.rnn", run, weights, x)
    candidate.optional = True
    return candidate


def _torch_saved_bytes(fn: Callable[[], torch.Tensor]) -> int:
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(storages.values())


def torch_candidate(module: torch.nn.Module, shape: Shape, device: str,
                    name: str = "torch") -> Candidate:
    module = module.to(device)
    x = torch.from_numpy(_inputs(shape)).to(device)
    x_grad = x.clone().requires_grad_(True)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def forward():
        with torch.no_grad():
            out = module(x)[0]
        sync()
        return out

    def forward_backward():
        module.zero_grad(set_to_none=True)
        x_grad.grad = None
        module(x_grad)[0].sum().backward()
        sync()

    return Candidate(name, forward, forward_backward,
                     lambda: _torch_saved_bytes(lambda: module(x_grad)[0]))


def time_candidates(candidates: list[Candidate], rounds: int, per_round: int, warmup: int = 2,
                    kinds: tuple[str, ...] = ("forward", "forward_backward"),
                    on_step: Callable[[str], None] | None = None,
                    left_out: dict[str, str] | None = None) -> list[Timing]:
    """Medians over ``rounds`` interleaved rounds of ``per_round`` calls each of ``kinds``
    (``"forward"``, ``"forward_backward"``); ``compile_s`` is the first call of the last kind
    in ``kinds``. ``on_step(done)`` is called after each candidate's first calls and after each
    candidate's turn in every round, ``len(candidates) * (rounds + 1)`` steps in all (fewer
    when an optional candidate is left out), with what was just done. An optional candidate
    whose first call fails is left out with the reason printed to stderr and, when
    ``left_out`` is given, stored there under its name."""
    step = on_step or (lambda done: None)
    for c in candidates:
        missing = [kind for kind in kinds if getattr(c, kind) is None]
        if missing:
            raise ValueError(f"candidate {c.name!r} has no {missing[0]} to time; pass "
                             f"kinds=('forward',) to time forward passes only")
    timings: dict[str, Timing] = {}
    running = []
    for c in candidates:
        start = time.perf_counter()
        try:
            getattr(c, kinds[-1])()
        except Exception as error:
            if not c.optional:
                raise
            reason = str(error) if isinstance(error, LeftOut) else (
                f"{type(error).__name__}: {error}")
            print(f"left out {c.name}: {reason}", file=sys.stderr)
            if left_out is not None:
                left_out[c.name] = reason
            step(f"left out {c.name}")
            continue
        running.append(c)
        timings[c.name] = Timing(c.name, compile_s=time.perf_counter() - start, peer=c.peer)
        for _ in range(warmup):
            for kind in kinds:
                getattr(c, kind)()
        if c.activation_bytes is not None:
            timings[c.name].activation_bytes = int(c.activation_bytes())
        step(f"compiled {c.name}")
    samples: dict[tuple[str, str], list[float]] = {}
    for round_ in range(rounds):
        for c in running:
            for kind in kinds:
                fn = getattr(c, kind)
                # One untimed call first: torch's threads spin for a while after a parallel
                # region and would otherwise take cores from whatever is timed next, and a
                # sleep instead would leave every implementation's next call cold.
                fn()
                gc.collect()
                gc.disable()  # as timeit does: no collection pauses inside a timed block
                start = time.perf_counter()
                for _ in range(per_round):
                    fn()
                elapsed = time.perf_counter() - start
                gc.enable()
                samples.setdefault((c.name, kind), []).append(elapsed / per_round)
            step(f"round {round_ + 1}/{rounds} {c.name}")
    for (name, kind), values in samples.items():
        setattr(timings[name], f"{kind}_s", float(np.median(values)))
    return list(timings.values())
