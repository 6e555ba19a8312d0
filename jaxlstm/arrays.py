"""torch-named LSTM weights as numpy arrays: the bottom layer of porting, free of torch.

Everything that reads or writes weights goes through :func:`to_numpy` (one conversion, one dtype
policy: ``bfloat16``/``float16`` stay what they are) and :func:`check_weights` (the architecture
the weights determine, every key and shape checked). Nothing here imports torch; a torch tensor
is recognised by its ``detach`` method.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlstm.config import LSTMCellConfig, LSTMConfig, check_params

LSTM_KEY = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(\d+)(_reverse)?$")
CELL_KEYS = frozenset({"weight_ih", "weight_hh", "bias_ih", "bias_hh"})
# Module names that model wrappers insert into keys: DataParallel/DistributedDataParallel,
# torch.compile, FSDP, activation checkpointing.
WRAPPER_SEGMENTS = frozenset({"module", "_orig_mod", "_fsdp_wrapped_module",
                              "_checkpoint_wrapped_module"})


def is_array(value: Any) -> bool:
    """True for a torch tensor, a numpy array or a JAX array (not for Python scalars)."""
    return hasattr(value, "detach") or isinstance(value, (np.ndarray, jax.Array))


def to_numpy(value: Any, name: str = "value") -> np.ndarray:
    """A torch tensor, JAX or numpy array as a numpy array of the same dtype, on the host.

    **Arguments:**

    - ``value``: the array; a torch tensor is detached and moved to the CPU first.
    - ``name``: how the error names it when ``value`` is not an array.

    ``bfloat16`` becomes ``ml_dtypes.bfloat16`` (numpy has none of its own), bit for bit.
    """
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch
        tensor = value.detach().cpu().contiguous()
        if str(tensor.dtype) == "torch.bfloat16":
            import ml_dtypes

            return tensor.view(_torch_int16()).numpy().view(ml_dtypes.bfloat16)
        return tensor.numpy()
    array = np.asarray(value)
    if array.dtype == object:
        raise TypeError(f"{name!r} is not an array (got {type(value).__name__})")
    return array


def _torch_int16() -> Any:
    import torch

    return torch.int16


def flatten_arrays(tree: Any, prefix: str = "") -> tuple[dict[str, Any], list[str]]:
    """The arrays in nested mappings, lists and tuples, under dotted keys.

    **Arguments:**

    - ``tree``: a state dict, a training checkpoint (``{'step': ..., 'model_state': {...},
      'optimizer_state': {...}}``), or any nesting of dicts/lists/tuples with arrays as leaves.
    - ``prefix``: prepended to every key.

    Returns ``(arrays, skipped)``: ``{"model_state.encoder.rnn.weight_ih_l0": array, ...}`` and
    the dotted keys of leaves that are not arrays (``step``, learning rates, strings).
    """
    arrays: dict[str, Any] = {}
    skipped: list[str] = []
    if isinstance(tree, Mapping):
        items: Any = ((str(key), value) for key, value in tree.items())
    elif isinstance(tree, (list, tuple)):
        items = ((str(index), value) for index, value in enumerate(tree))
    else:
        raise TypeError(f"expected a mapping, list or tuple of arrays, got {type(tree).__name__}")
    for key, value in items:
        name = prefix + key
        if is_array(value):
            arrays[name] = value
        elif isinstance(value, (Mapping, list, tuple)) and value:
            nested, nested_skipped = flatten_arrays(value, name + ".")
            arrays.update(nested)
            skipped += nested_skipped
        else:
            skipped.append(name)
    return arrays, skipped


def _not_an_lstm(shape: Mapping[str, tuple[int, ...]]) -> str | None:
    """``"GRU"``/``"RNN"`` (or their cells) when the weights are theirs, else ``None``.

    They share an LSTM's key names; their ``weight_hh`` stacks 3 (GRU) or 1 (RNN) gates:
    ``(3H, H)`` / ``(H, H)``. An LSTM's is ``(4H, H)``, or ``(4H, P)`` with ``P < H`` under a
    projection: never a ratio of 1 or 3.
    """
    if any(key.startswith("weight_hr") for key in shape):
        return None
    for key in ("weight_hh_l0", "weight_hh"):
        if key in shape and len(shape[key]) == 2 and shape[key][1]:
            rows, cols = shape[key]
            kind = {cols: "RNN", 3 * cols: "GRU"}.get(rows)
            return None if kind is None else kind + ("Cell" if key == "weight_hh" else "")
    return None


def recurrent_kind(state_dict: Mapping[str, Any]) -> str | None:
    """``"GRU"``, ``"RNN"``, ``"GRUCell"``, ``"RNNCell"`` for those modules' weights, else ``None``.

    **Arguments:**

    - ``state_dict``: torch-named weights of one module (no prefix).
    """
    return _not_an_lstm({str(k): tuple(np.shape(v)) for k, v in state_dict.items()})


def infer_config(state_dict: Mapping[str, Any]) -> LSTMConfig | LSTMCellConfig:
    """The architecture that torch-named weights determine: sizes, layers, directions, proj, bias.

    **Arguments:**

    - ``state_dict``: ``{torch name: array}`` of one ``nn.LSTM`` or ``nn.LSTMCell``.

    ``batch_first`` and ``dropout`` are not in the weights; they take torch's defaults here.
    ``nn.GRU``/``nn.RNN`` weights raise a ``ValueError`` that says so.
    """
    keys = set(state_dict)
    shape = {k: tuple(np.shape(v)) for k, v in state_dict.items()}
    kind = _not_an_lstm(shape)
    if kind is not None:
        raise ValueError(
            f"these are the weights of a torch.nn.{kind}, not of an LSTM ('weight_hh"
            f"{'' if kind.endswith('Cell') else '_l0'}' stacks {3 if 'GRU' in kind else 1} "
            "gate(s), an LSTM stacks 4); jaxlstm ports nn.LSTM and nn.LSTMCell only"
        )
    if keys and keys <= CELL_KEYS:
        if "weight_ih" not in keys or "weight_hh" not in keys:
            missing = sorted({"weight_ih", "weight_hh"} - keys)
            raise ValueError(f"LSTMCell state dict is missing {', '.join(map(repr, missing))}")
        gates, input_size = _matrix(shape, "weight_ih")
        return LSTMCellConfig.create(input_size, _hidden(gates, "weight_ih"), "bias_ih" in keys)
    matches = {k: LSTM_KEY.match(k) for k in keys}
    if "weight_ih_l0" not in keys:
        unknown = sorted(k for k, m in matches.items() if m is None)
        hint = f" (unrecognised keys: {', '.join(map(repr, unknown[:8]))})" if unknown else ""
        raise ValueError(
            "no LSTM weights found: expected torch nn.LSTM keys such as 'weight_ih_l0' or "
            f"nn.LSTMCell keys such as 'weight_ih'{hint}"
        )
    layers = {int(m.group(2)) for m in matches.values() if m}
    if layers != set(range(len(layers))):
        # A layer index past the contiguous run 0..L-1: name the first key that breaks it.
        present = next(n for n in range(len(layers) + 1) if n not in layers)
        breaking = sorted((int(m.group(2)), k) for k, m in matches.items()
                          if m and int(m.group(2)) > present)[0][1]
        raise ValueError(
            f"LSTM layers must be numbered 0..L-1 without gaps, but {breaking!r} comes after "
            f"layer {present - 1} with no layer {present} (an nn.LSTM's keys are "
            "weight_ih_l0, weight_ih_l1, ...); remove the stray key or pass the right prefix"
        )
    gates, input_size = _matrix(shape, "weight_ih_l0")
    hidden_size = _hidden(gates, "weight_ih_l0")
    proj_size = _matrix(shape, "weight_hr_l0")[0] if "weight_hr_l0" in keys else 0
    return LSTMConfig.create(
        input_size,
        hidden_size,
        num_layers=max(layers) + 1,
        bias="bias_ih_l0" in keys,
        bidirectional=any(m and m.group(3) for m in matches.values()),
        proj_size=proj_size,
    )


def _matrix(shape: Mapping[str, tuple[int, ...]], key: str) -> tuple[int, int]:
    if len(shape[key]) != 2:
        raise ValueError(f"{key!r} must be a 2-D weight matrix, got shape {shape[key]}")
    return shape[key]  # type: ignore[return-value]


def _hidden(gates: int, key: str) -> int:
    if gates % 4 or gates == 0:
        raise ValueError(
            f"{key!r} has {gates} rows; an LSTM stacks 4 gates, so it must be 4 * hidden_size"
        )
    return gates // 4


def check_weights(
    state_dict: Mapping[str, Any], *, what: str | None = None
) -> tuple[LSTMConfig | LSTMCellConfig, dict[str, np.ndarray]]:
    """The architecture of one LSTM's torch-named weights, and the weights as numpy arrays.

    **Arguments:**

    - ``state_dict``: ``{torch name: array}`` (torch tensors, numpy or JAX arrays).
    - ``what``: how errors name the weights (default ``"LSTM"`` / ``"LSTMCell"``).

    Raises one ``ValueError`` naming every missing, unexpected and mis-shaped key.
    """
    arrays = {str(k): to_numpy(v, str(k)) for k, v in state_dict.items()}
    config = infer_config(arrays)
    check_params(arrays, config.param_shapes(), what=what or kind_name(config))
    return config, arrays


def kind_name(config: LSTMConfig | LSTMCellConfig) -> str:
    """``"LSTM"`` or ``"LSTMCell"``."""
    return "LSTMCell" if isinstance(config, LSTMCellConfig) else "LSTM"


def resolve_param_dtype(
    arrays: Mapping[str, np.ndarray], param_dtype: Any = None, source: str = "the state dict"
) -> np.dtype:
    """The dtype to port ``arrays`` in: ``param_dtype``, else their one shared dtype.

    **Arguments:**

    - ``arrays``: torch-named numpy arrays.
    - ``param_dtype``: the dtype asked for, or ``None`` to keep the weights' own (``bfloat16``
      and ``float16`` included).
    - ``source``: how errors name the weights.

    Weights of mixed dtypes need ``param_dtype``; 64-bit weights need ``jax_enable_x64`` (or an
    explicit 32-bit ``param_dtype``), since JAX would silently truncate them.
    """
    if param_dtype is None:
        dtypes: dict[str, list[str]] = {}
        for name, array in arrays.items():
            dtypes.setdefault(str(array.dtype), []).append(name)
        if len(dtypes) > 1:
            listed = "; ".join(f"{dtype}: {', '.join(names)}" for dtype, names in dtypes.items())
            raise ValueError(
                f"the LSTM weights in {source} mix dtypes ({listed}); pass param_dtype= (for "
                "example param_dtype=jnp.float32) to convert them all to one dtype"
            )
        param_dtype = next(iter(arrays.values())).dtype
    param_dtype = jnp.dtype(param_dtype)
    if param_dtype.itemsize == 8 and not jax.config.jax_enable_x64:
        raise ValueError(
            f"the weights are {param_dtype} but JAX runs in 32-bit mode, which would silently "
            "truncate them; enable 64-bit with jax.config.update('jax_enable_x64', True), or "
            "pass param_dtype=jnp.float32 to convert on purpose"
        )
    return param_dtype


def describe(config: LSTMConfig | LSTMCellConfig) -> str:
    """A one-line summary such as ``LSTM(16, 32, num_layers=2, bidirectional=True)``."""
    args = [str(config.input_size), str(config.hidden_size)]
    defaults = {"num_layers": 1, "bias": True, "bidirectional": False, "proj_size": 0}
    for name, default in defaults.items():
        value = getattr(config, name, default)
        if value != default:
            args.append(f"{name}={value}")
    return f"{kind_name(config)}({', '.join(args)})"
