"""ONNX ``LSTM`` nodes <-> torch-named weights.

An ONNX ``LSTM`` node is one layer: ``W (D, 4H, I)``, ``R (D, 4H, H)``, ``B (D, 8H)`` =
``[Wb || Rb]``, gates in the order **i, o, f, c** (torch: i, f, g, o), ``D = 2`` for
``direction="bidirectional"``. A stacked torch LSTM is a chain of such nodes, each reading the
previous one's output: :func:`read_onnx` follows the chains and returns each as one ``nn.LSTM``
state dict. ``activations=[HardSigmoid, Tanh, Tanh]`` (with ``activation_alpha``/``_beta``)
is recorded as the LSTM's ``gate_activation``; what jaxlstm cannot express (peepholes ``P``,
``clip``, ``input_forget``, other ``activations``, a lone ``reverse`` direction) raises, naming
the attribute. Nodes
inside ``If``/``Loop``/``Scan`` bodies are read too; ``layout=1`` (batch-major input) is
recorded so that the port gets ``batch_first=True``; ONNX Runtime's ``com.microsoft``
``DynamicQuantizeLSTM`` is read by dequantizing its int8/uint8 weights. The port then computes
the float LSTM on the dequantized weights — what ONNX Runtime's float ``LSTM`` computes with
them, not its int8 kernel, which also quantizes the inputs and states (measured on a small
BiLSTM: outputs within 2e-3, 0.6 % of the largest).

:func:`to_onnx` builds an ONNX model that runs a jaxlstm / torch LSTM: inputs ``input``
``(L, N, I)`` (``(N, L, I)`` batch-first), ``h0``, ``c0``; outputs ``output``,
``h_n``, ``c_n`` in torch's layout. It needs ``onnx``; ONNX Runtime runs the result.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxlstm.config import LSTMCellConfig, param_suffix
from jaxlstm.formats._common import directions
from jaxlstm.gates import HardSigmoid

FMT = "ONNX"
_TORCH_FROM_ONNX = (0, 2, 3, 1)  # torch i, f, g, o are ONNX blocks i=0, f=2, c=3, o=1
_ONNX_FROM_TORCH = (0, 3, 1, 2)  # ONNX i, o, f, c are torch blocks i=0, o=3, f=1, g=2
_DEFAULT_ACTIVATIONS = ("sigmoid", "tanh", "tanh")
QUANTIZED = "DynamicQuantizeLSTM"  # com.microsoft: ONNX Runtime's quantize_dynamic writes it


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as error:
        raise ImportError("ONNX support needs onnx: pip install 'jaxlstm[onnx]'") from error
    return onnx


def _reorder(array: np.ndarray, order: tuple[int, ...]) -> np.ndarray:
    """Reorder the 4 gate blocks along axis 0."""
    blocks = np.split(np.asarray(array), 4, axis=0)
    return np.concatenate([blocks[i] for i in order], axis=0)


def _attributes(node: Any) -> dict[str, Any]:
    onnx = _onnx()
    values = {}
    for attribute in node.attribute:
        value = onnx.helper.get_attribute_value(attribute)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list):
            value = [v.decode() if isinstance(v, bytes) else v for v in value]
        values[attribute.name] = value
    return values


def _check_node(node: Any, attributes: Mapping[str, Any], inputs: list[str]) -> None:
    where = f"ONNX {node.op_type} node {node.name!r}"
    if len(inputs) > 7 and inputs[7]:
        raise ValueError(f"{where} has peepholes (input P), which torch's LSTM does not have")
    if "clip" in attributes:
        raise ValueError(f"{where} sets attribute 'clip' (cell clipping), which torch's LSTM "
                         "does not do")
    if attributes.get("input_forget", 0):
        raise ValueError(f"{where} sets attribute 'input_forget=1' (coupled input and forget "
                         "gates), which torch's LSTM does not have")
    if attributes.get("direction", "forward") == "reverse":
        raise ValueError(f"{where} has attribute 'direction'='reverse' (a reverse-only LSTM); "
                         "torch's LSTM is forward or bidirectional")


def gate_activation(node: Any, attributes: Mapping[str, Any]) -> Any:
    """The node's gate activation: ``"sigmoid"`` (ONNX's default, torch's) or a
    :class:`~jaxlstm.gates.HardSigmoid` for ``activations`` =
    ``[HardSigmoid, Tanh, Tanh]`` per direction. ``activation_alpha``/``activation_beta`` are
    consumed in the order of the activations that take them (ONNX Runtime's reading; here
    HardSigmoid's, one per direction), ONNX's defaults 0.2 and 0.5 where absent; both
    directions must agree. Anything else raises, naming the attribute."""
    where = f"ONNX {node.op_type} node {node.name!r}"
    activations = [a.lower() for a in attributes.get("activations", [])]
    count = 2 if attributes.get("direction", "forward") == "bidirectional" else 1
    if not activations or activations == list(_DEFAULT_ACTIVATIONS) * count:
        return "sigmoid"
    if activations != ["hardsigmoid", "tanh", "tanh"] * count:
        raise ValueError(f"{where} sets attribute 'activations'={attributes['activations']}; "
                         "jaxlstm computes Sigmoid or HardSigmoid gates with Tanh, Tanh")
    alphas = list(attributes.get("activation_alpha", []))
    betas = list(attributes.get("activation_beta", []))
    gates = {HardSigmoid(alphas[d] if d < len(alphas) else 0.2,
                         betas[d] if d < len(betas) else 0.5) for d in range(count)}
    if len(gates) > 1:
        raise ValueError(f"{where}: its directions' HardSigmoid differ ({alphas}, {betas}); "
                         "jaxlstm's LSTM has one gate activation for both")
    return gates.pop()


def _constants(graph: Any, path: Path) -> dict[str, np.ndarray]:
    """Initializers and ``Constant`` node outputs of ``graph``, by name (byte counts checked)."""
    from jaxlstm.readers.onnx import to_array

    values = {i.name: to_array(i, path) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = to_array(node.attribute[0].t, path)
    return values


def _lstm_ancestor(graph: Any, tensor: str, lstm_outputs: Mapping[str, int]) -> set[int]:
    """The LSTM nodes whose output ``tensor`` is computed from without passing another LSTM."""
    producers = {out: node for node in graph.node for out in node.output}
    found: set[int] = set()
    stack, seen = [tensor], set()
    while stack:
        name = stack.pop()
        if name in seen or not name:
            continue
        seen.add(name)
        if name in lstm_outputs:
            found.add(lstm_outputs[name])
        elif name in producers:
            stack.extend(producers[name].input)
    return found


def read_onnx(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The weights of every LSTM in an ONNX model as one torch-named state dict.

    **Arguments:**

    - ``path``: the ``.onnx`` file (external data beside it is read too).

    Each chain of ``LSTM`` nodes (one node per layer) becomes one ``nn.LSTM`` under the prefix
    made from its first node's name (``/lstm/LSTM`` -> ``lstm.LSTM.``); nodes inside the
    subgraphs of ``If``/``Loop``/``Scan`` (any node's graph attributes) are found too, under
    the prefix of where they sit (``if_0.then_branch.lstm.``). ``com.microsoft``
    ``DynamicQuantizeLSTM`` nodes (ONNX Runtime's ``quantize_dynamic``) are read with their
    int8/uint8 ``W`` and ``R`` dequantized: ``(q - zero_point) * scale``. Only the weights are
    read: the graph is never run. See :func:`read_onnx_checkpoint` for what is known besides.
    """
    return read_onnx_checkpoint(path)[0]


def read_onnx_checkpoint(
    path: str | os.PathLike[str],
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    """``(weights, {prefix: info})``: :func:`read_onnx`'s weights, and per LSTM
    ``{"source": "onnx", "batch_first": layout == 1, "dequantized": ...}`` (``dequantized``
    only for ``DynamicQuantizeLSTM``: how its weights were turned back into floats)."""
    from jaxlstm.readers.onnx import load_model

    path = Path(path)
    state: dict[str, np.ndarray] = {}
    info: dict[str, dict[str, Any]] = {}
    _read_graph(load_model(path).graph, path, {}, "", state, info)
    return state, info


def _is_lstm(node: Any) -> bool:
    return (node.op_type == "LSTM" and node.domain in ("", "ai.onnx")) or (
        node.op_type == QUANTIZED and node.domain == "com.microsoft")


def _segment(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]+", ".", text).strip(".")


def _read_graph(graph: Any, path: Path, outer: Mapping[str, np.ndarray], scope: str,
                state: dict, info: dict, depth: int = 0) -> None:
    """The LSTM chains of ``graph`` under ``scope``, then those of its nodes' subgraphs
    (which may use the constants of the graphs around them)."""
    from jaxlstm.readers.guard import MAX_DEPTH

    if depth > MAX_DEPTH:
        raise ValueError(f"{path}: subgraphs nest deeper than {MAX_DEPTH}")
    constants = {**outer, **_constants(graph, path)}
    nodes = [node for node in graph.node if _is_lstm(node)]
    lstm_outputs = {out: index for index, node in enumerate(nodes) for out in node.output[:1]}
    chain_of: dict[int, int] = {}
    chains: list[list[int]] = []
    for index, node in enumerate(nodes):
        parents = _lstm_ancestor(graph, node.input[0], lstm_outputs)
        parent = next(iter(parents)) if len(parents) == 1 else None
        if parent is not None and chains[chain_of[parent]][-1] == parent:
            chain_of[index] = chain_of[parent]
            chains[chain_of[index]].append(index)
        else:
            chain_of[index] = len(chains)
            chains.append([index])
    for chain in chains:
        base = scope + (_segment(nodes[chain[0]].name) or "lstm")
        prefix, number = base, 0
        while prefix + "." in info:
            number += 1
            prefix = f"{base}_{number}"
        first = _attributes(nodes[chain[0]])
        info[prefix + "."] = {"source": "onnx", "batch_first": first.get("layout", 0) == 1}
        gates = {gate_activation(nodes[i], _attributes(nodes[i])) for i in chain}
        if len(gates) > 1:
            raise ValueError(f"ONNX LSTM nodes from {nodes[chain[0]].name!r} on: the layers' "
                             f"gate activations differ ({', '.join(map(str, gates))}); "
                             "a jaxlstm LSTM has one for all its layers")
        if gates != {"sigmoid"}:
            info[prefix + "."]["gate_activation"] = gates.pop()
        for layer, index in enumerate(chain):
            weights, dequantized = _node_weights(nodes[index], constants, layer)
            if dequantized:
                info[prefix + "."]["dequantized"] = dequantized
            for name, value in weights.items():
                state[f"{prefix}.{name}"] = value
    for index, node in enumerate(graph.node):
        where = _segment(node.name) or f"{node.op_type.lower()}_{index}"
        for attribute in node.attribute:
            subgraphs = [attribute.g] if attribute.HasField("g") else list(attribute.graphs)
            for number, subgraph in enumerate(subgraphs):
                label = attribute.name + (f"_{number}" if len(subgraphs) > 1 else "")
                _read_graph(subgraph, path, constants, f"{scope}{where}.{label}.", state, info,
                            depth + 1)


def _node_weights(node: Any, constants: Mapping[str, np.ndarray], layer: int
                  ) -> tuple[dict, str | None]:
    """One node's torch-named weights, and how they were dequantized (``None``: stored as
    floats)."""
    inputs = list(node.input)
    attributes = _attributes(node)
    _check_node(node, attributes, inputs)
    where = f"ONNX {node.op_type} node {node.name!r}"
    missing = [name for name in inputs[1:3] if name not in constants]
    if missing:
        raise ValueError(f"{where}: its weights {missing} are computed in the graph, not stored "
                         "as initializers or constants; cannot read them")
    weight, recurrent = constants[inputs[1]], constants[inputs[2]]
    dequantized = None
    if node.op_type == QUANTIZED:
        weight, recurrent, dequantized = _dequantize(where, inputs, constants, weight, recurrent)
    bias = constants.get(inputs[3]) if len(inputs) > 3 and inputs[3] else None
    _check_shapes(where, attributes, weight, recurrent, bias)
    state = {}
    for direction in range(weight.shape[0]):
        suffix = param_suffix(layer, direction)
        state["weight_ih" + suffix] = _reorder(weight[direction], _TORCH_FROM_ONNX)
        state["weight_hh" + suffix] = _reorder(recurrent[direction], _TORCH_FROM_ONNX)
        if bias is not None:
            wb, rb = np.split(bias[direction], 2)
            state["bias_ih" + suffix] = _reorder(wb, _TORCH_FROM_ONNX)
            state["bias_hh" + suffix] = _reorder(rb, _TORCH_FROM_ONNX)
    return state, dequantized


def _dequantize(where: str, inputs: list[str], constants: Mapping[str, np.ndarray],
                weight: np.ndarray, recurrent: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """``DynamicQuantizeLSTM``'s ``W (D, I, 4H)`` and ``R (D, H, 4H)`` (int8/uint8, inputs 1
    and 2) with ``W_scale``, ``W_zero_point``, ``R_scale``, ``R_zero_point`` (inputs 8..11,
    shape ``(D,)`` per direction or ``(D, 4H)`` per output channel) as ONNX ``LSTM``'s float
    ``W (D, 4H, I)`` and ``R (D, 4H, H)``."""
    names = inputs[8:12]
    if len(names) != 4 or not all(n in constants for n in names):
        raise ValueError(f"{where}: its scales and zero points (inputs 8-11) are not all stored "
                         "as initializers or constants; cannot dequantize its weights")
    arrays = []
    per_channel = False
    for quantized, scale, zero in ((weight, *names[:2]), (recurrent, *names[2:])):
        scale, zero = constants[scale], constants[zero]
        if quantized.dtype not in (np.int8, np.uint8) or quantized.ndim != 3:
            raise ValueError(f"{where}: quantized weights of {quantized.dtype} and shape "
                             f"{quantized.shape}; expected int8/uint8 (D, I or H, 4H)")
        directions, _, gates = quantized.shape
        if scale.shape != zero.shape or scale.shape not in ((directions,), (directions, gates)):
            raise ValueError(f"{where}: scale {scale.shape} and zero point {zero.shape} do not "
                             f"fit weights {quantized.shape}: expected ({directions},) or "
                             f"({directions}, {gates})")
        per_channel |= scale.ndim == 2
        shape = (directions, 1, gates) if scale.ndim == 2 else (directions, 1, 1)
        floats = (quantized.astype(np.float32) - zero.astype(np.float32).reshape(shape)) * \
            scale.astype(np.float32).reshape(shape)
        arrays.append(np.ascontiguousarray(floats.transpose(0, 2, 1)))
    how = (f"{weight.dtype} weights, {'per-channel' if per_channel else 'per-direction'} "
           "scales: (q - zero_point) * scale")
    return arrays[0], arrays[1], how


def _check_shapes(where: str, attributes: Mapping[str, Any], weight: np.ndarray,
                  recurrent: np.ndarray, bias: np.ndarray | None) -> None:
    """``W (D, 4H, I)``, ``R (D, 4H, H)``, ``B (D, 8H)`` with ``D`` from ``direction`` and ``H``
    from ``hidden_size`` (when given): the node's weights must agree with each other."""
    count = 2 if attributes.get("direction", "forward") == "bidirectional" else 1
    hidden = attributes.get("hidden_size", recurrent.shape[-1] if recurrent.ndim == 3 else 0)
    expected = {"W": (count, 4 * hidden, weight.shape[-1] if weight.ndim == 3 else -1),
                "R": (count, 4 * hidden, hidden), "B": (count, 8 * hidden)}
    found = {"W": weight.shape, "R": recurrent.shape}
    if bias is not None:
        found["B"] = bias.shape
    wrong = [f"{key} {shape} (expected {expected[key]})" for key, shape in found.items()
             if tuple(shape) != expected[key]]
    if wrong or not hidden:
        raise ValueError(f"{where} (direction={attributes.get('direction', 'forward')!r}, "
                         f"hidden_size={hidden}) has inconsistent weights: {'; '.join(wrong)}")


def to_onnx(
    state_dict: Mapping[str, Any], *, batch_first: bool = False, opset: int = 14,
    gate_activation: Any = "sigmoid",
) -> Any:
    """An ONNX ``ModelProto`` that computes the LSTM of torch-named ``state_dict``.

    **Arguments:**

    - ``state_dict``: an ``nn.LSTM`` without projection (any layers and directions).
    - ``batch_first``: the model's ``input``/``output`` are ``(N, L, *)`` instead of
      ``(L, N, *)`` (``h0``/``h_n``/``c0``/``c_n`` never are).
    - ``opset``: the ONNX opset (LSTM is opset 7+, ``layout`` 14+).
    - ``gate_activation``: ``"sigmoid"`` or a ``HardSigmoid``, written into each ``LSTM`` node
      as ``activations=[HardSigmoid, Tanh, Tanh]`` (per direction) with its
      ``activation_alpha``/``activation_beta`` (stored as float32, as ONNX attributes are).

    Inputs ``input``, ``h0``, ``c0`` (all three required: feed zeros for torch's default
    state); outputs ``output``, ``h_n``, ``c_n``, shaped
    as torch's ``nn.LSTM``. Sequence length and batch size are free.
    """
    onnx = _onnx()
    from onnx import helper, numpy_helper

    config, layers = directions(state_dict, fmt=FMT)
    if isinstance(config, LSTMCellConfig):
        raise ValueError("ONNX export takes an nn.LSTM; an LSTMCell is one step, export it as "
                         "a 1-layer LSTM over sequences of length 1")
    hidden = config.hidden_size
    dtype = np.asarray(layers[0][0].weight_ih).dtype
    if dtype not in (np.float32, np.float64, np.float16):
        raise ValueError(f"ONNX export needs float32, float64 or float16 weights, got {dtype}")
    elem = helper.np_dtype_to_tensor_dtype(dtype)
    count = config.num_directions
    activations = {}
    if gate_activation != "sigmoid":
        gate = HardSigmoid(gate_activation.alpha, gate_activation.beta)
        activations = {"activations": ["HardSigmoid", "Tanh", "Tanh"] * count,
                       "activation_alpha": [gate.alpha] * count,
                       "activation_beta": [gate.beta] * count}
    nodes, initializers = [], []

    def constant(name: str, value: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    x = "input"
    if batch_first:
        nodes.append(helper.make_node("Transpose", ["input"], ["input_tm"], perm=[1, 0, 2]))
        x = "input_tm"
    h_parts, c_parts = [], []
    for layer, cells in enumerate(layers):
        weights = np.stack([_reorder(c.weight_ih, _ONNX_FROM_TORCH) for c in cells])
        recurrent = np.stack([_reorder(c.weight_hh, _ONNX_FROM_TORCH) for c in cells])
        inputs = [x, constant(f"W_l{layer}", weights), constant(f"R_l{layer}", recurrent)]
        if config.bias:
            bias = np.stack([np.concatenate([_reorder(c.bias_ih, _ONNX_FROM_TORCH),
                                             _reorder(c.bias_hh, _ONNX_FROM_TORCH)])
                             for c in cells])
            inputs.append(constant(f"B_l{layer}", bias))
        else:
            inputs.append("")
        rows = constant(f"rows_l{layer}", np.array([layer * count, (layer + 1) * count]))
        starts, ends = f"start_l{layer}", f"end_l{layer}"
        nodes.append(helper.make_node("Split", [rows], [starts, ends], axis=0, num_outputs=2)
                     if opset >= 18 else helper.make_node("Split", [rows], [starts, ends],
                                                          axis=0))
        for state in ("h0", "c0"):
            nodes.append(helper.make_node("Slice", [state, starts, ends], [f"{state}_l{layer}"]))
        inputs += ["", f"h0_l{layer}", f"c0_l{layer}"]
        y, y_h, y_c = f"Y_l{layer}", f"Yh_l{layer}", f"Yc_l{layer}"
        nodes.append(helper.make_node(
            "LSTM", inputs, [y, y_h, y_c], name=f"lstm_l{layer}", hidden_size=hidden,
            direction="bidirectional" if count == 2 else "forward", **activations,
        ))
        # Y (L, D, N, H) -> (L, N, D*H), torch's layer output.
        nodes.append(helper.make_node("Transpose", [y], [f"{y}_t"], perm=[0, 2, 1, 3]))
        shape = constant(f"shape_l{layer}", np.array([0, 0, -1]))
        x = f"out_l{layer}"
        nodes.append(helper.make_node("Reshape", [f"{y}_t", shape], [x]))
        h_parts.append(y_h)
        c_parts.append(y_c)
    final = "output"
    if batch_first:
        nodes.append(helper.make_node("Transpose", [x], ["output"], perm=[1, 0, 2]))
    else:
        nodes.append(helper.make_node("Identity", [x], [final]))
    nodes.append(helper.make_node("Concat", h_parts, ["h_n"], axis=0))
    nodes.append(helper.make_node("Concat", c_parts, ["c_n"], axis=0))
    time_batch = ["batch", "time"] if batch_first else ["time", "batch"]
    states = config.num_layers * count
    graph = helper.make_graph(
        nodes, "jaxlstm_lstm",
        [helper.make_tensor_value_info("input", elem, [*time_batch, config.input_size]),
         helper.make_tensor_value_info("h0", elem, [states, "batch", hidden]),
         helper.make_tensor_value_info("c0", elem, [states, "batch", hidden])],
        [helper.make_tensor_value_info("output", elem, [*time_batch, count * hidden]),
         helper.make_tensor_value_info("h_n", elem, [states, "batch", hidden]),
         helper.make_tensor_value_info("c_n", elem, [states, "batch", hidden])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="jaxlstm")
    onnx.checker.check_model(model)
    return model


def write_onnx(state_dict: Mapping[str, Any], path: str | os.PathLike[str],
               *, batch_first: bool = False, gate_activation: Any = "sigmoid") -> None:
    """Save :func:`to_onnx` of ``state_dict`` to ``path``."""
    model = to_onnx(state_dict, batch_first=batch_first, gate_activation=gate_activation)
    Path(path).write_bytes(model.SerializeToString())
