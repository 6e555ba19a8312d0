"""Checkpoint files and whole-model state dicts: safe reading, atomic writing, finding LSTMs."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

import jaxlstm
from jaxlstm import files
from jaxlstm.porting import find_lstms, from_checkpoint, select_lstm


class Model(torch.nn.Module):
    """A model in which the LSTMs are submodules, beside look-alike GRU/RNN weights."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(7, 3)
        self.encoder = torch.nn.Module()
        self.encoder.rnn = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True)
        self.decoder = torch.nn.LSTMCell(8, 5, bias=False)
        self.proj = torch.nn.LSTM(3, 6, proj_size=2, batch_first=True)
        self.gru = torch.nn.GRU(3, 4)
        self.gru_cell = torch.nn.GRUCell(3, 4)
        self.rnn = torch.nn.RNN(3, 4)
        self.head = torch.nn.Linear(5, 2)
        self.norm = torch.nn.BatchNorm1d(3)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Model()


def _numpy(state):
    return {k: v.detach().numpy() for k, v in state.items()}


def _count(module):
    return sum(p.numel() for p in module.parameters())


# --- reading -------------------------------------------------------------------------------------


def test_read_pt_state_dict_is_exact(tmp_path, model):
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    checkpoint = files.read_checkpoint(path)
    assert checkpoint.wrapper is None
    assert list(checkpoint.state_dict) == list(model.state_dict())
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(checkpoint.state_dict[key], value.numpy(), err_msg=key)


@pytest.mark.parametrize("wrapper", ["state_dict", "model_state_dict", "model"])
def test_common_checkpoint_wrappers_are_found_and_reported(tmp_path, model, wrapper):
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}, wrapper: model.state_dict()}, path)
    checkpoint = files.read_checkpoint(path)
    assert checkpoint.wrapper == wrapper
    assert set(checkpoint.state_dict) == set(model.state_dict())


def test_non_tensor_entries_are_listed_not_dropped_silently(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"weight_ih": torch.ones(8, 2), "weight_hh": torch.ones(8, 2), "step": 4}, path)
    checkpoint = files.read_checkpoint(path)
    assert checkpoint.skipped == ("step",)
    assert set(checkpoint.state_dict) == {"weight_ih", "weight_hh"}


def test_unsafe_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    path = tmp_path / "unsafe.pt"
    torch.save({"model": torch.nn.LSTM(2, 3).state_dict(), "payload": Payload()}, path)
    with pytest.raises(files.CheckpointError) as error:
        files.read_checkpoint(path)
    message = str(error.value)
    assert str(path) in message and "pickled Python objects" in message
    assert "torch.save(model.state_dict(), path)" in message and "it would import" in message
    assert "weights_only=False" not in message and "likely succeed" not in message
    assert not marker.exists()


def test_whole_pickled_module_is_refused(tmp_path):
    path = tmp_path / "module.pt"
    torch.save(torch.nn.LSTM(2, 3), path)
    with pytest.raises(files.CheckpointError, match="pickled Python objects"):
        files.read_checkpoint(path)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_truncated_pt_names_the_file(tmp_path, legacy):
    path = tmp_path / "cut.pt"
    torch.save(torch.nn.LSTM(2, 3).state_dict(), path, _use_new_zipfile_serialization=not legacy)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(files.CheckpointError, match="truncated or corrupt") as error:
        files.read_checkpoint(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("content", [b"", b"this is not a checkpoint"], ids=["empty", "garbage"])
def test_corrupt_pt_names_the_file(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(files.CheckpointError, match="corrupt") as error:
        files.read_checkpoint(path)
    assert str(path) in str(error.value)


def test_missing_file_and_non_state_dict(tmp_path):
    with pytest.raises(files.CheckpointError, match="does not exist"):
        files.read_checkpoint(tmp_path / "nope.pt")
    path = tmp_path / "tensor.pt"
    torch.save(torch.ones(3), path)
    with pytest.raises(files.CheckpointError, match="holds a Tensor, not a state dict"):
        files.read_checkpoint(path)
    torch.save({"epoch": 1}, path)
    with pytest.raises(files.CheckpointError, match="holds no tensors.*'epoch'"):
        files.read_checkpoint(path)


def test_safetensors_written_here_load_in_torch_with_torch_names(tmp_path):
    from safetensors.torch import load_file

    module = torch.nn.LSTM(3, 4, num_layers=2, proj_size=2)
    model = jaxlstm.from_torch(module)
    path = files.save_safetensors(jaxlstm.to_torch(model), tmp_path / "lstm.safetensors")
    fresh = torch.nn.LSTM(3, 4, num_layers=2, proj_size=2)
    fresh.load_state_dict(load_file(path), strict=True)
    for key, value in module.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_safetensors_written_by_torch_are_read(tmp_path, model):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file(model.state_dict(), path)
    state = files.load_state_dict(path)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(state[key], value.numpy(), err_msg=key)


def test_bfloat16_is_kept_bit_for_bit(tmp_path):
    from safetensors.torch import load_file, save_file

    module = torch.nn.LSTM(2, 3).to(torch.bfloat16)
    expected = {k: v.float().numpy() for k, v in module.state_dict().items()}
    torch.save(module.state_dict(), tmp_path / "bf16.pt")
    save_file(module.state_dict(), tmp_path / "bf16.safetensors")
    for name in ("bf16.pt", "bf16.safetensors"):
        state = files.load_state_dict(tmp_path / name)
        for key, value in state.items():
            assert str(value.dtype) == "bfloat16", (name, key)
            np.testing.assert_array_equal(value.astype(np.float32), expected[key])
    files.save_safetensors(state, tmp_path / "again.safetensors")
    again = load_file(tmp_path / "again.safetensors")
    for key, value in module.state_dict().items():
        assert again[key].dtype == torch.bfloat16 and torch.equal(again[key], value), key


@pytest.mark.parametrize("cut", [4, -3], ids=["header", "data"])
def test_truncated_safetensors_names_the_file(tmp_path, cut):
    path = files.save_safetensors({"weight_ih": np.ones((8, 2), np.float32)},
                                  tmp_path / "cut.safetensors")
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(files.CheckpointError, match="truncated or corrupt") as error:
        files.read_checkpoint(path)
    assert str(path) in str(error.value)


def test_safetensors_need_no_torch(tmp_path):
    """Reading and writing safetensors works where torch cannot be imported."""
    source = tmp_path / "in.safetensors"
    files.save_safetensors(_numpy(torch.nn.LSTMCell(2, 3).state_dict()), source)
    script = (
        "import sys; sys.modules['torch'] = None\n"
        "from jaxlstm import files\n"
        f"state = files.load_state_dict({str(source)!r})\n"
        f"files.save_safetensors(state, {str(tmp_path / 'out.safetensors')!r})\n"
        "print(sorted(state))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "['bias_hh', 'bias_ih', 'weight_hh', 'weight_ih']" in done.stdout
    assert (tmp_path / "out.safetensors").read_bytes() == source.read_bytes()


# --- atomic writing ------------------------------------------------------------------------------


def test_failed_write_leaves_nothing_behind(tmp_path):
    target = tmp_path / "out.bin"

    def half_then_fail(temporary):
        temporary.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        files.atomic_write(target, half_then_fail)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_refused_unless_forced(tmp_path):
    target = tmp_path / "out.safetensors"
    target.write_bytes(b"keep me")
    state = {"weight_ih": np.ones((8, 2), np.float32)}
    with pytest.raises(FileExistsError, match="already exists.*force"):
        files.save_safetensors(state, target)
    assert target.read_bytes() == b"keep me"
    files.save_safetensors(state, target, force=True)
    assert files.load_state_dict(target)["weight_ih"].shape == (8, 2)
    assert [p.name for p in tmp_path.iterdir()] == ["out.safetensors"]


def test_missing_output_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        files.save_safetensors({"a": np.ones(2)}, tmp_path / "no" / "x.safetensors")


# --- whole-model checkpoints ---------------------------------------------------------------------


def test_find_lstms_reports_every_lstm_with_its_config(model):
    found = find_lstms(model.state_dict())
    assert [f.prefix for f in found] == ["decoder.", "encoder.rnn.", "proj."]
    configs = {f.prefix: f.config for f in found}
    assert configs["encoder.rnn."] == jaxlstm.LSTMConfig.create(3, 4, 2, bidirectional=True)
    assert configs["decoder."] == jaxlstm.LSTMCellConfig.create(8, 5, bias=False)
    assert configs["proj."] == jaxlstm.LSTMConfig.create(3, 6, proj_size=2)
    counts = {f.prefix: f.param_count for f in found}
    assert counts == {"encoder.rnn.": _count(model.encoder.rnn), "decoder.": _count(model.decoder),
                      "proj.": _count(model.proj)}


@pytest.mark.parametrize("wrap", ["DataParallel", "compile", "both"])
def test_wrapped_checkpoints_port_by_plain_or_wrapped_prefix(tmp_path, model, wrap):
    wrapped = model
    if wrap in ("DataParallel", "both"):
        wrapped = torch.nn.DataParallel(wrapped)
    if wrap in ("compile", "both"):
        wrapped = torch.compile(wrapped)
    state = wrapped.state_dict()
    assert all(k not in model.state_dict() for k in state)
    assert [f.prefix for f in find_lstms(state)] == ["decoder.", "encoder.rnn.", "proj."]
    path = tmp_path / "wrapped.pt"
    torch.save({"model": state}, path)
    raw_prefix = next(k for k in state if k.endswith("encoder.rnn.weight_ih_l0"))[:-12]
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    expected = model.encoder.rnn(torch.from_numpy(x))[0].detach().numpy()
    for prefix in ("encoder.rnn", "encoder.rnn.", raw_prefix):
        ported = from_checkpoint(path, prefix)
        np.testing.assert_allclose(ported(x)[0], expected, atol=1e-5, err_msg=prefix)


def test_port_from_checkpoint_matches_the_torch_submodule(tmp_path, model):
    path = tmp_path / "model.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    lstm = from_checkpoint(path, "proj.", batch_first=True)
    assert lstm.config.batch_first and lstm.config.proj_size == 2
    x = np.random.default_rng(1).standard_normal((2, 6, 3)).astype(np.float32)
    out, (h_n, c_n) = lstm(x)
    t_out, (t_h, t_c) = model.proj(torch.from_numpy(x))
    np.testing.assert_allclose(out, t_out.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(c_n, t_c.detach().numpy(), atol=1e-5)
    cell = from_checkpoint(model.state_dict(), "decoder")
    xc = np.random.default_rng(2).standard_normal((2, 8)).astype(np.float32)
    h, c = cell(xc)
    t_h, t_c = model.decoder(torch.from_numpy(xc))
    np.testing.assert_allclose(h, t_h.detach().numpy(), atol=1e-5)


def test_several_lstms_need_a_prefix_and_errors_list_them(tmp_path, model):
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(ValueError, match="holds 3 LSTMs; choose one") as error:
        from_checkpoint(path)
    assert str(path) in str(error.value)
    assert "encoder.rnn." in str(error.value) and "LSTMCell(8, 5, bias=False)" in str(error.value)
    with pytest.raises(ValueError, match="(?s)no LSTM at prefix 'encoder.'.*decoder") as error:
        from_checkpoint(path, "encoder")


def test_no_lstm_in_the_state_dict(tmp_path):
    path = tmp_path / "gru.safetensors"
    files.save_safetensors(_numpy(torch.nn.GRU(3, 4).state_dict()), path)
    with pytest.raises(ValueError, match="no LSTM or LSTMCell weights in file") as error:
        from_checkpoint(path)
    assert str(path) in str(error.value) and "weight_ih_l0" in str(error.value)


@pytest.mark.parametrize(
    "change, named",
    [
        (lambda s: s.pop("encoder.rnn.bias_hh_l1"), "missing key 'encoder.rnn.bias_hh_l1'"),
        (lambda s: s.update({"encoder.rnn.weight_hh_l0_old": np.ones(1)}),
         "unexpected key 'encoder.rnn.weight_hh_l0_old'"),
        (lambda s: s.update({"encoder.rnn.weight_hh_l1": np.ones((16, 5), np.float32)}),
         "wrong shape for 'encoder.rnn.weight_hh_l1': expected (16, 4), got (16, 5)"),
    ],
    ids=["missing", "extra", "mis-shaped"],
)
def test_bad_keys_name_the_file_and_key(tmp_path, model, change, named):
    state = _numpy(model.state_dict())
    change(state)
    path = files.save_safetensors(state, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError) as error:
        from_checkpoint(path, "encoder.rnn")
    assert named in str(error.value) and str(path) in str(error.value)
    # The other LSTMs still port: only the chosen module is checked.
    assert isinstance(from_checkpoint(path, "decoder"), jaxlstm.LSTMCell)


def test_mixed_dtypes_are_named_and_param_dtype_resolves_them(tmp_path):
    state = _numpy(torch.nn.LSTM(2, 3).state_dict())
    state["bias_hh_l0"] = state["bias_hh_l0"].astype(np.float16)
    path = files.save_safetensors(state, tmp_path / "mixed.safetensors")
    with pytest.raises(ValueError, match="mix dtypes") as error:
        from_checkpoint(path)
    assert "float16: bias_hh_l0;" in str(error.value) and str(path) in str(error.value)
    model = from_checkpoint(path, param_dtype=np.float32)
    assert model.bias_hh_l0[...].dtype == np.float32


def test_selected_weights_load_strictly_into_torch(model):
    state = select_lstm(torch.nn.DataParallel(model).state_dict(), "encoder.rnn").weights
    fresh = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)


def test_two_keys_colliding_after_unwrapping_are_named():
    state = {"module.rnn.weight_ih": np.ones((8, 2)), "_orig_mod.module.rnn.weight_ih":
             np.ones((8, 2))}
    with pytest.raises(ValueError, match="both name 'rnn.weight_ih'"):
        find_lstms(state)


def test_os_pathlike_and_str_paths(tmp_path):
    path = tmp_path / "cell.pt"
    torch.save(torch.nn.LSTMCell(2, 3).state_dict(), path)
    assert isinstance(from_checkpoint(os.fspath(path)), jaxlstm.LSTMCell)
    assert isinstance(from_checkpoint(path), jaxlstm.LSTMCell)
