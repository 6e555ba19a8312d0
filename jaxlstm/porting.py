"""torch <-> jaxlstm: the top of the porting layer, where modules are built.

Module parameters *are* torch's ``state_dict``, so porting is a checked copy. The layers below,
each importing only those under it: :mod:`jaxlstm.arrays` (torch-free: one tensor-to-numpy
conversion, the architecture the weights determine, the dtype policy), :mod:`jaxlstm.files`
(reading any checkpoint file safely), :mod:`jaxlstm.discovery` (the LSTMs inside a whole-model
state dict) and :func:`jaxlstm.nnx.from_weights` (a module built from the weights directly).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx

from jaxlstm.arrays import describe, infer_config, to_numpy
from jaxlstm.config import LSTMCellConfig, LSTMConfig, check_params
from jaxlstm.discovery import (
    FoundLSTM,
    find_lstms,
    lstm_prefixes,
    select_lstm,
    unwrap_state_dict,
)
from jaxlstm.nnx import LSTM, LSTMCell, from_weights

__all__ = [
    "FoundLSTM", "describe", "find_lstms", "from_checkpoint", "from_torch", "infer_config",
    "check_torch_gates", "load_params", "select_lstm", "to_numpy", "to_torch", "to_tensor",
    "to_torch_module",
    "torch_weights",
    "unwrap_state_dict",
]

_NOT_LSTM_MODULES = ("GRU", "RNN", "GRUCell", "RNNCell")


def torch_weights(
    source: Any, *, batch_first: bool | None = None, dropout: float | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The torch-named numpy weights of a live ``nn.LSTM``/``nn.LSTMCell`` or a state dict.

    **Arguments:**

    - ``source``: the live module, or the state dict of one LSTM (torch tensors, numpy or JAX
      arrays).
    - ``batch_first``, ``dropout``: returned as given, else taken from a live module.

    Returns ``(weights, settings)`` with ``settings`` = ``batch_first``, ``dropout`` and
    ``training`` (``None`` where unknown). A GRU/RNN, or a whole model's state dict, raises a
    ``ValueError`` that says what it is and, for a whole model, the call that ports its LSTMs.
    """
    training = None
    if hasattr(source, "state_dict") and callable(source.state_dict):
        module = source
        if type(module).__name__ in _NOT_LSTM_MODULES:
            raise ValueError(
                f"this is a torch.nn.{type(module).__name__}, not an LSTM; jaxlstm ports "
                "nn.LSTM and nn.LSTMCell only"
            )
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
    if not {"weight_ih", "weight_ih_l0"} & set(arrays) and any("." in key for key in arrays):
        _suggest_prefix(arrays)
    return arrays, {"batch_first": batch_first, "dropout": dropout, "training": training}


def _suggest_prefix(arrays: Mapping[str, np.ndarray]) -> None:
    """A whole model's state dict: name the LSTMs in it and the call that ports one."""
    prefixes = [p for p in lstm_prefixes(arrays) if p]
    if not prefixes:
        return  # infer_config names what it saw
    listed = ", ".join(repr(p) for p in prefixes)
    raise ValueError(
        f"no LSTM weights at the top level of this state dict: it is a whole model's, with "
        f"LSTMs at {listed}. Port one with jaxlstm.from_checkpoint(state_dict_or_path, "
        f"{prefixes[0]!r})"
    )


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
    - ``param_dtype``: dtype of the ported parameters; default: the weights' own (``bfloat16``
      and ``float16`` stay; float64 weights need ``jax_enable_x64``).
    - ``rngs``: seeds dropout in training mode; default ``nnx.Rngs(0)``.
    - ``module_kwargs``: ``dtype``, ``precision``, ``unroll``, ``remat``, ``wavefront`` for the new
      module.

    The architecture (sizes, layers, directions, ``proj_size``, ``bias``, cell vs. LSTM) is
    inferred from the weights, and the module is built from them directly; a live module's
    train/eval mode carries over. Any key that is missing, unexpected or mis-shaped is named in
    the error; a whole model's state dict gets the :func:`from_checkpoint` call for its LSTMs.
    """
    arrays, settings = torch_weights(source, batch_first=batch_first, dropout=dropout)
    model = from_weights(arrays, batch_first=settings["batch_first"],
                         dropout=settings["dropout"], param_dtype=param_dtype, rngs=rngs,
                         **module_kwargs)
    if settings["training"] is False:
        model.eval()
    return model


def load_params(model: LSTM | LSTMCell, state_dict: Mapping[str, Any]) -> None:
    """Copy torch-named weights into ``model`` in place (shapes checked, the model's dtype kept).

    **Arguments:**

    - ``model``: a :class:`~jaxlstm.LSTM` / :class:`~jaxlstm.LSTMCell`.
    - ``state_dict``: its weights under torch's names (torch tensors, numpy or JAX arrays).
    """
    arrays = {str(k): to_numpy(v, str(k)) for k, v in state_dict.items()}
    check_params(arrays, model.config.param_shapes(), what=type(model).__name__)
    for name, value in arrays.items():
        param = getattr(model, name)
        param[...] = np.asarray(value).astype(param[...].dtype)


def to_torch(model: LSTM | LSTMCell) -> dict[str, np.ndarray]:
    """The model's parameters as a torch ``state_dict`` of numpy arrays.

    ``torch_module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)``
    loads it into a ``torch.nn.LSTM``/``LSTMCell`` of the same configuration. A model whose
    ``gate_activation`` is not ``"sigmoid"`` raises: torch's modules have no other gates.
    """
    check_torch_gates(model.config)
    return {name: to_numpy(value, name).copy() for name, value in model.params().items()}


def check_torch_gates(config: LSTMConfig | LSTMCellConfig) -> None:
    """Raise unless ``config``'s gates are torch's sigmoid (all that ``nn.LSTM`` computes)."""
    if config.gate_activation != "sigmoid":
        raise ValueError(
            f"this model's gates are {config.gate_activation}; torch's nn.LSTM/nn.LSTMCell "
            "cannot hold hard-sigmoid gates (they are always sigmoid), so its weights in torch "
            "would compute something else. Save it as ONNX (jaxlstm convert, or "
            "jaxlstm.formats.onnx.write_onnx(..., gate_activation=...)), which can")


def to_torch_module(model: LSTM | LSTMCell) -> Any:
    """A live ``torch.nn.LSTM``/``LSTMCell`` with the model's configuration, weights and mode."""
    module = torch_module(model.config, to_torch(model))
    if isinstance(model, LSTM):
        module.train(not model.deterministic)
    return module


def torch_module(config: LSTMConfig | LSTMCellConfig, weights: Mapping[str, Any]) -> Any:
    """The ``torch.nn.LSTM``/``LSTMCell`` that ``config`` describes, holding ``weights``.

    **Arguments:**

    - ``config``: the architecture (``batch_first`` and ``dropout`` included).
    - ``weights``: ``{torch name: array}``, loaded with ``strict=True`` in their own dtype.
    """
    import torch

    state = {name: to_tensor(array) for name, array in weights.items()}
    dtype = next(iter(state.values())).dtype
    if isinstance(config, LSTMCellConfig):
        module = torch.nn.LSTMCell(config.input_size, config.hidden_size, config.bias, dtype=dtype)
    else:
        module = torch.nn.LSTM(
            config.input_size, config.hidden_size, config.num_layers, config.bias,
            config.batch_first, config.dropout, config.bidirectional, config.proj_size,
            dtype=dtype,
        )
    module.load_state_dict(state, strict=True)
    return module


def to_tensor(array: Any) -> Any:
    """A numpy/JAX array as a torch tensor of the same dtype (``bfloat16`` included).

    **Arguments:**

    - ``array``: the array; ``ml_dtypes.bfloat16`` arrays, which torch cannot take from numpy,
      go through their bits.
    """
    import torch

    array = np.ascontiguousarray(to_numpy(array))
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def from_checkpoint(
    source: Any, prefix: str | None = None, *, param_dtype: Any = None, **config: Any
) -> LSTM | LSTMCell:
    """Port one LSTM out of a checkpoint file or a whole-model state dict.

    **Arguments:**

    - ``source``: a path to any file :func:`jaxlstm.files.read_checkpoint` reads (``.pt``,
      ``.pth``, ``.bin``, ``.ckpt`` nested to any depth, TorchScript archives,
      ``.safetensors`` and sharded ``*.index.json``, ``.onnx``, ``.npz``, Keras ``.h5``/
      ``.keras``), or a (nested) state dict of a whole model. A hard-sigmoid LSTM (Keras
      ``recurrent_activation="hard_sigmoid"``, ONNX ``HardSigmoid`` gates) ports with the
      ``gate_activation`` the file records (Keras 2's or Keras 3's constants, by the Keras
      version; ONNX's ``activation_alpha``/``activation_beta``). An LSTM the file records as
      computing anything else jaxlstm cannot (another activation, ``go_backwards``, ...)
      raises :class:`~jaxlstm.files.CheckpointError`.
    - ``prefix``: which LSTM, e.g. ``"encoder.rnn."`` (see :func:`find_lstms`, or ``jaxlstm
      inspect FILE``); may be omitted when the source holds exactly one. Errors list the
      prefixes found.
    - ``param_dtype``: dtype of the ported parameters; default the weights' own; required when
      they mix dtypes.
    - ``config``: ``batch_first``, ``dropout``, ``rngs``, ``dtype``, ``precision``, ``unroll`` —
      whatever :func:`from_torch` accepts and the weights do not determine. ``batch_first``
      defaults to what the file records, if it does (Keras layers and ONNX ``layout=1``:
      ``True``), else torch's ``False``.

    Example::

        >>> model = jaxlstm.from_checkpoint("model.pt", "encoder.rnn.", batch_first=True)
    """
    if isinstance(source, Mapping):
        found = select_lstm(source, prefix, source="the state dict")
        return from_weights(found.weights, param_dtype=param_dtype, source="the state dict",
                            **config)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"from_checkpoint expects a file path or a state dict, got {type(source).__name__}"
        )
    from jaxlstm.files import CheckpointError, check_portable, read_checkpoint

    checkpoint = read_checkpoint(source)
    where = f"file {os.fspath(source)!r}"
    try:
        found = select_lstm(checkpoint.state_dict, prefix, source=where,
                            container=checkpoint.wrapper)
        weights = found.weights
    except CheckpointError:
        raise
    except ValueError as error:  # the file holds no usable LSTM: a failure to read it as one
        raise CheckpointError(str(error)) from error
    check_portable(checkpoint, found.prefix)
    recorded = checkpoint.lstm_info.get(found.prefix, {})
    if "batch_first" in recorded and isinstance(found.config, LSTMConfig):
        config.setdefault("batch_first", recorded["batch_first"])
    if "gate_activation" in recorded:
        config.setdefault("gate_activation", recorded["gate_activation"])
    return from_weights(weights, param_dtype=param_dtype, source=where, **config)
