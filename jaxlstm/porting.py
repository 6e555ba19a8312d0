"""torch <-> jaxlstm. Module parameters *are* torch's ``state_dict``: porting is a checked copy."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlstm.config import LSTMCellConfig, LSTMConfig, check_params
from jaxlstm.nnx import LSTM, LSTMCell

_LSTM_KEY = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(\d+)(_reverse)?$")
_CELL_KEYS = {"weight_ih", "weight_hh", "bias_ih", "bias_hh"}


def to_numpy(value: Any, name: str = "value") -> np.ndarray:
    """A torch tensor, JAX or numpy array as a numpy array (no gradient, on the host)."""
    if hasattr(value, "detach"):  # torch.Tensor
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    array = np.asarray(value)
    if array.dtype == object:
        raise TypeError(f"{name!r} is not an array (got {type(value).__name__})")
    return array


def infer_config(state_dict: Mapping[str, Any]) -> LSTMConfig | LSTMCellConfig:
    """The architecture that torch-named weights determine: sizes, layers, directions, proj, bias.

    ``batch_first`` and ``dropout`` are not in the weights; they take torch's defaults here.
    """
    keys = set(state_dict)
    shape = {k: tuple(np.shape(v)) for k, v in state_dict.items()}
    if keys and keys <= _CELL_KEYS:
        if "weight_ih" not in keys or "weight_hh" not in keys:
            missing = sorted({"weight_ih", "weight_hh"} - keys)
            raise ValueError(f"LSTMCell state dict is missing {', '.join(map(repr, missing))}")
        gates, input_size = _matrix(shape, "weight_ih")
        return LSTMCellConfig.create(input_size, _hidden(gates, "weight_ih"), "bias_ih" in keys)
    matches = {k: _LSTM_KEY.match(k) for k in keys}
    if "weight_ih_l0" not in keys:
        unknown = sorted(k for k, m in matches.items() if m is None)
        hint = f" (unrecognised keys: {', '.join(map(repr, unknown[:8]))})" if unknown else ""
        raise ValueError(
            "no LSTM weights found: expected torch nn.LSTM keys such as 'weight_ih_l0' or "
            f"nn.LSTMCell keys such as 'weight_ih'{hint}"
        )
    layers = {int(m.group(2)) for m in matches.values() if m}
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


def _param_dtype(arrays: Mapping[str, np.ndarray], param_dtype: Any) -> Any:
    dtypes = {str(a.dtype) for a in arrays.values()}
    if param_dtype is None:
        if len(dtypes) > 1:
            raise ValueError(
                f"the weights mix dtypes ({', '.join(sorted(dtypes))}); pass param_dtype= to "
                "choose one"
            )
        param_dtype = jnp.dtype(next(iter(dtypes)))
    param_dtype = jnp.dtype(param_dtype)
    if param_dtype.itemsize == 8 and not jax.config.jax_enable_x64:
        raise ValueError(
            f"the weights are {param_dtype} but JAX runs in 32-bit mode, which would silently "
            "truncate them; enable 64-bit with jax.config.update('jax_enable_x64', True), or "
            "pass param_dtype=jnp.float32 to convert on purpose"
        )
    return param_dtype


def from_torch(
    source: Any,
    *,
    batch_first: bool | None = None,
    dropout: float | None = None,
    param_dtype: Any = None,
    rngs: nnx.Rngs | None = None,
    **module_kwargs: Any,
) -> LSTM | LSTMCell:
    """Build a :class:`~jaxlstm.LSTM` or :class:`~jaxlstm.LSTMCell` from torch weights.

    **Arguments:**

    - ``source``: a live ``torch.nn.LSTM`` / ``torch.nn.LSTMCell``, or its ``state_dict`` (values
      may be torch tensors or numpy/JAX arrays).
    - ``batch_first``, ``dropout``: not stored in weights; taken from the live module when given
      one, else torch's defaults, unless passed here.
    - ``param_dtype``: dtype of the ported parameters; default: the weights' own dtype (float64
      weights need ``jax_enable_x64``).
    - ``rngs``: seeds dropout in training mode; default ``nnx.Rngs(0)``.
    - ``module_kwargs``: ``dtype``, ``precision``, ``unroll`` for the new module.

    The architecture (sizes, layers, directions, ``proj_size``, ``bias``, cell vs. LSTM) is
    inferred from the weights; a live module's train/eval mode carries over. Any key that is
    missing, unexpected or mis-shaped is named in the error.
    """
    training = None
    if hasattr(source, "state_dict") and callable(source.state_dict):
        module = source
        training = getattr(module, "training", None)
        if batch_first is None:
            batch_first = getattr(module, "batch_first", None)
        if dropout is None:
            dropout = getattr(module, "dropout", None)
        source = module.state_dict()
    if not isinstance(source, Mapping):
        raise TypeError(
            "from_torch expects a torch.nn.LSTM/LSTMCell or its state_dict, got "
            f"{type(source).__name__}"
        )
    arrays = {str(k): to_numpy(v, str(k)) for k, v in source.items()}
    config = infer_config(arrays)
    check_params(arrays, config.param_shapes(), what=type(config).__name__[:-6])
    dtype = _param_dtype(arrays, param_dtype)
    if isinstance(config, LSTMCellConfig):
        extra = {k: v for k, v in (("batch_first", batch_first), ("dropout", dropout)) if v}
        if extra:
            raise ValueError(f"LSTMCell takes no {', '.join(extra)}; drop those arguments")
        model: LSTM | LSTMCell = LSTMCell(
            config.input_size, config.hidden_size, config.bias, rngs=rngs, param_dtype=dtype,
            **module_kwargs,
        )
    else:
        model = LSTM(
            config.input_size, config.hidden_size, config.num_layers, config.bias,
            bool(batch_first), float(dropout or 0.0), config.bidirectional, config.proj_size,
            rngs=rngs, param_dtype=dtype, **module_kwargs,
        )
    load_params(model, arrays)
    if training is False:
        model.eval()
    return model


def load_params(model: LSTM | LSTMCell, state_dict: Mapping[str, Any]) -> None:
    """Copy torch-named weights into ``model`` in place (shapes checked, dtype kept)."""
    arrays = {str(k): to_numpy(v, str(k)) for k, v in state_dict.items()}
    check_params(arrays, model.config.param_shapes(), what=type(model).__name__)
    for name, value in arrays.items():
        param = getattr(model, name)
        param[...] = jnp.asarray(value, dtype=param[...].dtype)


def to_torch(model: LSTM | LSTMCell) -> dict[str, np.ndarray]:
    """The model's parameters as a torch ``state_dict`` of numpy arrays.

    ``torch_module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)``
    loads it into a ``torch.nn.LSTM``/``LSTMCell`` of the same configuration.
    """
    return {name: np.array(value) for name, value in model.params().items()}


def to_torch_module(model: LSTM | LSTMCell) -> Any:
    """A live ``torch.nn.LSTM``/``LSTMCell`` with the model's configuration, weights and mode."""
    import torch

    state = {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in to_torch(model).items()}
    dtype = next(iter(state.values())).dtype
    config = model.config
    if isinstance(config, LSTMCellConfig):
        module = torch.nn.LSTMCell(config.input_size, config.hidden_size, config.bias, dtype=dtype)
    else:
        module = torch.nn.LSTM(
            config.input_size, config.hidden_size, config.num_layers, config.bias,
            config.batch_first, config.dropout, config.bidirectional, config.proj_size,
            dtype=dtype,
        )
        module.train(not model.deterministic)
    module.load_state_dict(state, strict=True)
    return module
