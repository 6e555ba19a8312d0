"""Validated LSTM configurations and the torch parameter layout derived from them.

Every check here raises the exception type and message that ``torch.nn.LSTM`` /
``torch.nn.LSTMCell`` raise for the same mistake, so code that handles torch's errors
handles ours. Where torch accepts a value that cannot work (``LSTMCell(3, 0)``), we raise
the message torch uses for the same argument of ``nn.LSTM``.
"""

from __future__ import annotations

import dataclasses
import numbers
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxlstm.gates import check_gate_activation


def _check_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")


def check_dropout(dropout: object) -> None:
    if (
        not isinstance(dropout, numbers.Number)
        or isinstance(dropout, bool)
        or not 0 <= dropout <= 1  # type: ignore[operator]
    ):
        raise ValueError(
            "dropout should be a number in range [0, 1] representing the probability of an "
            "element being zeroed"
        )


def _check_bool(name: str, value: object) -> None:
    # torch checks these two flags exactly (``bias=0`` is a TypeError), not ``bidirectional``.
    if not isinstance(value, bool):
        raise TypeError(f"{name} should be of type bool, got: {type(value).__name__}")


def _check_sizes(input_size: object, hidden_size: object) -> None:
    _check_int("input_size", input_size)
    _check_int("hidden_size", hidden_size)
    if input_size <= 0:  # type: ignore[operator]
        raise ValueError("input_size must be greater than zero")
    if hidden_size <= 0:  # type: ignore[operator]
        raise ValueError("hidden_size must be greater than zero")


@dataclasses.dataclass(frozen=True)
class LSTMConfig:
    """The architecture of a multi-layer LSTM, exactly ``torch.nn.LSTM``'s arguments.

    Hashable, so it can be a static argument of ``jax.jit``. Construct it through
    :meth:`create` (or the module constructors), which validates like torch does.
    ``gate_activation`` (not torch's: torch's gates are always ``"sigmoid"``) is ``"sigmoid"``
    or a :class:`~jaxlstm.gates.HardSigmoid` (Keras, ONNX).
    """

    input_size: int
    hidden_size: int
    num_layers: int = 1
    bias: bool = True
    batch_first: bool = False
    dropout: float = 0.0
    bidirectional: bool = False
    proj_size: int = 0
    gate_activation: Any = "sigmoid"

    @classmethod
    def create(
        cls,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        gate_activation: Any = "sigmoid",
    ) -> LSTMConfig:
        """Validate the arguments in torch's order and with torch's messages."""
        check_dropout(dropout)
        _check_int("num_layers", num_layers)
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout option adds dropout after all but last recurrent layer, so non-zero "
                "dropout expects num_layers greater than 1, but got "
                f"dropout={dropout} and num_layers={num_layers}",
                stacklevel=3,
            )
        _check_bool("bias", bias)
        _check_bool("batch_first", batch_first)
        _check_sizes(input_size, hidden_size)
        _check_int("proj_size", proj_size)
        if num_layers <= 0:
            raise ValueError("num_layers must be greater than zero")
        if proj_size < 0:
            raise ValueError(
                "proj_size should be a positive integer or zero to disable projections"
            )
        if proj_size >= hidden_size:
            raise ValueError("proj_size has to be smaller than hidden_size")
        gate_activation = check_gate_activation(gate_activation)
        return cls(
            input_size=input_size,
            hidden_size=hidden_size,
            num_layers=num_layers,
            bias=bool(bias),
            batch_first=bool(batch_first),
            dropout=float(dropout),
            bidirectional=bool(bidirectional),
            proj_size=proj_size,
            gate_activation=gate_activation,
        )

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """Size of ``h`` and of each direction's ``output`` slice: ``proj_size or hidden_size``."""
        return self.proj_size or self.hidden_size

    def param_groups(self) -> list[list[str]]:
        """torch's ``_all_weights``: the parameter names of each ``(layer, direction)``, in the
        order ``layer * D + direction``, each group in ``state_dict`` order."""
        return [
            [name for name in self.param_shapes() if name.endswith(param_suffix(layer, d))]
            for layer in range(self.num_layers)
            for d in range(self.num_directions)
        ]

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """torch's ``state_dict`` keys and shapes, in torch's order."""
        gates = 4 * self.hidden_size
        shapes: dict[str, tuple[int, ...]] = {}
        for layer in range(self.num_layers):
            layer_input = self.input_size if layer == 0 else self.num_directions * self.output_size
            for direction in range(self.num_directions):
                sfx = param_suffix(layer, direction)
                shapes[f"weight_ih{sfx}"] = (gates, layer_input)
                shapes[f"weight_hh{sfx}"] = (gates, self.output_size)
                if self.bias:
                    shapes[f"bias_ih{sfx}"] = (gates,)
                    shapes[f"bias_hh{sfx}"] = (gates,)
                if self.proj_size:
                    shapes[f"weight_hr{sfx}"] = (self.proj_size, self.hidden_size)
        return shapes


@dataclasses.dataclass(frozen=True)
class LSTMCellConfig:
    """The architecture of a single LSTM cell, exactly ``torch.nn.LSTMCell``'s arguments, and
    ``gate_activation`` as in :class:`LSTMConfig`."""

    input_size: int
    hidden_size: int
    bias: bool = True
    gate_activation: Any = "sigmoid"

    @classmethod
    def create(cls, input_size: int, hidden_size: int, bias: bool = True,
               gate_activation: Any = "sigmoid") -> LSTMCellConfig:
        _check_sizes(input_size, hidden_size)
        return cls(input_size=input_size, hidden_size=hidden_size, bias=bool(bias),
                   gate_activation=check_gate_activation(gate_activation))

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        gates = 4 * self.hidden_size
        shapes: dict[str, tuple[int, ...]] = {
            "weight_ih": (gates, self.input_size),
            "weight_hh": (gates, self.hidden_size),
        }
        if self.bias:
            shapes["bias_ih"] = (gates,)
            shapes["bias_hh"] = (gates,)
        return shapes


def param_suffix(layer: int, direction: int) -> str:
    """torch's parameter-name suffix: ``_l0``, ``_l1_reverse``, ..."""
    return f"_l{layer}" + ("_reverse" if direction == 1 else "")


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(np.shape(value))


def check_params(
    params: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]], *, what: str
) -> None:
    """Raise one error naming every missing, unexpected and mis-shaped parameter."""
    problems = []
    for name, shape in expected.items():
        if name not in params:
            problems.append(f"missing key {name!r} (expected shape {shape})")
        elif _shape(params[name]) != tuple(shape):
            problems.append(
                f"wrong shape for {name!r}: expected {tuple(shape)}, got {_shape(params[name])}"
            )
    for name in params:
        if name not in expected:
            problems.append(f"unexpected key {name!r} (shape {_shape(params[name])})")
    if problems:
        raise ValueError(
            f"{what} parameters do not match the configuration:\n  " + "\n  ".join(problems)
        )


def _check_hx_pair(hx: Any, name: str) -> tuple[Any, Any]:
    if not isinstance(hx, (tuple, list)) or len(hx) != 2:
        raise TypeError(f"{name} must be a tuple (h, c) of two arrays, got {type(hx).__name__}")
    return hx[0], hx[1]


def check_lstm_inputs(config: LSTMConfig, x: Any, hx: Any) -> tuple[Any, Any]:
    """torch's ``nn.LSTM.forward`` argument checks, with its messages. Returns ``(h0, c0)``."""
    ndim = np.ndim(x)
    if ndim not in (2, 3):
        raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {ndim}D instead")
    batched = ndim == 3
    h0 = c0 = None
    if hx is not None:
        h0, c0 = _check_hx_pair(hx, "hx")
        want = 3 if batched else 2
        if np.ndim(h0) != want or np.ndim(c0) != want:
            kind = "batched 3-D" if batched else "unbatched 2-D"
            raise RuntimeError(
                f"For {kind} input, hx and cx should also be {want}-D but got "
                f"({np.ndim(h0)}-D, {np.ndim(c0)}-D) tensors"
            )
    shape = _shape(x)
    if shape[-1] != config.input_size:
        raise RuntimeError(
            "input.size(-1) must be equal to input_size. "
            f"Expected {config.input_size}, got {shape[-1]}"
        )
    time_axis = 1 if (config.batch_first and batched) else 0
    if shape[time_axis] == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
    if hx is not None:
        batch = shape[0 if config.batch_first else 1] if batched else 1
        layers = config.num_directions * config.num_layers
        expected = [(layers, batch, config.output_size), (layers, batch, config.hidden_size)]
        for index, state in enumerate((h0, c0)):
            got = _shape(state) if batched else (_shape(state)[0], 1, *_shape(state)[1:])
            if got != expected[index]:
                raise RuntimeError(
                    f"Expected hidden[{index}] size {expected[index]}, got {list(got)}"
                )
    return h0, c0


def check_cell_inputs(config: LSTMCellConfig, x: Any, hx: Any) -> tuple[Any, Any]:
    """torch's ``nn.LSTMCell.forward`` argument checks, with its messages. Returns ``(h, c)``."""
    ndim = np.ndim(x)
    if ndim not in (1, 2):
        raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {ndim}D instead")
    if hx is None:
        states: tuple[Any, Any] = (None, None)
    else:
        states = _check_hx_pair(hx, "hx")
        for index, state in enumerate(states):
            if np.ndim(state) not in (1, 2):
                raise ValueError(
                    f"LSTMCell: Expected hx[{index}] to be 1D or 2D, got {np.ndim(state)}D instead"
                )
    shape = _shape(x) if ndim == 2 else (1, *_shape(x))
    if shape[1] != config.input_size:
        raise RuntimeError(
            f"input has inconsistent input_size: got {shape[1]} expected {config.input_size}"
        )
    if hx is not None:
        for index, state in enumerate(states):
            got = _shape(state) if ndim == 2 else (1, *_shape(state))
            if got[0] != shape[0]:
                raise RuntimeError(
                    f"Input batch size {shape[0]} doesn't match hidden{index} batch size {got[0]}"
                )
            if got[1] != config.hidden_size:
                raise RuntimeError(
                    f"hidden{index} has inconsistent hidden_size: got {got[1]}, "
                    f"expected {config.hidden_size}"
                )
            if np.ndim(state) != ndim:
                raise RuntimeError(
                    f"hx[{index}] must be {ndim}-D like the input, got shape {_shape(state)}"
                )
    return states


def check_seq_lengths(seq_lengths: Any, *, num_steps: int, batch: int, batched: bool) -> Any:
    """Validate ``seq_lengths`` and return it as an int32 array of shape ``(N,)``.

    Shape and dtype are always checked; values only when they are concrete (not traced).
    """
    import jax
    import jax.numpy as jnp

    if not isinstance(seq_lengths, jax.core.Tracer):
        seq_lengths = np.asarray(seq_lengths)
    dtype = np.dtype(seq_lengths.dtype)
    if not (np.issubdtype(dtype, np.integer) and not np.issubdtype(dtype, np.bool_)):
        raise TypeError(
            f"seq_lengths must be an integer array, got dtype {dtype}; pass whole-number lengths, "
            "e.g. jnp.asarray(lengths, dtype=jnp.int32)"
        )
    allowed = [(batch,)] if batched else [(), (1,)]
    if tuple(seq_lengths.shape) not in allowed:
        expected = f"({batch},), one length per sequence" if batched else "() for unbatched input"
        raise ValueError(
            f"seq_lengths must have shape {expected}; got shape {tuple(seq_lengths.shape)}"
        )
    seq_lengths = seq_lengths.reshape((batch,))
    if not isinstance(seq_lengths, jax.core.Tracer):
        _check_length_values(seq_lengths, num_steps)
    return jnp.asarray(seq_lengths, jnp.int32)


def _check_length_values(seq_lengths: Any, num_steps: int) -> None:
    values = np.ravel(np.asarray(seq_lengths))
    bad = [(i, int(v)) for i, v in enumerate(values) if not 1 <= v <= num_steps]
    if bad:
        listed = ", ".join(f"{v} at index {i}" for i, v in bad[:10])
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise ValueError(
            f"seq_lengths must lie in [1, {num_steps}] (the sequence length of the input); "
            f"got {listed}{more}"
        )


def check_lengths_at_run_time(seq_lengths: Any, x: Any, *, batch_first: bool) -> None:
    """Raise for ``seq_lengths`` outside ``[1, T]`` even when they are traced (under ``jit``).

    Concrete lengths are checked here at once. Traced ones get a host callback that raises
    torch's ``ValueError`` when the computation runs; under ``jit`` JAX re-raises it as a
    ``jax.errors.JaxRuntimeError`` (a ``RuntimeError``) carrying the same message. The callback
    synchronises with the host on every call, which is why it is opt-in.
    """
    import jax

    num_steps = np.shape(x)[1 if batch_first and np.ndim(x) == 3 else 0]
    if isinstance(seq_lengths, jax.core.Tracer):
        jax.debug.callback(_check_length_values, seq_lengths, num_steps)
    else:
        _check_length_values(seq_lengths, num_steps)


def _dtype_of(value: Any) -> np.dtype:
    import jax

    dtype = value.dtype if hasattr(value, "dtype") else np.asarray(value).dtype
    return np.dtype(jax.dtypes.canonicalize_dtype(dtype))


def check_dtypes(config: LSTMConfig | LSTMCellConfig, weight_dtype: Any, x: Any, hx: Any) -> None:
    """torch's rule when no compute ``dtype`` is given: ``x``, ``h_0`` and ``c_0`` must have the
    weights' dtype (after JAX's canonicalisation, so float64 numpy input is float32 unless
    ``jax_enable_x64``). The input raises what ``nn.LSTM`` raises (``ValueError``, torch's
    message); the states, and any ``LSTMCell`` argument, raise ``RuntimeError`` as torch does."""
    cell = isinstance(config, LSTMCellConfig)
    if np.ndim(x) not in ((1, 2) if cell else (2, 3)):
        return  # torch checks the number of dimensions first; the shape checks raise that
    weights = _dtype_of(np.empty(0, weight_dtype))
    got = _dtype_of(x)
    if got != weights:
        error = RuntimeError if cell else ValueError
        raise error(
            f"{'LSTMCell' if cell else 'RNN'} input dtype ({got}) does not match weight dtype "
            f"({weights}). Convert input: x.astype(jnp.{weights}), or convert model: build it "
            f"with param_dtype=jnp.{got}; dtype=... on the module computes in that dtype instead"
        )
    if not isinstance(hx, (tuple, list)) or len(hx) != 2:
        return  # None, or a malformed hx that the shape checks name
    for index, (name, state) in enumerate(zip(("h_0", "c_0"), hx)):
        got = _dtype_of(state)
        if got != weights:
            raise RuntimeError(
                f"hx[{index}] ({name}) dtype ({got}) does not match weight dtype ({weights}); "
                f"convert it: {name}.astype(jnp.{weights})"
            )
