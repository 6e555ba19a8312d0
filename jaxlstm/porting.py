"""torch <-> jaxlstm. Module parameters *are* torch's ``state_dict``: porting is a checked copy."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

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


def _param_dtype(
    arrays: Mapping[str, np.ndarray], param_dtype: Any, source: str = "the state dict"
) -> Any:
    """The dtype to port ``arrays`` in: ``param_dtype``, else their one shared dtype."""
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
        param_dtype = next(iter(dtypes))
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


# --- LSTMs inside whole-model state dicts -------------------------------------------------------

# Module names that wrappers insert into every key: torch.compile, FSDP, activation checkpointing.
# DataParallel/DistributedDataParallel add a leading "module." (stripped only when every key has
# it, since "module" can also be an ordinary submodule name).
_WRAPPER_SEGMENTS = frozenset({"_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module"})
_RNN_WEIGHT = re.compile(r"^weight_(ih|hh)(_l\d+(_reverse)?)?$")


class FoundLSTM(NamedTuple):
    """One ``nn.LSTM`` / ``nn.LSTMCell`` found in a state dict by :func:`find_lstms`."""

    prefix: str
    """Key prefix of its weights, wrappers removed: ``"encoder.rnn."``, or ``""`` at the root."""
    config: LSTMConfig | LSTMCellConfig
    """The architecture its weights determine (``batch_first``/``dropout`` at torch's defaults)."""
    param_count: int
    """Number of scalar parameters."""


def _drop_wrappers(key: str) -> str:
    return ".".join(part for part in key.split(".") if part not in _WRAPPER_SEGMENTS)


def _strip_module(keys: list[str]) -> int:
    """How many leading ``module.`` every key shares (DataParallel inside DataParallel: 2)."""
    depth = 0
    while keys and all(k.startswith("module." * (depth + 1)) for k in keys):
        depth += 1
    return depth


def unwrap_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """``state_dict`` with the names that model wrappers add removed from every key.

    Removes ``_orig_mod.`` (``torch.compile``), ``_fsdp_wrapped_module.`` (FSDP),
    ``_checkpoint_wrapped_module.`` (activation checkpointing) wherever they occur, and a
    leading ``module.`` (``DataParallel`` / ``DistributedDataParallel``) when every key has it.
    Two keys that become the same name raise a ``ValueError`` naming both.
    """
    dropped = {str(key): _drop_wrappers(str(key)) for key in state_dict}
    cut = len("module.") * _strip_module(list(dropped.values()))
    unwrapped: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for raw, clean in dropped.items():
        clean = clean[cut:]
        if clean in unwrapped:
            raise ValueError(
                f"keys {origin[clean]!r} and {raw!r} both name {clean!r} once the wrapper "
                "prefixes (module., _orig_mod., ...) are removed; pass the state dict of one "
                "model, not of a model and its wrapper"
            )
        unwrapped[clean] = state_dict[raw]
        origin[clean] = raw
    return unwrapped


def normalize_prefix(prefix: str, state_dict: Mapping[str, Any]) -> str:
    """``prefix`` as :func:`find_lstms` reports it: wrapper names removed, a trailing dot.

    ``"module._orig_mod.encoder.rnn"`` -> ``"encoder.rnn."``; ``""`` stays ``""`` (the root).
    """
    clean = _drop_wrappers(prefix.strip().rstrip(".")) + "."
    depth = _strip_module([_drop_wrappers(str(key)) for key in state_dict])
    for _ in range(depth):
        clean = clean.removeprefix("module.")
    return "" if clean == "." else clean


def _candidates(state_dict: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{prefix: {parameter name: value}}`` for every module that looks like an LSTM.

    All of a module's direct keys are kept, so that a stray key is reported, not dropped.
    ``nn.GRU``/``nn.RNN`` (and their cells) are left out by their shapes.
    """
    modules: dict[str, dict[str, Any]] = {}
    for key, value in unwrap_state_dict(state_dict).items():
        head, _, name = key.rpartition(".")
        modules.setdefault(head + "." if head else "", {})[name] = value
    return {
        prefix: params for prefix, params in sorted(modules.items())
        if any(_RNN_WEIGHT.match(name) for name in params) and not _is_gru_or_rnn(params)
    }


def _is_gru_or_rnn(params: Mapping[str, Any]) -> bool:
    """True for ``nn.GRU``/``nn.RNN`` weights, whose names are an LSTM's.

    Their ``weight_hh`` stacks 3 (GRU) or 1 (RNN) gates: ``(3H, H)`` / ``(H, H)``. An LSTM's is
    ``(4H, H)``, or ``(4H, P)`` with ``P < H`` under a projection: never a ratio of 1 or 3.
    """
    if any(name.startswith("weight_hr") for name in params):
        return False
    for name, value in params.items():
        shape = np.shape(value)
        if name.startswith("weight_hh") and len(shape) == 2 and shape[1]:
            return shape[0] in (shape[1], 3 * shape[1])
    return False


def _validated(prefix: str, params: Mapping[str, Any], source: str) -> FoundLSTM:
    where = f"at prefix {prefix!r}" if prefix else "at the root"
    try:
        config = infer_config(params)
    except ValueError as error:
        raise ValueError(f"{source}: the recurrent weights {where}: {error}") from error
    kind = "LSTM" if isinstance(config, LSTMConfig) else "LSTMCell"
    check_params(
        {prefix + name: value for name, value in params.items()},
        {prefix + name: shape for name, shape in config.param_shapes().items()},
        what=f"{source}: the {kind} {where}:",
    )
    count = sum(int(np.prod(np.shape(value))) for value in params.values())
    return FoundLSTM(prefix, config, count)


def find_lstms(state_dict: Mapping[str, Any], *, source: str = "state dict") -> list[FoundLSTM]:
    """Every ``nn.LSTM`` and ``nn.LSTMCell`` inside a (whole-model) state dict.

    **Arguments:**

    - ``state_dict``: ``{key: tensor or array}``, e.g. ``model.state_dict()`` of a model with
      LSTM submodules, or the contents of a checkpoint file (see :mod:`jaxlstm.files`).
    - ``source``: how errors name the state dict, e.g. ``"file 'model.pt'"``.

    Returns one :class:`FoundLSTM` per module, sorted by prefix. Modules are recognised by
    torch's key pattern (``<prefix>weight_ih_l0``, ``<prefix>weight_ih``, ...); wrapper names
    (``module.``, ``_orig_mod.``, see :func:`unwrap_state_dict`) are removed from the prefixes.
    ``nn.GRU``/``nn.RNN`` weights are told apart by their shapes and skipped. A module whose
    weights are missing, extra or mis-shaped raises a ``ValueError`` naming its keys.
    """
    return [_validated(p, params, source) for p, params in _candidates(state_dict).items()]


def select_lstm(
    state_dict: Mapping[str, Any], prefix: str | None = None, *, source: str = "the state dict"
) -> FoundLSTM:
    """The LSTM at ``prefix`` in ``state_dict`` (or the only one when ``prefix`` is ``None``).

    Only the chosen module's weights are checked, so a broken unrelated module does not get in
    the way. Errors list the prefixes available in ``source``.
    """
    return lstm_weights(state_dict, prefix, source=source)[0]


def lstm_weights(
    state_dict: Mapping[str, Any], prefix: str | None = None, *, source: str = "the state dict"
) -> tuple[FoundLSTM, dict[str, np.ndarray]]:
    """:func:`select_lstm` and the chosen module's weights (torch names without the prefix, as
    numpy arrays), found in one pass over ``state_dict``."""
    candidates = _candidates(state_dict)
    if not candidates:
        keys = list(state_dict)
        shown = ", ".join(map(repr, keys[:5])) + (", ..." if len(keys) > 5 else "")
        raise ValueError(
            f"no LSTM or LSTMCell weights in {source}: expected keys ending in 'weight_ih_l0' "
            f"(nn.LSTM) or 'weight_ih' (nn.LSTMCell); it holds {len(keys)} keys: {shown or '-'}"
        )
    if prefix is None and len(candidates) == 1:
        prefix = next(iter(candidates))
    elif prefix is not None:
        given = prefix if prefix.endswith(".") or not prefix else prefix + "."
        prefix = given if given in candidates else normalize_prefix(prefix, state_dict)
    if prefix in candidates:
        params = candidates[prefix]
        arrays = {name: to_numpy(value, prefix + name) for name, value in params.items()}
        return _validated(prefix, params, source), arrays
    listing = "\n  ".join(_listing(p, params) for p, params in candidates.items())
    if prefix is None:
        raise ValueError(
            f"{source} holds {len(candidates)} LSTMs; choose one by its prefix (e.g. "
            f"{next(iter(candidates))!r}):\n  {listing}"
        )
    raise ValueError(f"no LSTM at prefix {prefix or '(root)'!r} in {source}; found:\n  {listing}")


def _listing(prefix: str, params: Mapping[str, Any]) -> str:
    try:
        summary = describe(infer_config(params))
    except ValueError as error:
        summary = f"(unreadable: {error})"
    return f"{prefix or '(root)':<24} {summary}"


def describe(config: LSTMConfig | LSTMCellConfig) -> str:
    """A one-line summary such as ``LSTM(16, 32, num_layers=2, bidirectional=True)``."""
    args = [str(config.input_size), str(config.hidden_size)]
    defaults = {"num_layers": 1, "bias": True, "bidirectional": False, "proj_size": 0}
    for name, default in defaults.items():
        value = getattr(config, name, default)
        if value != default:
            args.append(f"{name}={value}")
    return f"{type(config).__name__[:-6]}({', '.join(args)})"


def extract_lstm(
    state_dict: Mapping[str, Any], prefix: str | None = None, *, source: str = "the state dict"
) -> dict[str, np.ndarray]:
    """The torch-named weights of one LSTM, as numpy arrays without the prefix.

    **Arguments:**

    - ``state_dict``: a whole-model state dict (wrappers such as ``module.`` are handled).
    - ``prefix``: the module's key prefix, with or without the trailing dot or the wrapper
      names (``"encoder.rnn"``, ``"module.encoder.rnn."``); ``""`` for a bare LSTM; ``None``
      when there is only one.
    - ``source``: how errors name the state dict.

    The result loads into the matching ``nn.LSTM``/``nn.LSTMCell`` with ``strict=True``.
    """
    return lstm_weights(state_dict, prefix, source=source)[1]


def from_checkpoint(
    source: Any, prefix: str | None = None, *, param_dtype: Any = None, **config: Any
) -> LSTM | LSTMCell:
    """Port one LSTM out of a checkpoint file or a whole-model state dict.

    **Arguments:**

    - ``source``: a path to a ``.pt``/``.pth``/``.safetensors`` file (read safely, see
      :func:`jaxlstm.files.read_checkpoint`) or a state dict of a whole model.
    - ``prefix``: which LSTM, e.g. ``"encoder.rnn."`` (see :func:`find_lstms`); may be omitted
      when the source holds exactly one. Errors list the prefixes found.
    - ``param_dtype``: dtype of the ported parameters; required when the weights mix dtypes.
    - ``config``: ``batch_first``, ``dropout``, ``rngs``, ``dtype``, ``precision``, ``unroll`` —
      whatever :func:`from_torch` accepts and the weights do not determine.

    Example::

        >>> model = jaxlstm.porting.from_checkpoint("model.pt", "encoder.rnn.", batch_first=True)
    """
    if isinstance(source, (str, os.PathLike)):
        from jaxlstm.files import read_checkpoint

        state_dict: Mapping[str, Any] = read_checkpoint(source).state_dict
        where = f"file {os.fspath(source)!r}"
    elif isinstance(source, Mapping):
        state_dict, where = source, "the state dict"
    else:
        raise TypeError(
            f"from_checkpoint expects a file path or a state dict, got {type(source).__name__}"
        )
    arrays = extract_lstm(state_dict, prefix, source=where)
    return from_torch(arrays, param_dtype=_param_dtype(arrays, param_dtype, where), **config)
