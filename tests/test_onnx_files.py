"""ONNX as deployed: LSTMs inside ``If`` branches, ``layout=1``, and ONNX Runtime's
``quantize_dynamic`` (``com.microsoft.DynamicQuantizeLSTM``). Each port is compared with ONNX
Runtime running the same weights."""

import warnings

import numpy as np
import pytest
import torch

import jaxlstm
from jaxlstm import cli
from jaxlstm.files import read_checkpoint

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
INPUT, HIDDEN = 3, 4


def _lstm_graph(name, rng, layout=0, steps=5, batch=2):
    """A graph of one forward ONNX LSTM with random W, R, B; returns (graph, x)."""
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), key)
             for key, shape in ((f"{name}_W", (1, 4 * HIDDEN, INPUT)),
                                (f"{name}_R", (1, 4 * HIDDEN, HIDDEN)),
                                (f"{name}_B", (1, 8 * HIDDEN)))]
    node = helper.make_node("LSTM", ["X", *(i.name for i in inits)], ["Y"], name=name,
                            hidden_size=HIDDEN, layout=layout)
    x_shape = [batch, steps, INPUT] if layout else [steps, batch, INPUT]
    return node, inits, rng.standard_normal(x_shape).astype(np.float32)


def _save_one_node(path, node, inits, x):
    """A model of ``node`` alone (input ``X`` shaped like ``x``, output ``Y``), saved to
    ``path``: ``(model, path)``."""
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    onnx.save(model, path)
    return model, path


def _run(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _port_output(path, x, prefix=None, **kwargs):
    model = jaxlstm.from_checkpoint(path, prefix, **kwargs)
    return np.asarray(model(x)[0])


def test_lstm_inside_an_if_branch_is_found_and_matches_onnx_runtime(tmp_path, capsys):
    rng = np.random.default_rng(0)
    node, inits, x = _lstm_graph("lstm", rng)
    then_branch = helper.make_graph(
        [node, helper.make_node("Squeeze", ["Y", "axis"], ["out_then"])], "then", [],
        [helper.make_tensor_value_info("out_then", TensorProto.FLOAT, None)],
        [*inits, numpy_helper.from_array(np.array([1]), "axis")])
    else_branch = helper.make_graph(
        [helper.make_node("Identity", ["X"], ["out_else"])], "else", [],
        [helper.make_tensor_value_info("out_else", TensorProto.FLOAT, None)])
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["out"], then_branch=then_branch,
                          else_branch=else_branch)], "g",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    path = tmp_path / "branch.onnx"
    onnx.save(model, path)
    assert list(read_checkpoint(path).lstm_info) == ["if_0.then_branch.lstm."]
    want = _run(model, {"cond": np.array(True), "X": x})[0]  # (T, N, H)
    got = _port_output(path, x)
    assert np.abs(got - want).max() <= 1e-5
    assert cli.main(["inspect", str(path)]) == 0
    assert "if_0.then_branch.lstm." in capsys.readouterr().out
    assert cli.main(["parity", str(path)]) == 0
    target = tmp_path / "branch.safetensors"
    assert cli.main(["convert", str(path), str(target), "--prefix", "then_branch.lstm"]) == 0
    assert np.abs(_port_output(target, x) - want).max() <= 1e-5


def test_layout_1_ports_batch_first(tmp_path, capsys):
    rng = np.random.default_rng(1)
    node, inits, x = _lstm_graph("lstm", rng, layout=1)
    model, path = _save_one_node(tmp_path / "batch_major.onnx", node, inits, x)
    assert read_checkpoint(path).lstm_info["lstm."]["batch_first"]
    # ONNX Runtime's CPU LSTM refuses layout=1: run the same node time-major instead.
    stored = model.graph.node[0]
    stored.attribute.remove(next(a for a in stored.attribute if a.name == "layout"))
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("X", TensorProto.FLOAT,
                                                          [x.shape[1], x.shape[0], INPUT]))
    want = _run(model, {"X": x.transpose(1, 0, 2)})[0][:, 0].transpose(1, 0, 2)  # (N, T, H)
    port = jaxlstm.from_checkpoint(path)
    assert port.batch_first
    assert np.abs(np.asarray(port(x)[0]) - want).max() <= 1e-5
    assert cli.main(["inspect", str(path)]) == 0
    assert "layout=1" in capsys.readouterr().out


def _dequantized_float_model(quantized):
    """The quantized model with each DynamicQuantizeLSTM replaced by a float ONNX LSTM whose
    W, R are the dequantized weights, computed here from the contrib op's documented inputs."""
    model = onnx.ModelProto()
    model.CopyFrom(quantized)
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for index, node in enumerate(model.graph.node):
        if node.op_type != "DynamicQuantizeLSTM":
            continue
        floats = []
        for q, scale, zero in ((1, 8, 9), (2, 10, 11)):
            weights = values[node.input[q]].astype(np.float64)  # (D, I or H, 4H)
            s = values[node.input[scale]].astype(np.float64)
            z = values[node.input[zero]].astype(np.float64)
            s, z = (a[:, None, :] if a.ndim == 2 else a[:, None, None] for a in (s, z))
            floats.append(((weights - z) * s).astype(np.float32).transpose(0, 2, 1))
        names = [f"float_W_{index}", f"float_R_{index}"]
        model.graph.initializer.extend(
            numpy_helper.from_array(a, n) for a, n in zip(floats, names))
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        replacement = helper.make_node("LSTM", [node.input[0], *names, *node.input[3:8]],
                                       list(node.output), name=node.name, **attributes)
        model.graph.node[index].CopyFrom(replacement)
    return model


@pytest.mark.parametrize("per_channel", [False, True], ids=["per-tensor", "per-channel"])
def test_quantize_dynamic_lstm_matches_onnx_runtime_on_dequantized_weights(
        tmp_path, capsys, per_channel):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(INPUT, HIDDEN, bidirectional=True).eval()
    source, target = tmp_path / "float.onnx", tmp_path / "int8.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(lstm, (torch.zeros(5, 2, INPUT),), str(source), dynamo=False,
                          input_names=["x"])
    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8,
                     per_channel=per_channel)
    quantized = onnx.load(str(target))
    assert any(n.op_type == "DynamicQuantizeLSTM" for n in quantized.graph.node)
    x = np.random.default_rng(2).standard_normal((5, 2, INPUT)).astype(np.float32)
    reference = _run(_dequantized_float_model(quantized), {"x": x})[0]  # torch's (T, N, 2H)
    port = _port_output(target, x)
    assert np.abs(port - reference).max() <= 1e-5
    int8_kernel = _run(quantized, {"x": x})[0]
    float_model = np.asarray(lstm(torch.from_numpy(x))[0].detach())
    # ONNX Runtime's int8 kernel also quantizes the inputs and states at each step: it is
    # near, not equal to, the float LSTM on the dequantized weights (measured here: 1.8e-3,
    # 0.6 % of the largest output, per-tensor and per-channel alike).
    assert np.abs(int8_kernel - port).max() <= 1e-2
    assert np.abs(port - float_model).max() <= 1e-2  # what rounding the weights to int8 costs
    info = read_checkpoint(target).lstm_info
    assert "per-channel" in next(iter(info.values()))["dequantized"] or not per_channel
    assert cli.main(["inspect", str(target)]) == 0
    assert "dequantized from int8" in capsys.readouterr().out
    assert cli.main(["parity", str(target), "--dtype", "float32"]) == 0
    assert cli.main(["convert", str(target), str(tmp_path / "dequantized.npz")]) == 0


# --- HardSigmoid gates -----------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
@pytest.mark.parametrize("alpha_beta", [None, (0.3, 0.4)], ids=["defaults", "given"])
def test_hard_sigmoid_nodes_port_and_match_onnx_runtime(tmp_path, capsys, direction, alpha_beta):
    rng = np.random.default_rng(5)
    count = 2 if direction == "bidirectional" else 1
    inits = [numpy_helper.from_array(2 * rng.standard_normal(shape).astype(np.float32), key)
             for key, shape in (("W", (count, 4 * HIDDEN, INPUT)),
                                ("R", (count, 4 * HIDDEN, HIDDEN)), ("B", (count, 8 * HIDDEN)))]
    extra = {} if alpha_beta is None else {"activation_alpha": [alpha_beta[0]] * count,
                                           "activation_beta": [alpha_beta[1]] * count}
    node = helper.make_node("LSTM", ["X", "W", "R", "B"], ["Y"], name="lstm",
                            hidden_size=HIDDEN, direction=direction,
                            activations=["HardSigmoid", "Tanh", "Tanh"] * count, **extra)
    x = rng.standard_normal((6, 2, INPUT)).astype(np.float32)
    model, path = _save_one_node(tmp_path / "hard.onnx", node, inits, x)
    alpha, beta = alpha_beta or (0.2, 0.5)
    # Given constants are float32 attributes; absent ones are ONNX's defaults, 0.2 and 0.5.
    gate = jaxlstm.HardSigmoid(*(float(np.float32(a)) for a in alpha_beta)) if alpha_beta \
        else jaxlstm.HardSigmoid(0.2, 0.5)
    assert read_checkpoint(path).lstm_info["lstm."]["gate_activation"] == gate
    want = _run(model, {"X": x})[0].transpose(0, 2, 1, 3).reshape(6, 2, -1)  # (T, N, D*H)
    port = jaxlstm.from_checkpoint(path)
    assert port.gate_activation == gate
    assert np.abs(np.asarray(port(x)[0]) - want).max() <= 1e-5
    assert cli.main(["inspect", str(path)]) == 0
    assert f"gate_activation={gate}" in capsys.readouterr().out
    assert cli.main(["parity", str(path)]) == 0
    # convert writes the activation into the exported node; ONNX Runtime runs it alike.
    target = tmp_path / "again.onnx"
    assert cli.main(["convert", str(path), str(target)]) == 0
    exported = onnx.load(target)
    lstm_node = next(n for n in exported.graph.node if n.op_type == "LSTM")
    attributes = {a.name: helper.get_attribute_value(a) for a in lstm_node.attribute}
    assert [a.decode() for a in attributes["activations"]] == ["HardSigmoid", "Tanh",
                                                               "Tanh"] * count
    assert np.allclose(attributes["activation_alpha"], [alpha] * count)
    states = np.zeros((count, 2, HIDDEN), np.float32)
    again = _run(exported, {"input": x, "h0": states, "c0": states})[0]
    assert np.abs(again - want).max() <= 1e-6


def test_onnx_export_of_a_model_with_hard_sigmoid_gates_runs_in_onnx_runtime(tmp_path):
    from jaxlstm.formats.onnx import write_onnx

    gate = jaxlstm.HardSigmoid(1 / 6, 0.5)
    model = jaxlstm.LSTM(INPUT, HIDDEN, num_layers=2, bidirectional=True, batch_first=True,
                         gate_activation=gate, rngs=__import__("flax").nnx.Rngs(0))
    for name, value in model.params().items():  # larger weights saturate some gates
        getattr(model, name)[...] = 4 * value
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 5, INPUT)).astype(np.float32)
    h0 = rng.standard_normal((4, 2, HIDDEN)).astype(np.float32)
    c0 = rng.standard_normal((4, 2, HIDDEN)).astype(np.float32)
    path = tmp_path / "export.onnx"
    write_onnx(model.params(), path, batch_first=True, gate_activation=gate)
    got = _run(onnx.load(path), {"input": x, "h0": h0, "c0": c0})
    out, (h_n, c_n) = model(x, (h0, c0))
    for onnx_value, value in zip(got, (out, h_n, c_n)):
        assert np.abs(onnx_value - np.asarray(value)).max() <= 1e-5
    assert jaxlstm.from_checkpoint(path).gate_activation == jaxlstm.HardSigmoid(
        float(np.float32(1 / 6)), 0.5)


@pytest.mark.parametrize("activations, extra, match", [
    (["HardSigmoid", "Tanh", "Tanh", "Sigmoid", "Tanh", "Tanh"], {}, "'activations'"),
    (["HardSigmoid", "Tanh", "Tanh"] * 2, {"activation_alpha": [0.2, 0.3]}, "directions"),
    (["HardSigmoid", "Relu", "Tanh"] * 2, {}, "'activations'"),
])
def test_hard_sigmoid_nodes_jaxlstm_cannot_run_are_named(tmp_path, activations, extra, match):
    from jaxlstm.formats.onnx import read_onnx

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("W", (2, 8, 3)), ("R", (2, 8, 2)))]
    node = helper.make_node("LSTM", ["X", "W", "R"], ["Y"], hidden_size=2,
                            direction="bidirectional", activations=activations, **extra)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", 1, [1, 1, 3])],
                              [helper.make_tensor_value_info("Y", 1, None)], inits)
    path = tmp_path / "odd.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(ValueError, match=match):
        read_onnx(path)
