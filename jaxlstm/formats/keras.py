"""Keras 3 ``LSTM`` (and ``Bidirectional(LSTM)``) <-> torch-named weights.

Keras' layout (``keras/src/layers/rnn/lstm.py``): ``kernel (I, 4H)``, ``recurrent_kernel
(H, 4H)``, one ``bias (4H,)``, gates in the order i, f, c, o (torch's i, f, g, o), states
``[h, c]``. ``get_weights()`` lists them in that order; ``Bidirectional`` lists the forward
layer's weights, then the backward layer's.

Keras keeps one bias: importing puts it in ``bias_ih`` with zeros in ``bias_hh``; exporting
torch's two biases needs ``merge_biases=True`` unless one of them is zero. Keras has no
projection and a Keras ``LSTM`` is one layer, so ``proj_size`` and ``num_layers > 1`` raise.
Layers are imported with the default activations (tanh, sigmoid gates) only: a list of weights
cannot carry a gate activation, so a ``hard_sigmoid`` layer ports from its saved file
(:mod:`jaxlstm.formats.keras_h5`, ``jaxlstm.from_checkpoint``); export writes Keras 3's
``hard_sigmoid`` too (``gate_activation``). ``dropout`` and
``recurrent_dropout`` act in training only and are not carried over.

Importing this module sets ``KERAS_BACKEND=jax`` unless a backend is already chosen (Keras
reads it once, on its first import).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from jaxlstm.arrays import to_numpy
from jaxlstm.config import check_params
from jaxlstm.formats._common import directions, one_bias, one_dtype, split_bias, torch_names

if TYPE_CHECKING:  # the modules are built only when asked for, never to read a file
    from jaxlstm.nnx import LSTM

FMT = "a Keras LSTM layer"
# Keras picks its backend once, when first imported; jaxlstm runs on JAX.
os.environ.setdefault("KERAS_BACKEND", "jax")


def _keras() -> Any:
    try:
        import keras
    except ImportError as error:
        raise ImportError("the Keras format needs keras 3: pip install keras") from error
    return keras


def _weights_to_cell(weights: Sequence[Any], *, where: str) -> dict[str, np.ndarray]:
    """``[kernel, recurrent_kernel, (bias)]`` as torch's cell names."""
    names = ("kernel", "recurrent_kernel", "bias")[: len(weights)]
    if len(weights) not in (2, 3):
        raise ValueError(
            f"{where}: expected [kernel, recurrent_kernel] or [kernel, recurrent_kernel, bias], "
            f"got {len(weights)} arrays"
        )
    arrays = {name: to_numpy(value, name) for name, value in zip(names, weights)}
    kernel = arrays["kernel"]
    if kernel.ndim != 2 or kernel.shape[1] % 4 or not kernel.shape[1]:
        raise ValueError(f"{where}: 'kernel' has shape {kernel.shape}; expected (I, 4 * units)")
    input_size, hidden = kernel.shape[0], kernel.shape[1] // 4
    expected = {"kernel": (input_size, 4 * hidden), "recurrent_kernel": (hidden, 4 * hidden)}
    if "bias" in arrays:
        expected["bias"] = (4 * hidden,)
    check_params(arrays, expected, what=where)
    cell = {"weight_ih": kernel.T, "weight_hh": arrays["recurrent_kernel"].T}
    if "bias" in arrays:
        cell.update(split_bias(arrays["bias"]))
    return cell


def _check_layer(keras: Any, layer: Any, *, backwards: bool) -> None:
    if not isinstance(layer, keras.layers.LSTM):
        raise TypeError(f"expected a keras.layers.LSTM, got {type(layer).__name__}")
    if not layer.built:
        raise ValueError(f"Keras layer {layer.name!r} is not built yet: call it once or "
                         "layer.build((None, None, input_size)) so it has weights")
    if (layer.activation is not keras.activations.tanh
            or layer.recurrent_activation is not keras.activations.sigmoid):
        raise ValueError(
            f"Keras layer {layer.name!r} uses activation/recurrent_activation other than "
            "tanh/sigmoid, which torch-named weights cannot carry; for recurrent_activation="
            "'hard_sigmoid', save the model (model.save('m.keras')) and port it with "
            "jaxlstm.from_checkpoint('m.keras'), which keeps the gates"
        )
    if layer.go_backwards != backwards:
        raise ValueError(
            f"Keras layer {layer.name!r} has go_backwards={layer.go_backwards}; a torch LSTM "
            "reads forwards (wrap it in keras.layers.Bidirectional for the reverse direction)"
        )


def from_keras_lstm(source: Any) -> dict[str, np.ndarray]:
    """torch ``nn.LSTM`` weights from a Keras ``LSTM`` or ``Bidirectional(LSTM)`` layer.

    **Arguments:**

    - ``source``: a built ``keras.layers.LSTM``, a ``keras.layers.Bidirectional`` around one
      (``merge_mode="concat"``), or the list ``layer.get_weights()`` of an ``LSTM``. A list
      does not say which activations the layer used: it is taken to be Keras 3's default
      (sigmoid gates, tanh), which jaxlstm computes; the weights of a ``hard_sigmoid`` layer
      (every Keras <= 2.2 default) port without error but compute something else. Files are
      read with their activations by :mod:`jaxlstm.formats.keras_h5`.

    Returns ``weight_ih_l0 (4H, I)``, ``weight_hh_l0 (4H, H)``, ``bias_ih_l0`` (Keras' bias) and
    ``bias_hh_l0`` (zeros), plus ``*_l0_reverse`` for a ``Bidirectional`` layer.
    """
    if isinstance(source, (list, tuple)):
        return torch_names(_weights_to_cell(source, where="Keras LSTM weights"), layer=0)
    keras = _keras()
    if isinstance(source, keras.layers.Bidirectional):
        if source.merge_mode != "concat":
            raise ValueError(
                f"Keras Bidirectional merge_mode={source.merge_mode!r}; torch concatenates the "
                "two directions, so only merge_mode='concat' ports"
            )
        parts = [(source.forward_layer, False), (source.backward_layer, True)]
    else:
        parts = [(source, False)]
    state: dict[str, np.ndarray] = {}
    for direction, (layer, backwards) in enumerate(parts):
        _check_layer(keras, layer, backwards=backwards)
        cell = _weights_to_cell(layer.get_weights(), where=f"Keras layer {layer.name!r}")
        state.update(torch_names(cell, layer=0, direction=direction))
    return state


def to_keras_lstm(
    state_dict: Mapping[str, Any],
    *,
    merge_biases: bool = False,
    return_sequences: bool = True,
    return_state: bool = True,
    gate_activation: Any = "sigmoid",
) -> Any:
    """A built Keras ``LSTM`` (``Bidirectional(LSTM)`` if bidirectional) holding the weights.

    **Arguments:**

    - ``state_dict``: a 1-layer ``nn.LSTM`` without projection (or an ``nn.LSTMCell``).
    - ``merge_biases``: store ``bias_ih + bias_hh`` as Keras' one bias.
    - ``return_sequences``, ``return_state``: passed to ``keras.layers.LSTM``.
    - ``gate_activation``: ``"sigmoid"``, or Keras 3's ``HardSigmoid(1/6, 0.5)`` (within
      float32 rounding), written as ``recurrent_activation="hard_sigmoid"``. Any other
      ``HardSigmoid`` raises: Keras 3's ``hard_sigmoid`` is not Keras 2's ``0.2 x + 0.5``.

    The layer's dtype is the weights' dtype. Call it batch-major: ``(N, L, I)``.
    """
    keras = _keras()
    config, layers = directions(state_dict, fmt=FMT)
    if len(layers) > 1:
        raise ValueError(
            f"{FMT} is one layer; this LSTM has num_layers={len(layers)}. Stack one Keras LSTM "
            "per layer, each exported from that layer's weights"
        )
    weights = []
    for cell in layers[0]:
        weights += [cell.weight_ih.T, cell.weight_hh.T]
        bias = one_bias(cell, fmt=FMT, merge_biases=merge_biases)
        weights += [] if bias is None else [bias]
    dtype = one_dtype(weights, fmt=FMT)
    layer = keras.layers.LSTM(
        config.hidden_size, use_bias=config.bias, return_sequences=return_sequences,
        return_state=return_state, dtype=str(dtype),
        recurrent_activation=_keras_gate_name(gate_activation),
    )
    if len(layers[0]) == 2:
        layer = keras.layers.Bidirectional(layer, merge_mode="concat", dtype=str(dtype))
    layer.build((None, None, config.input_size))
    layer.set_weights(weights)
    return layer


def _keras_gate_name(gate_activation: Any) -> str:
    """Keras 3's ``recurrent_activation`` for ``gate_activation``, or an error naming why
    Keras 3 has none."""
    from jaxlstm.gates import KERAS3

    if gate_activation == "sigmoid":
        return "sigmoid"
    if (abs(gate_activation.alpha - KERAS3.alpha) <= 1e-7
            and abs(gate_activation.beta - KERAS3.beta) <= 1e-7):
        return "hard_sigmoid"
    raise ValueError(
        f"this LSTM's gates are {gate_activation}, but Keras 3's recurrent_activation="
        f"'hard_sigmoid' is {KERAS3} (Keras 3's hard_sigmoid is not Keras 2's 0.2 x + 0.5), "
        "and Keras 3 has no other; write ONNX instead, which holds any HardSigmoid")


def keras_lstm_to_jaxlstm(source: Any, **kwargs: Any) -> LSTM:
    """A :class:`jaxlstm.LSTM` with a Keras layer's weights; ``batch_first=True`` like Keras.

    ``kwargs`` go to :func:`jaxlstm.nnx.from_weights` (``batch_first=False`` for time-major input).
    """
    kwargs.setdefault("batch_first", True)
    from jaxlstm.nnx import LSTM, from_weights

    model = from_weights(from_keras_lstm(source), **kwargs)
    assert isinstance(model, LSTM)
    return model


def write_keras(
    state_dict: Mapping[str, Any], path: str | os.PathLike[str], *, merge_biases: bool = False,
    gate_activation: Any = "sigmoid",
) -> None:
    """Save a ``.keras`` model: ``Input((None, I))`` then the LSTM (``return_sequences=True``).

    Load it with ``keras.saving.load_model(path)``; the LSTM is ``model.layers[0]``.
    ``gate_activation`` as in :func:`to_keras_lstm`.
    """
    keras = _keras()
    layer = to_keras_lstm(state_dict, merge_biases=merge_biases, return_state=False,
                          gate_activation=gate_activation)
    input_size = int(np.shape(layer.get_weights()[0])[0])
    model = keras.Sequential([keras.Input((None, input_size), dtype=layer.dtype), layer])
    model.save(os.fspath(path))
