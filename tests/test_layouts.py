"""Real checkpoints in every layout: nested, Lightning, sharded, TorchScript, ONNX; bf16; errors.

Each file is made here from real torch objects; each port is compared with torch computing the
same thing (jaxlstm.testing: outputs, states and gradients, fp32 <= 1e-5, fp64 <= 1e-10).
"""

import json
import warnings

import jax
import numpy as np
import pytest
import torch

import jaxlstm
from jaxlstm import cli, files, testing
from jaxlstm.porting import to_tensor

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning",
                                        "ignore::UserWarning")


class Net(torch.nn.Module):
    def __init__(self, bidirectional=True):
        super().__init__()
        self.embed = torch.nn.Linear(2, 3)
        self.encoder = torch.nn.Module()
        self.encoder.rnn = torch.nn.LSTM(3, 5, num_layers=2, bidirectional=bidirectional)
        self.head = torch.nn.Linear(10 if bidirectional else 5, 2)

    def forward(self, x):
        return self.head(self.encoder.rnn(self.embed(x))[0])


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return Net()


def _optimizer_state(module):
    optimizer = torch.optim.Adam(module.parameters())
    module(torch.ones(4, 2, 2)).sum().backward()
    optimizer.step()
    return optimizer.state_dict()


def _matches(port, torch_lstm, dtypes=("float32", "float64")):
    """The port against the torch LSTM, in each dtype (torch computes the reference)."""
    for dtype in dtypes:
        module = torch_lstm.to(getattr(torch, dtype))
        with jax.enable_x64(dtype == "float64"):
            model = jaxlstm.from_torch({k: v for k, v in port.items()}, param_dtype=dtype)
            testing.assert_matches(module, model)
    torch_lstm.float()


def _inspect(capsys, path):
    assert cli.main(["inspect", str(path)]) == 0
    return capsys.readouterr().out


def test_nested_training_checkpoint(tmp_path, capsys, net):
    path = tmp_path / "train.pt"
    torch.save({"step": 7, "model_state": {"net": {"model": net.state_dict()}},
                "ema_state_dict": {"module": net.state_dict()},
                "optimizer_state": _optimizer_state(net)}, path)
    out = _inspect(capsys, path)
    assert "model_state.net.model.encoder.rnn." in out and "ema_state_dict.encoder.rnn." in out
    assert "optimizer_state" in out and "2 LSTMs" in out
    found = jaxlstm.find_lstms(files.load_state_dict(path))
    assert [f.prefix for f in found] == ["ema_state_dict.encoder.rnn.",
                                         "model_state.net.model.encoder.rnn."]
    with pytest.raises(ValueError, match="fits 2 LSTMs"):
        jaxlstm.from_checkpoint(path, "encoder.rnn")
    model = jaxlstm.from_checkpoint(path, "model_state.net.model.encoder.rnn.")
    testing.assert_matches(net.encoder.rnn, model)
    _matches(jaxlstm.to_torch(model), net.encoder.rnn, dtypes=("float64",))
    out_file = tmp_path / "rnn.safetensors"
    assert cli.main(["convert", str(path), str(out_file), "--prefix", "ema_state_dict."
                     "encoder.rnn"]) == 0
    torch.nn.LSTM(3, 5, 2, bidirectional=True).load_state_dict(
        {k: to_tensor(v) for k, v in files.load_state_dict(out_file).items()}, strict=True)


def test_prefix_through_the_one_container_that_held_every_tensor(tmp_path, capsys, net):
    # Before the first step the optimizer state holds no tensors, so 'model_state.net' holds
    # every tensor and is dropped on reading; the prefix as the file spells it (whole, or any
    # unique tail of it) still picks the LSTM.
    path = tmp_path / "train.pt"
    torch.save({"step": 0, "model_state": {"net": net.state_dict()},
                "optimizer_state": torch.optim.Adam(net.parameters()).state_dict()}, path)
    assert files.read_checkpoint(path).wrapper == "model_state.net"
    for prefix in ("model_state.net.encoder.rnn.", "net.encoder.rnn", "encoder.rnn."):
        model = jaxlstm.from_checkpoint(path, prefix)
        _matches(jaxlstm.to_torch(model), net.encoder.rnn, dtypes=("float64",))
        assert cli.main(["parity", str(path), "--prefix", prefix, "--dtype", "float64"]) == 0
    capsys.readouterr()
    with pytest.raises(ValueError, match="no LSTM at prefix 'decoder.rnn.'"):
        jaxlstm.from_checkpoint(path, "decoder.rnn")


def test_lightning_checkpoint_with_model_prefix(tmp_path, capsys, net):
    path = tmp_path / "epoch=3.ckpt"
    state = {f"model.{k}": v for k, v in net.state_dict().items()}
    torch.save({"epoch": 3, "global_step": 90, "pytorch-lightning_version": "2.4.0",
                "state_dict": state, "optimizer_states": [_optimizer_state(net)],
                "lr_schedulers": [], "callbacks": {}}, path)
    out = _inspect(capsys, path)
    assert "state_dict.model.encoder.rnn." in out
    model = jaxlstm.from_checkpoint(path, "model.encoder.rnn.")  # a unique tail is enough
    testing.assert_matches(net.encoder.rnn, model)


def test_sharded_hf_checkpoint(tmp_path, capsys, net):
    from safetensors.torch import save_file

    state = {f"_orig_mod.{k}": v.contiguous() for k, v in net.state_dict().items()}
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, part in shards.items():
        save_file({k: state[k] for k in part}, str(tmp_path / name))
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": {
        k: name for name, part in shards.items() for k in part}}))
    out = _inspect(capsys, index)
    assert "encoder.rnn." in out and "[sharded]" in out
    testing.assert_matches(net.encoder.rnn, jaxlstm.from_checkpoint(index))
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(files.CheckpointError, match="shard 'model-00002-of-00002.safetensors'"):
        files.read_checkpoint(index)


@pytest.mark.parametrize("whole", [False, True], ids=["scripted-lstm", "scripted-model"])
def test_torchscript_archive_is_read_without_running_it(tmp_path, capsys, net, monkeypatch,
                                                        whole):
    torch.manual_seed(1)
    source = net if whole else torch.nn.LSTM(3, 5, num_layers=2)
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(source), str(path))

    def refuse(*args, **kwargs):
        raise AssertionError("torch.jit.load must not be called")

    monkeypatch.setattr(torch.jit, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    out = _inspect(capsys, path)
    assert "[torchscript]" in out
    lstm = net.encoder.rnn if whole else source
    assert ("encoder.rnn." if whole else "(root)") in out
    model = jaxlstm.from_checkpoint(path, "encoder.rnn" if whole else None)
    monkeypatch.undo()
    testing.assert_matches(lstm, model)


def test_torchscript_cell_in_bfloat16_keeps_its_dtype(tmp_path):
    cell = torch.nn.LSTMCell(3, 4).to(torch.bfloat16)
    path = tmp_path / "cell.pt"
    torch.jit.save(torch.jit.script(cell), str(path))
    model = jaxlstm.from_checkpoint(path)
    assert isinstance(model, jaxlstm.LSTMCell) and model.weight_ih[...].dtype == "bfloat16"
    np.testing.assert_array_equal(np.asarray(model.weight_hh[...], np.float32),
                                  cell.weight_hh.float().detach().numpy())


def _onnx_export(module, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(4, 2, module.input_size),), str(path),
                          dynamo=False)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_onnx_model_from_torch_onnx_export(tmp_path, capsys, bidirectional):
    pytest.importorskip("onnx")
    torch.manual_seed(2)
    lstm = torch.nn.LSTM(3, 5, num_layers=2, bidirectional=bidirectional).eval()
    path = tmp_path / "lstm.onnx"
    _onnx_export(lstm, path)
    out = _inspect(capsys, path)
    assert "[onnx]" in out and f"{'yes' if bidirectional else 'no'}" in out
    model = jaxlstm.from_checkpoint(path)  # one LSTM: no prefix needed
    assert model.config == jaxlstm.LSTMConfig.create(3, 5, 2, bidirectional=bidirectional)
    testing.assert_matches(lstm, model)
    _matches(jaxlstm.to_torch(model), lstm, dtypes=("float64",))
    target = tmp_path / "lstm.safetensors"
    assert cli.main(["convert", str(path), str(target)]) == 0


@pytest.mark.parametrize("batch_first", [False, True])
def test_onnx_export_runs_in_onnx_runtime_like_jaxlstm(tmp_path, batch_first):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(3)
    lstm = torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True, batch_first=batch_first)
    source = tmp_path / "lstm.pt"
    torch.save(lstm.state_dict(), source)
    target = tmp_path / "lstm.onnx"
    assert cli.main(["convert", str(source), str(target)]) == 0
    model = jaxlstm.from_checkpoint(source, batch_first=batch_first)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 3) if batch_first else (6, 2, 3)).astype(np.float32)
    h0 = rng.standard_normal((4, 2, 5)).astype(np.float32)
    c0 = rng.standard_normal((4, 2, 5)).astype(np.float32)
    from jaxlstm.formats.onnx import to_onnx

    session = ort.InferenceSession(
        to_onnx(jaxlstm.to_torch(model), batch_first=batch_first).SerializeToString())
    onnx_out = session.run(None, {"input": x, "h0": h0, "c0": c0})
    out, (h_n, c_n) = model(x, (h0, c0))
    for got, want in zip(onnx_out, (out, h_n, c_n)):
        assert testing.relative_error(got, want) <= 1e-5
    assert jaxlstm.find_lstms(files.load_state_dict(target))[0].config.bidirectional


def test_onnx_features_torch_lacks_are_named(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    from jaxlstm.formats.onnx import read_onnx

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("W", (1, 8, 3)), ("R", (1, 8, 2)))]
    for attribute, value in [("clip", 1.0), ("input_forget", 1),
                             ("activations", ["Relu", "Tanh", "Tanh"])]:
        node = helper.make_node("LSTM", ["X", "W", "R"], ["Y"], hidden_size=2,
                                **{attribute: value})
        graph = helper.make_graph(
            [node], "g", [helper.make_tensor_value_info("X", 1, [1, 1, 3])],
            [helper.make_tensor_value_info("Y", 1, None)], inits)
        path = tmp_path / f"{attribute}.onnx"
        onnx.save(helper.make_model(graph), str(path))
        with pytest.raises(ValueError, match=f"attribute '{attribute}"):
            read_onnx(path)


# --- bfloat16 through every entry point ----------------------------------------------------------


def test_bfloat16_is_kept_through_every_entry_point(tmp_path):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(4)
    lstm = torch.nn.LSTM(3, 4, num_layers=2).to(torch.bfloat16)
    bits = {k: v.view(torch.int16).numpy() for k, v in lstm.state_dict().items()}

    def same(model):
        for name, value in jaxlstm.to_torch(model).items():
            assert value.dtype.name == "bfloat16", name
            np.testing.assert_array_equal(value.view(np.int16), bits[name], err_msg=name)

    same(jaxlstm.from_torch(lstm))
    same(jaxlstm.from_torch(lstm.state_dict()))
    torch.save({"model": {"rnn": lstm.state_dict()}}, tmp_path / "m.pt")
    same(jaxlstm.from_checkpoint(tmp_path / "m.pt"))
    save_file(lstm.state_dict(), str(tmp_path / "m.safetensors"))
    same(jaxlstm.from_checkpoint(tmp_path / "m.safetensors"))
    model = jaxlstm.from_torch(lstm)
    jaxlstm.checkpoint.save_safetensors(model, tmp_path / "out.safetensors")
    written = load_file(str(tmp_path / "out.safetensors"))
    assert all(v.dtype == torch.bfloat16 for v in written.values())
    back = jaxlstm.to_torch_module(model)
    assert back.weight_ih_l0.dtype == torch.bfloat16
    assert torch.equal(back.weight_hh_l1, lstm.weight_hh_l1)
    module, variables = jaxlstm.linen.from_torch(lstm)
    assert all(v.dtype == "bfloat16" for v in variables["params"].values())
    assert jaxlstm.from_torch(lstm, param_dtype=np.float32).weight_ih_l0[...].dtype == "float32"


# --- error messages ------------------------------------------------------------------------------


def test_whole_model_state_dict_gets_the_from_checkpoint_call(net):
    with pytest.raises(ValueError) as error:
        jaxlstm.from_torch(net.state_dict())
    assert "'encoder.rnn.'" in str(error.value)
    assert "jaxlstm.from_checkpoint(state_dict_or_path, 'encoder.rnn.')" in str(error.value)


@pytest.mark.parametrize("make", [lambda: torch.nn.GRU(4, 8), lambda: torch.nn.RNN(4, 8),
                                  lambda: torch.nn.GRUCell(4, 8)], ids=["GRU", "RNN", "GRUCell"])
def test_gru_and_rnn_are_named_not_a_shape_mismatch(make):
    module = make()
    kind = type(module).__name__
    with pytest.raises(ValueError, match=f"this is a torch.nn.{kind}, not an LSTM"):
        jaxlstm.from_torch(module)
    with pytest.raises(ValueError, match=f"weights of a torch.nn.{kind}, not of an LSTM"):
        jaxlstm.from_torch(module.state_dict())


def test_inspect_reads_the_npz_that_convert_wrote(tmp_path, capsys):
    source = tmp_path / "lstm.pt"
    torch.save(torch.nn.LSTM(3, 4, bidirectional=True).state_dict(), source)
    assert cli.main(["convert", str(source), str(tmp_path / "x.npz")]) == 0
    out = _inspect(capsys, tmp_path / "x.npz")
    assert "[npz]" in out and "LSTM" in out and "yes" in out


def test_garbage_pt_gets_a_real_message(tmp_path, capsys):
    path = tmp_path / "bad.pt"
    path.write_bytes(b"e" + bytes(range(200)))
    assert cli.main(["inspect", str(path)]) == 1
    message = capsys.readouterr().err
    assert "is not a torch checkpoint or it is corrupt: it starts with b'e\\x00\\x01\\x02'" \
        in message and not message.rstrip().endswith(")")


def test_inspect_shows_the_table_with_the_broken_module_flagged(tmp_path, capsys, net):
    state = dict(net.state_dict())
    del state["encoder.rnn.bias_hh_l1"]
    path = tmp_path / "broken.pt"
    torch.save(state, path)
    assert cli.main(["inspect", str(path)]) == 1
    captured = capsys.readouterr()
    assert "encoder.rnn. !" in captured.out and "prefix" in captured.out
    assert "missing key 'encoder.rnn.bias_hh_l1'" in captured.err


# --- jaxlstm parity FILE and jaxlstm.testing -----------------------------------------------------


def test_parity_file_passes_and_names_a_corrupted_weight(tmp_path, capsys, net):
    path = tmp_path / "train.pt"
    torch.save({"step": 1, "model_state": net.state_dict()}, path)
    assert cli.main(["parity", str(path), "--prefix", "encoder.rnn", "--steps", "4"]) == 0
    assert "the port matches torch" in capsys.readouterr().out
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["encoder.rnn.weight_hh_l1"][0, 0] = float("nan")
    torch.save({"step": 1, "model_state": state}, path)
    assert cli.main(["parity", str(path), "--prefix", "encoder.rnn", "--dtype", "float32"]) == 1
    assert "weight 'weight_hh_l1'" in capsys.readouterr().err


def test_assert_matches_names_the_tensor_that_differs():
    torch.manual_seed(5)
    lstm = torch.nn.LSTM(3, 4)
    model = jaxlstm.from_torch(lstm)
    model.bias_hh_l0[...] = model.bias_hh_l0[...] + 1e-3
    with pytest.raises(AssertionError, match="jaxlstm does not match torch: output"):
        testing.assert_matches(lstm, model)
    report = testing.compare(lstm, seq_lengths=[7, 2, 5])
    assert report.passed and {c.torch_path for c in report.comparisons} == {"oneDNN", "native"}
