"""Keras files (``.h5``/``.hdf5`` of Keras 1, 2 and tf.keras; Keras 3 ``.keras`` and
``.weights.h5``) -> torch-named weights, read with h5py alone (no TensorFlow, no Keras).

Layouts read:

- Keras 1/2, tf.keras ``model.save``: ``model_weights/<layer>/<weight name>`` with attributes
  ``layer_names`` (on ``model_weights``), ``weight_names`` (on each layer group) and the model's
  ``model_config`` JSON at the root; ``model.save_weights``: the same layer groups at the root,
  without ``model_config``.
- Keras 3: ``layers/<layer>/cell/vars/0..2`` (``Bidirectional``: ``forward_layer`` and
  ``backward_layer``), the config in the ``.keras`` archive's ``config.json``.

Weights, per direction (torch gates i, f, g, o = Keras i, f, c, o):

- ``LSTM``: ``kernel (I, 4H)`` -> ``weight_ih = kernel.T``, ``recurrent_kernel (H, 4H)`` ->
  ``weight_hh = recurrent_kernel.T``, ``bias (4H,)`` -> ``bias_ih``, ``bias_hh = 0``.
- ``CuDNNLSTM`` (Keras 2 / TF 1): the same shapes, but cuDNN reads each gate's ``(I, H)`` block
  as a flat buffer of its ``(H, I)`` matrix and each ``(H, H)`` recurrent block as it is, and the
  bias is ``8H``: cuDNN's input biases then recurrent biases. So ``weight_ih`` block =
  ``block.reshape(H, I)``, ``weight_hh`` block = the block itself, ``bias_ih, bias_hh`` = the two
  halves (what Keras' own ``CuDNNLSTM`` -> ``LSTM`` conversion computes, the biases kept apart).
- Keras 1 ``LSTM``: twelve arrays ``W_i, U_i, b_i, W_c, U_c, b_c, W_f, U_f, b_f, W_o, U_o,
  b_o``, stacked in the order i, f, c, o.

Each LSTM's prefix is its layer name (``lstm_1.``, ``bi-lstm.``; nested models
``model_1.lstm_1.``); a ``Bidirectional`` is one bidirectional torch LSTM. A ``hard_sigmoid``
gate (the default of Keras <= 2.2) ports as the ``gate_activation`` of the Keras that wrote the
file (``keras_version``): ``HardSigmoid(0.2, 0.5)`` up to Keras 2 / tf.keras, ``HardSigmoid(1/6,
0.5)`` in Keras 3. What jaxlstm cannot compute — another gate activation, a cell activation
other than tanh, ``go_backwards=True``, a merge mode other than ``concat`` — is read but
recorded as a problem: porting such an LSTM raises, naming the layer and the activation. What is
known of each LSTM besides its weights is returned as an :data:`Info`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxlstm.formats._common import split_bias
from jaxlstm.gates import KERAS2, KERAS3
from jaxlstm.readers import hdf5
from jaxlstm.readers.guard import CheckpointError, name, open_zip, read_member

Info = dict[str, Any]
"""``{"source": "keras", "layer", "class", "activation", "recurrent_activation",
"recorded" (whether the file states the activations or they are the version's defaults),
"keras_version", "batch_first", "gate_activation" (a ``HardSigmoid``, only for a hard_sigmoid
layer), "problem" (why it cannot be ported, or absent)}``.
``keras_version`` tells which ``hard_sigmoid`` a layer means: ``clip(0.2 x + 0.5, 0, 1)`` up to
Keras 2 / tf.keras, ``clip(x / 6 + 0.5, 0, 1)`` in Keras 3."""
LSTM_CLASSES = ("LSTM", "CuDNNLSTM", "LSTMV1", "LSTMV2", "UnifiedLSTM")
MODEL_CLASSES = ("Sequential", "Functional", "Model")
MAX_CONFIG_BYTES = 64 << 20
"""Largest ``config.json`` read from a ``.keras`` archive."""
_KERAS1_ORDER = (0, 2, 1, 3)  # Keras 1 stores gates i, c, f, o; torch's i, f, g, o


def read_keras_file(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Info]]:
    """``(torch-named weights, {prefix: Info})`` of every LSTM in a Keras file."""
    if path.suffix == ".keras":
        with open_zip(path) as archive:
            config = _json(_zip_member(archive, "config.json", path), path, "config.json")
            weights = _zip_member(archive, "model.weights.h5", path)
        with hdf5.open_file(weights, path) as handle:
            return _Reader(path, config, "3").keras3(handle)
    with hdf5.open_file(path, path) as handle:
        return _Reader.for_h5(handle, path)


def _zip_member(archive: Any, member: str, path: Path) -> bytes:
    try:
        size = archive.getinfo(member).file_size
    except KeyError as error:
        raise CheckpointError(f"{name(path)} is a .keras archive without {member!r}; save it "
                              "again with model.save(path)") from error
    if size > MAX_CONFIG_BYTES and member.endswith(".json"):
        raise CheckpointError(f"{name(path)}: {member!r} claims {size} bytes; refused")
    return read_member(archive, member, path)


def _json(raw: Any, path: Path, what: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, TypeError, RecursionError) as error:
        raise CheckpointError(f"{name(path)}: {what} is not JSON ({error}); the file is "
                              "corrupt") from error


def _layer_configs(config: Any) -> dict[str, tuple[str, dict]]:
    """``{layer name: (class name, config)}`` of every layer in a model config, nested too."""
    found: dict[str, tuple[str, dict]] = {}
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            inner = node.get("config")
            if isinstance(node.get("class_name"), str) and isinstance(inner, dict):
                layer = inner.get("name")
                if isinstance(layer, str) and layer not in found:
                    found[layer] = (node["class_name"], inner)
                stack.append(inner.get("layers", []))
    return found


def _activation(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("config") if value.get("class_name") == "function" else value.get(
            "class_name")
    return value.lower() if isinstance(value, str) else None


def _default_gate(version: str) -> str | None:
    """The default ``recurrent_activation`` of the Keras that wrote ``version``; ``None`` when
    the version does not tell (tf.keras ``2.2.4-tf`` was written by TF 1 and TF 2 alike)."""
    match = re.match(r"(\d+)\.(\d+)", version or "1")
    major, minor = (int(match[1]), int(match[2])) if match else (1, 0)
    if (major, minor) >= (2, 3):
        return "sigmoid"
    return None if version.endswith("-tf") else "hard_sigmoid"


class _Reader:
    """One file's walk: its path, model config, Keras version; the weights and infos found."""

    def __init__(self, path: Path, config: Any, version: str):
        self.path, self.version, self.model = path, version, config
        self.configs = _layer_configs(config)
        self.state: dict[str, np.ndarray] = {}
        self.info: dict[str, Info] = {}
        self.others: list[str] = []

    @classmethod
    def for_h5(cls, handle: Any, path: Path) -> tuple[dict, dict]:
        names = hdf5.children(handle, path)
        root = hdf5.member(handle, "model_weights", path) if "model_weights" in names else handle
        layers = hdf5.read_attribute(root, "layer_names", path)
        if layers is None:
            if "layers" in names:  # Keras 3 model.save_weights / .weights.h5
                return cls(path, None, "3").keras3(handle)
            raise CheckpointError(
                f"{name(path)} is an HDF5 file but not a Keras model or weights file (no "
                f"'layer_names' attribute; its top-level groups: {', '.join(names) or 'none'})")
        raw_config = hdf5.read_attribute(handle, "model_config", path)
        config = _json(raw_config, path, "model_config") if raw_config is not None else None
        version = (hdf5.read_attribute(root, "keras_version", path)
                   or hdf5.read_attribute(handle, "keras_version", path) or "1")
        reader = cls(path, config, str(version))
        for layer in hdf5.as_list(layers):
            group = hdf5.member(root, str(layer), path)
            weight_names = [str(w) for w in
                            hdf5.as_list(hdf5.read_attribute(group, "weight_names", path))]
            arrays = [hdf5.read_dataset(hdf5.member(group, w, path), path)
                      for w in weight_names]
            reader.layer(str(layer), weight_names, arrays, prefix="")
        return reader.result()

    def result(self) -> tuple[dict, dict]:
        if not self.state:
            held = ", ".join(self.others) or "none with weights"
            raise CheckpointError(f"{name(self.path)} holds no Keras LSTM (LSTM, CuDNNLSTM or "
                                  f"Bidirectional(LSTM)); its layers: {held}")
        return self.state, self.info

    # --- Keras 1/2: a layer's weight names and arrays -------------------------------------

    def layer(self, layer: str, weight_names: list[str], arrays: list[np.ndarray],
              prefix: str) -> None:
        cls, config = self.configs.get(layer, (None, {}))
        if not arrays:
            return
        heads = list(dict.fromkeys(w.split("/", 1)[0] for w in weight_names))
        nested = all("/" in w for w in weight_names) and len(heads) > 1  # Keras 1: no "/"
        if cls in MODEL_CLASSES or (cls is None and nested):
            for head in heads:  # a nested model: its weights are named after its layers
                chosen = [i for i, w in enumerate(weight_names) if w.split("/", 1)[0] == head]
                self.layer(head, [weight_names[i] for i in chosen], [arrays[i] for i in chosen],
                           prefix=f"{prefix}{_segment(layer)}.")
            return
        half = len(arrays) // 2
        inner = config.get("layer", {}) if isinstance(config.get("layer"), dict) else {}
        if (cls == "Bidirectional" and inner.get("class_name") in LSTM_CLASSES) or (
                cls is None and any("backward" in w for w in weight_names)
                and _lstm_like(arrays[:half]) and _lstm_like(arrays[half:])):
            self.add(prefix + _segment(layer), layer, [arrays[:half], arrays[half:]],
                     weight_names, inner.get("class_name"), inner.get("config", {}),
                     merge_mode=config.get("merge_mode", "concat"))
        elif cls in LSTM_CLASSES or (cls is None and _lstm_like(arrays)):
            self.add(prefix + _segment(layer), layer, [arrays], weight_names, cls, config)
        else:
            wrapped = f"({inner.get('class_name')})" if inner.get("class_name") else ""
            self.others.append(f"{layer} ({cls or 'unknown'}{wrapped})")

    def add(self, prefix: str, layer: str, per_direction: list[list[np.ndarray]],
            weight_names: Sequence[str], cls: str | None, config: Mapping[str, Any],
            merge_mode: Any = None) -> None:
        """Convert one layer (one or two directions) and record what is known of it."""
        cells = [self.cell(arrays, layer, weight_names) for arrays in per_direction]
        for direction, cell in enumerate(cells):
            for key, value in cell.items():
                self.state[f"{prefix}.{key}_l0{'_reverse' if direction else ''}"] = value
        cudnn = cls == "CuDNNLSTM" or any(a.shape[0] == 8 * per_direction[0][1].shape[0]
                                          for a in per_direction[0][2:3])
        info = self.describe(layer, cls, config, cudnn, merge_mode)
        if len(cells) == 2:
            info["class"] = f"Bidirectional({info['class']})"
        self.info[prefix + "."] = info

    def describe(self, layer: str, cls: str | None, config: Mapping[str, Any], cudnn: bool,
                 merge_mode: Any) -> Info:
        recorded = bool(config)
        keras3 = self.version.startswith("3")
        if cudnn:
            gate, cell = "sigmoid", "tanh"  # cuDNN's fixed activations
        else:
            gate = _activation(config.get("recurrent_activation", config.get(
                "inner_activation"))) or ("sigmoid" if keras3 else _default_gate(self.version))
            cell = _activation(config.get("activation")) or "tanh"
        info: Info = {"source": "keras", "layer": layer, "class": cls or ("CuDNNLSTM" if cudnn
                                                                          else "LSTM"),
                      "activation": cell, "recurrent_activation": gate,
                      "recorded": recorded or cudnn, "keras_version": self.version,
                      "batch_first": not config.get("time_major", False)}
        where = f"Keras layer {layer!r}"
        if gate is None:
            info["problem"] = (
                f"{where}: the file does not record its recurrent_activation, and Keras "
                f"{self.version} (TF 1 or TF 2) defaulted to hard_sigmoid or sigmoid; save the "
                "whole model (model.save) so its config is kept, or, if you know it is sigmoid, "
                "port the weights with jaxlstm.formats.keras.from_keras_lstm(weights)")
        elif gate not in ("sigmoid", "hard_sigmoid") or cell != "tanh":
            info["problem"] = (
                f"{where} uses recurrent_activation={gate!r}, activation={cell!r}"
                f"{' (the default of Keras ' + self.version + ')' if not recorded else ''}; "
                "jaxlstm computes sigmoid or hard_sigmoid gates and tanh, so porting it would "
                "change its outputs")
        elif merge_mode not in (None, "concat"):
            info["problem"] = (f"{where} is a Bidirectional with merge_mode={merge_mode!r}; "
                               "torch's bidirectional LSTM concatenates (merge_mode='concat')")
        elif config.get("go_backwards"):
            info["problem"] = (f"{where} has go_backwards=True (it reads the sequence "
                               "backwards); a torch LSTM reads forwards")
        elif gate == "hard_sigmoid":  # which one: the Keras that wrote the file tells
            info["gate_activation"] = KERAS3 if keras3 else KERAS2
        return info

    def cell(self, arrays: list[np.ndarray], layer: str, names: Sequence[str]) -> dict:
        """One direction's arrays as torch's ``weight_ih``/``weight_hh``/biases."""
        where = f"{name(self.path)}: Keras layer {layer!r}"
        if len(arrays) == 12:  # Keras 1: W, U, b per gate, gates i, c, f, o
            arrays = [np.concatenate([arrays[3 * g + k] for g in _KERAS1_ORDER], axis=-1)
                      for k in range(3)]
        if len(arrays) not in (2, 3) or not _lstm_shaped(arrays):
            shapes = ", ".join(str(a.shape) for a in arrays)
            raise CheckpointError(
                f"{where} has weights of shapes {shapes} ({', '.join(names)}); an LSTM has "
                "kernel (I, 4H), recurrent_kernel (H, 4H) and optionally bias (4H,) or, "
                "CuDNNLSTM, (8H,)")
        kernel, recurrent = arrays[0], arrays[1]
        hidden, inputs = recurrent.shape[0], kernel.shape[0]
        bias = arrays[2] if len(arrays) == 3 else None
        if bias is not None and bias.shape == (8 * hidden,):  # CuDNNLSTM
            blocks = np.split(kernel, 4, axis=1)
            return {"weight_ih": np.concatenate([b.reshape(hidden, inputs) for b in blocks]),
                    "weight_hh": np.concatenate(np.split(recurrent, 4, axis=1)),
                    "bias_ih": bias[:4 * hidden].copy(), "bias_hh": bias[4 * hidden:].copy()}
        cell = {"weight_ih": np.ascontiguousarray(kernel.T),
                "weight_hh": np.ascontiguousarray(recurrent.T)}
        if bias is not None:
            cell.update(split_bias(bias))
        return cell

    # --- Keras 3: layers/<name>/cell/vars ---------------------------------------------------

    def keras3(self, handle: Any) -> tuple[dict, dict]:
        names = hdf5.children(handle, self.path)
        if "layers" not in names:
            raise CheckpointError(f"{name(self.path)} is not a Keras 3 weights file (no "
                                  f"'layers' group; its groups: {', '.join(names) or 'none'})")
        self.walk3(hdf5.member(handle, "layers", self.path), "", self.model)
        return self.result()

    def walk3(self, layers: Any, prefix: str, model: Any) -> None:
        configs = _keras3_names(model)
        for group_name in hdf5.children(layers, self.path):
            group = hdf5.member(layers, group_name, self.path)
            members = hdf5.children(group, self.path) if _is_group(group) else []
            cls, config = configs.get(group_name, (None, {}))
            layer = config.get("name", group_name) if isinstance(config.get("name"), str) \
                else group_name
            if "layers" in members:
                self.walk3(hdf5.member(group, "layers", self.path), f"{prefix}{_segment(layer)}.",
                           {"class_name": cls, "config": config})
            elif "forward_layer" in members and "backward_layer" in members:
                directions = [self.vars3(hdf5.member(group, f"{side}_layer", self.path))
                              for side in ("forward", "backward")]
                inner = config.get("layer", {}) if isinstance(config.get("layer"), dict) else {}
                self.add(prefix + _segment(layer), layer, directions, [], inner.get(
                    "class_name"), inner.get("config", {}), config.get("merge_mode", "concat"))
            elif "cell" in members and cls in (None, *LSTM_CLASSES):
                arrays = self.vars3(group)
                if _lstm_shaped(arrays):
                    self.add(prefix + _segment(layer), layer, [arrays], [], cls, config)
                else:
                    self.others.append(f"{layer} ({cls or 'recurrent, not an LSTM'})")
            else:
                self.others.append(f"{layer} ({cls or 'unknown'})")

    def vars3(self, group: Any) -> list[np.ndarray]:
        variables = hdf5.member(group, "cell/vars", self.path)
        keys = sorted((k for k in hdf5.children(variables, self.path) if k.isdigit()), key=int)
        return [hdf5.read_dataset(hdf5.member(variables, k, self.path), self.path)
                for k in keys]


def _keras3_names(model: Any) -> dict[str, tuple[str, dict]]:
    """``{group name: (class name, config)}`` of a Keras 3 model's layers: Keras 3 names each
    layer's weights group after its class in snake case (``lstm``, ``lstm_1``, ...), in the
    order of ``model.layers`` (a ``Sequential`` leaves out its ``InputLayer``)."""
    if not isinstance(model, dict) or not isinstance(model.get("config"), dict):
        return {}
    layers = model["config"].get("layers")
    names: dict[str, tuple[str, dict]] = {}
    used: dict[str, int] = {}
    for entry in layers if isinstance(layers, list) else []:
        cls = entry.get("class_name") if isinstance(entry, dict) else None
        if not isinstance(cls, str) or (cls == "InputLayer"
                                         and model.get("class_name") == "Sequential"):
            continue
        snake = re.sub(r"([a-z])([A-Z])", r"\1_\2",
                       re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", re.sub(r"\W+", "", cls))).lower()
        count = used.get(snake)
        used[snake] = 0 if count is None else count + 1
        config = entry.get("config") if isinstance(entry.get("config"), dict) else {}
        names[snake if count is None else f"{snake}_{count + 1}"] = (cls, config)
    return names


def _is_group(node: Any) -> bool:
    return hasattr(node, "keys")


def _segment(layer: str) -> str:
    """A layer name as one segment of a dotted prefix."""
    return layer.replace(".", "_").replace("/", ".")


def _lstm_like(arrays: Sequence[np.ndarray]) -> bool:
    """An LSTM's weights: Keras 2/3's (see :func:`_lstm_shaped`) or Keras 1's twelve arrays."""
    return _lstm_shaped(arrays) or (len(arrays) == 12 and all(a.ndim in (1, 2) for a in arrays))


def _lstm_shaped(arrays: Sequence[np.ndarray]) -> bool:
    """``kernel (I, 4H)``, ``recurrent_kernel (H, 4H)``, optional bias ``(4H,)``/``(8H,)``."""
    if len(arrays) not in (2, 3) or any(a.ndim != 2 for a in arrays[:2]):
        return False
    kernel, recurrent = arrays[0], arrays[1]
    hidden = recurrent.shape[0]
    shaped = hidden > 0 and recurrent.shape[1] == 4 * hidden and kernel.shape[1] == 4 * hidden
    return shaped and (len(arrays) == 2 or arrays[2].shape in ((4 * hidden,), (8 * hidden,)))
