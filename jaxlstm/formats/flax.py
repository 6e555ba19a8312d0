"""Flax ``LSTMCell`` / ``OptimizedLSTMCell`` (Linen and NNX) <-> torch-named weights.

Flax's layouts, as ``flax/linen/recurrent.py`` and ``flax/nnx/nn/recurrent.py`` define them
(gates in torch's order i, f, g, o; kernels are ``(in, out)``, the transpose of torch's):

- Linen ``LSTMCell`` and ``OptimizedLSTMCell`` (same names): ``{"ii", "if", "ig", "io"}`` each
  ``{"kernel": (I, H)}``; ``{"hi", "hf", "hg", "ho"}`` each ``{"kernel": (H, H), "bias": (H,)}``.
- NNX ``LSTMCell``: the same with ``"if_"`` for ``"if"``.
- NNX ``OptimizedLSTMCell``: ``{"dense_i": {"kernel": (I, 4H)}, "dense_h": {"kernel": (H, 4H),
  "bias": (4H,)}}``.

Flax keeps one bias per gate (on the recurrent side) and carries ``(c, h)``, where torch and
jaxlstm carry ``(h, c)``. Importing puts Flax's bias in ``bias_ih`` and zeros in ``bias_hh``.
Exporting torch's two biases needs ``merge_biases=True`` unless one of them is zero (see
:func:`jaxlstm.formats._common.one_bias`). Flax cells always have a bias: a bias-free torch
cell is exported with zero biases (the same outputs). Only the default activations (sigmoid
gates, tanh) are accepted; anything else computes a different function.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlstm.arrays import resolve_param_dtype, to_numpy
from jaxlstm.config import check_params
from jaxlstm.formats._common import one_bias, single_cell, split_bias

if TYPE_CHECKING:  # the modules are built only when asked for, never to read a file
    from jaxlstm.nnx import LSTMCell

_GATES = ("i", "f", "g", "o")
FMT = "a Flax LSTMCell"


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _tree(source: Any) -> dict[str, Any]:
    """A Flax cell's parameters as a plain nested dict."""
    from flax import nnx

    if isinstance(source, nnx.Module):
        if not isinstance(source, (nnx.LSTMCell, nnx.OptimizedLSTMCell)):
            raise TypeError(
                f"expected a flax.nnx.LSTMCell or OptimizedLSTMCell, got {type(source).__name__}"
            )
        _check_activations(source)
        source = nnx.state(source, nnx.Param)
    elif hasattr(source, "gate_fn"):  # an unbound Linen module carries no parameters
        raise TypeError(
            f"a Linen {type(source).__name__} holds no weights; pass its parameters, e.g. "
            "variables = cell.init(...) or variables['params']"
        )
    if isinstance(source, nnx.State):
        source = nnx.to_pure_dict(source)
    if not isinstance(source, Mapping):
        raise TypeError(
            "expected a Flax LSTMCell's parameters (a nnx module, nnx.State or Linen params "
            f"dict), got {type(source).__name__}"
        )
    if set(source) == {"params"}:
        source = source["params"]
    return {str(k): v for k, v in source.items()}


def _check_activations(cell: Any) -> None:
    if cell.gate_fn is not jax.nn.sigmoid or cell.activation_fn not in (jnp.tanh, jax.nn.tanh):
        raise ValueError(
            "this Flax cell uses custom gate_fn/activation_fn; torch's LSTM (and jaxlstm) "
            "computes sigmoid gates and tanh, so its weights would compute something else"
        )


def from_flax_cell(source: Any) -> dict[str, np.ndarray]:
    """torch ``nn.LSTMCell`` weights from a Flax ``LSTMCell`` / ``OptimizedLSTMCell``.

    **Arguments:**

    - ``source``: a ``flax.nnx.LSTMCell`` or ``OptimizedLSTMCell``, its ``nnx.State``, or the
      parameters of a Linen ``LSTMCell``/``OptimizedLSTMCell`` (``variables`` or
      ``variables["params"]``).

    Returns ``{"weight_ih": (4H, I), "weight_hh": (4H, H), "bias_ih": (4H,), "bias_hh": (4H,)}``
    with Flax's bias in ``bias_ih`` and zeros in ``bias_hh``. Missing, unexpected or mis-shaped
    Flax parameters are named (``"hf/kernel"``) in the error.
    """
    tree = _tree(source)
    flat = {k: to_numpy(v, k) for k, v in _flatten(tree).items()}
    if "dense_i" in tree or "dense_h" in tree:  # NNX OptimizedLSTMCell
        input_size, hidden = _sizes(flat, "dense_i/kernel", 4)
        expected = {"dense_i/kernel": (input_size, 4 * hidden),
                    "dense_h/kernel": (hidden, 4 * hidden), "dense_h/bias": (4 * hidden,)}
        check_params(flat, expected, what="Flax OptimizedLSTMCell")
        weight_ih, weight_hh = flat["dense_i/kernel"].T, flat["dense_h/kernel"].T
        bias = flat["dense_h/bias"]
    else:
        forget = "if_" if "if_" in tree else "if"  # NNX renames Linen's "if" (a keyword)
        inputs = [f"i{g}" if g != "f" else forget for g in _GATES]
        input_size, hidden = _sizes(flat, f"{inputs[0]}/kernel", 1)
        expected = {f"{name}/kernel": (input_size, hidden) for name in inputs}
        for gate in _GATES:
            expected[f"h{gate}/kernel"] = (hidden, hidden)
            expected[f"h{gate}/bias"] = (hidden,)
        check_params(flat, expected, what="Flax LSTMCell")
        weight_ih = np.concatenate([flat[f"{name}/kernel"].T for name in inputs])
        weight_hh = np.concatenate([flat[f"h{g}/kernel"].T for g in _GATES])
        bias = np.concatenate([flat[f"h{g}/bias"] for g in _GATES])
    return {"weight_ih": weight_ih, "weight_hh": weight_hh, **split_bias(bias)}


def _sizes(flat: Mapping[str, np.ndarray], key: str, gates: int) -> tuple[int, int]:
    if key not in flat:
        found = ", ".join(sorted(flat)) or "nothing"
        raise ValueError(f"Flax LSTMCell parameters: missing {key!r} (found: {found})")
    shape = flat[key].shape
    if len(shape) != 2 or shape[1] % gates:
        raise ValueError(f"Flax LSTMCell parameter {key!r} has shape {shape}; expected "
                         f"(input_features, {'4 * ' if gates == 4 else ''}hidden_features)")
    return shape[0], shape[1] // gates


def _cell_arrays(state_dict: Mapping[str, Any], merge_biases: bool):
    cell = single_cell(state_dict, fmt=FMT)
    bias = one_bias(cell, fmt=FMT, merge_biases=merge_biases)
    if bias is None:
        bias = np.zeros(cell.weight_ih.shape[0], cell.weight_ih.dtype)
    return cell.weight_ih, cell.weight_hh, bias


def to_linen_params(
    state_dict: Mapping[str, Any], *, merge_biases: bool = False
) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """Linen ``LSTMCell``/``OptimizedLSTMCell`` variables from torch-named weights.

    **Arguments:**

    - ``state_dict``: an ``nn.LSTMCell``, or a 1-layer unidirectional ``nn.LSTM`` without
      projection (anything else raises: a Flax cell is one layer in one direction).
    - ``merge_biases``: store ``bias_ih + bias_hh`` as Flax's one bias.

    Returns ``{"params": {...}}`` for ``cell.apply(variables, (c, h), x)``.
    """
    weight_ih, weight_hh, bias = _cell_arrays(state_dict, merge_biases)
    w_i, w_h, b = (np.split(a, 4) for a in (weight_ih, weight_hh, bias))
    params: dict[str, dict[str, np.ndarray]] = {}
    for index, gate in enumerate(_GATES):
        params[f"i{gate}"] = {"kernel": w_i[index].T}
        params[f"h{gate}"] = {"kernel": w_h[index].T, "bias": b[index]}
    return {"params": params}


def to_nnx_cell(
    state_dict: Mapping[str, Any], *, optimized: bool = False, merge_biases: bool = False
) -> Any:
    """A ``flax.nnx.LSTMCell`` (``optimized=True``: ``OptimizedLSTMCell``) holding the weights.

    **Arguments:**

    - ``state_dict``: an ``nn.LSTMCell``, or a 1-layer unidirectional ``nn.LSTM`` without
      projection.
    - ``optimized``: build an ``OptimizedLSTMCell`` (one fused ``(I, 4H)`` kernel).
    - ``merge_biases``: store ``bias_ih + bias_hh`` as Flax's one bias.

    The cell's ``param_dtype`` is the weights' dtype.
    """
    from flax import nnx

    pure = nnx_pure_dict(state_dict, optimized=optimized, merge_biases=merge_biases)
    flat = _flatten(pure)
    dtype = resolve_param_dtype(flat, None)
    # Input kernels are (I, ·), recurrent kernels (H, ·) in both layouts.
    input_size = flat["dense_i/kernel" if optimized else "ii/kernel"].shape[0]
    hidden = flat["dense_h/kernel" if optimized else "hi/kernel"].shape[0]
    kind = nnx.OptimizedLSTMCell if optimized else nnx.LSTMCell
    cell = kind(input_size, hidden, param_dtype=dtype, rngs=nnx.Rngs(0))
    state = nnx.state(cell, nnx.Param)
    nnx.replace_by_pure_dict(state, jax.tree.map(lambda a: jnp.asarray(a, dtype), pure))
    nnx.update(cell, state)
    return cell


def nnx_pure_dict(
    state_dict: Mapping[str, Any], *, optimized: bool = False, merge_biases: bool = False
) -> dict[str, dict[str, np.ndarray]]:
    """The ``nnx.state(cell, nnx.Param).to_pure_dict()`` layout of an NNX (Optimized)LSTMCell."""
    if optimized:
        weight_ih, weight_hh, bias = _cell_arrays(state_dict, merge_biases)
        return {"dense_i": {"kernel": weight_ih.T},
                "dense_h": {"kernel": weight_hh.T, "bias": bias}}
    params = dict(to_linen_params(state_dict, merge_biases=merge_biases)["params"])
    params["if_"] = params.pop("if")
    return params


def flax_cell_to_jaxlstm(source: Any, **kwargs: Any) -> LSTMCell:
    """A :class:`jaxlstm.LSTMCell` with a Flax cell's weights (``kwargs`` go to
    :func:`jaxlstm.nnx.from_weights`).

    Call it with ``(h, c)``: Flax's ``(c, h)`` carry swapped.
    """
    from jaxlstm.nnx import LSTMCell, from_weights

    model = from_weights(from_flax_cell(source), **kwargs)
    assert isinstance(model, LSTMCell)
    return model


def write_msgpack(
    state_dict: Mapping[str, Any], path: str | os.PathLike[str], *, layout: str = "linen",
    merge_biases: bool = False,
) -> None:
    """Write the Flax variables as msgpack (``flax.serialization``).

    **Arguments:**

    - ``layout``: ``"linen"`` (``{"params": ...}`` of ``LSTMCell``/``OptimizedLSTMCell``),
      ``"nnx"`` or ``"nnx-optimized"`` (the pure dict of the NNX cell's ``nnx.Param`` state; load
      it with ``state.replace_by_pure_dict(flax.serialization.msgpack_restore(data))``).
    """
    from flax import serialization

    if layout == "linen":
        tree: dict = to_linen_params(state_dict, merge_biases=merge_biases)
    elif layout in ("nnx", "nnx-optimized"):
        tree = nnx_pure_dict(state_dict, optimized=layout == "nnx-optimized",
                             merge_biases=merge_biases)
    else:
        raise ValueError(f"layout must be 'linen', 'nnx' or 'nnx-optimized', got {layout!r}")
    with open(path, "wb") as handle:
        handle.write(serialization.msgpack_serialize(tree))
