"""Keras files as the tools write them: Keras 3 ``.keras``/``.weights.h5``/legacy ``.h5``, and
the Keras 1/2 HDF5 layout (``model_weights/<layer>/<layer>/kernel:0``, ``layer_names``,
``weight_names``, ``keras_version``, ``backend``, ``model_config``) reproduced with h5py.

Every port is compared with Keras itself, or with a float64 numpy evaluation of the Keras
formula (independent of jaxlstm: Keras' kernel layout, Keras' own CuDNNLSTM conversion).
"""

import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxlstm
from jaxlstm import cli
from jaxlstm.files import CheckpointError, read_checkpoint

h5py = pytest.importorskip("h5py")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def keras_lstm(x, kernel, recurrent, bias, gate=sigmoid):
    """Keras' LSTM in float64 numpy: ``x (N, T, I)``, gates i, f, c, o along ``4H``."""
    x, kernel, recurrent = (np.asarray(a, np.float64) for a in (x, kernel, recurrent))
    bias = np.zeros(kernel.shape[1]) if bias is None else np.asarray(bias, np.float64)
    hidden = recurrent.shape[0]
    h = np.zeros((x.shape[0], hidden))
    c = np.zeros_like(h)
    outputs = []
    for t in range(x.shape[1]):
        i, f, g, o = np.split(x[:, t] @ kernel + h @ recurrent + bias, 4, axis=1)
        c = gate(f) * c + gate(i) * np.tanh(g)
        h = gate(o) * np.tanh(c)
        outputs.append(h)
    return np.stack(outputs, axis=1)


def bidirectional(x, forward, backward):
    return np.concatenate([keras_lstm(x, *forward),
                           keras_lstm(x[:, ::-1], *backward)[:, ::-1]], axis=-1)


def cudnn_to_lstm(kernel, recurrent, bias):
    """Keras 2's own CuDNNLSTM -> LSTM conversion (keras/engine/saving.py, 2.3.1)."""
    def per_gate(array, function):
        return np.hstack([function(k) for k in np.hsplit(array, 4)])

    bias = np.asarray(bias, np.float64)  # summed exactly, as the port keeps both halves
    return (per_gate(kernel, lambda k: k.T.reshape(k.shape, order="F")),
            per_gate(recurrent, lambda k: k.T), np.sum(np.split(bias, 2), axis=0))


def port_output(path, x, prefix=None):
    with jax.enable_x64(True):
        model = jaxlstm.from_checkpoint(path, prefix, param_dtype="float64")
        assert model.batch_first  # Keras layers are batch-major, and the file says so
        return np.asarray(model(np.asarray(x, np.float64))[0])


# --- Keras 3, saved by Keras ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def keras_model():
    from jaxlstm.formats import keras as _  # noqa: F401  (selects the JAX backend)

    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((None, 3)),
        keras.layers.LSTM(4, return_sequences=True, name="encoder"),
        keras.layers.Bidirectional(keras.layers.LSTM(2, return_sequences=True), name="bi"),
    ])
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    return keras, model, x


@pytest.mark.parametrize("suffix", [".keras", ".weights.h5", ".h5"])
def test_keras3_files_port_and_match_keras(tmp_path, capsys, keras_model, suffix):
    keras, model, x = keras_model
    path = tmp_path / f"model{suffix}"
    if suffix == ".weights.h5":
        model.save_weights(path)
    else:
        model.save(path)
    checkpoint = read_checkpoint(path)
    assert checkpoint.format == "keras"
    # A Keras 3 weights file names its groups after the classes; the config, the layers' names.
    encoder, bi = ("lstm.", "bidirectional.") if suffix == ".weights.h5" else ("encoder.", "bi.")
    assert set(checkpoint.lstm_info) == {encoder, bi}
    assert checkpoint.lstm_info[encoder]["recurrent_activation"] == "sigmoid"
    hidden = np.asarray(model.layers[0](x))
    expected = {encoder: hidden, bi: np.asarray(model.layers[1](hidden))}
    inputs = {encoder: x, bi: hidden}
    for prefix, want in expected.items():
        got = port_output(path, inputs[prefix], prefix)
        assert np.abs(got - want).max() <= 1e-5, prefix
    assert cli.main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert encoder in out and bi in out and "recurrent_activation sigmoid" in out
    target = tmp_path / "bi.safetensors"
    assert cli.main(["convert", str(path), str(target), "--prefix", bi]) == 0
    assert cli.main(["parity", str(path), "--prefix", encoder, "--dtype", "float64"]) == 0


def test_keras3_hard_sigmoid_is_refused_naming_the_layer(tmp_path, capsys, keras_model):
    keras, _, x = keras_model
    model = keras.Sequential([keras.Input((None, 3)), keras.layers.LSTM(
        4, recurrent_activation="hard_sigmoid", name="old_style")])
    path = tmp_path / "hard.keras"
    model.save(path)
    info = read_checkpoint(path).lstm_info["old_style."]
    assert info["recurrent_activation"] == "hard_sigmoid" and info["keras_version"] == "3"
    with pytest.raises(CheckpointError, match="'old_style'.*hard_sigmoid.*torch's sigmoid"):
        jaxlstm.from_checkpoint(path)
    for argv in (["inspect", str(path)], ["convert", str(path), str(tmp_path / "x.npz")],
                 ["parity", str(path)]):
        assert cli.main(argv) == 1, argv
        assert "hard_sigmoid" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()


# --- Keras 1 / 2 layout, written with h5py as Keras 2 writes it --------------------------------


def _strings(values):
    if not values:  # Keras 2 stores an empty list as an empty float array
        return np.array([], dtype=np.float64)
    return np.array([v.encode() for v in values], dtype=f"S{max(map(len, values))}")


def write_keras2(path, layers, *, version="2.3.1", whole_model=True):
    """A Keras 2 HDF5 file. ``layers``: ``[(name, class, config, {weight name: array})]``; a
    layer's weight names are ``<name>/<weight>`` as Keras 2 names them (names with a ``/`` are
    kept: the weights of a nested model or a Bidirectional are named after their own layers)."""
    with h5py.File(path, "w") as handle:
        root = handle.create_group("model_weights") if whole_model else handle
        if whole_model:
            config = {"class_name": "Sequential", "config": {"name": "sequential_1", "layers": [
                {"class_name": cls, "config": {"name": name, **cfg}}
                for name, cls, cfg, _ in layers]}}
            handle.attrs["model_config"] = json.dumps(config).encode()
            handle.attrs["keras_version"] = version.encode()
            handle.attrs["backend"] = b"tensorflow"
        root.attrs["layer_names"] = _strings([name for name, *_ in layers])
        root.attrs["keras_version"] = version.encode()
        root.attrs["backend"] = b"tensorflow"
        for name, _, _, weights in layers:
            group = root.create_group(name)
            names = [key if "/" in key else f"{name}/{key}" for key in weights]
            group.attrs["weight_names"] = _strings(names)
            for key, value in zip(names, weights.values()):
                group.create_dataset(key, data=value)
    return path


def lstm_weights(rng, inputs, hidden, bias_size=4):
    return {"kernel:0": rng.standard_normal((inputs, 4 * hidden)).astype(np.float32),
            "recurrent_kernel:0": rng.standard_normal((hidden, 4 * hidden)).astype(np.float32),
            "bias:0": rng.standard_normal((bias_size * hidden,)).astype(np.float32)}


LSTM_CONFIG = {"units": 3, "activation": "tanh", "recurrent_activation": "sigmoid",
               "use_bias": True, "implementation": 2, "go_backwards": False}


def test_keras2_layout_lstm_cudnn_and_bidirectional_match_the_keras_formula(tmp_path, capsys):
    rng = np.random.default_rng(1)
    lstm, cudnn = lstm_weights(rng, 2, 3), lstm_weights(rng, 2, 3, bias_size=8)
    forward, backward = lstm_weights(rng, 2, 3), lstm_weights(rng, 2, 3)
    bi = {f"bidirectional_1/forward_lstm_1/{k}": v for k, v in forward.items()}
    bi.update({f"bidirectional_1/backward_lstm_1/{k}": v for k, v in backward.items()})
    path = write_keras2(tmp_path / "model.h5", [
        ("embedding_1", "Embedding", {}, {"embeddings:0": np.ones((5, 2), np.float32)}),
        ("lstm_1", "LSTM", LSTM_CONFIG, lstm),
        ("cu_dnnlstm_1", "CuDNNLSTM", {"units": 3}, cudnn),
        ("bidirectional_1", "Bidirectional", {"merge_mode": "concat", "layer": {
            "class_name": "LSTM", "config": {"name": "lstm_2", **LSTM_CONFIG}}}, bi),
    ])
    x = rng.standard_normal((2, 6, 2))
    expected = {
        "lstm_1.": keras_lstm(x, *lstm.values()),
        "cu_dnnlstm_1.": keras_lstm(x, *cudnn_to_lstm(*cudnn.values())),
        "bidirectional_1.": bidirectional(x, list(forward.values()), list(backward.values())),
    }
    for prefix, want in expected.items():
        assert np.abs(port_output(path, x, prefix) - want).max() <= 1e-10, prefix
    assert cli.main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "3 LSTMs" in out and "CuDNNLSTM layer 'cu_dnnlstm_1'" in out
    assert cli.main(["parity", str(path), "--prefix", "bidirectional_1."]) == 0


def test_keras1_lstm_of_twelve_arrays(tmp_path):
    rng = np.random.default_rng(2)
    parts = {}
    for gate in "icfo":
        parts[f"W_{gate}"] = rng.standard_normal((2, 3)).astype(np.float32)
        parts[f"U_{gate}"] = rng.standard_normal((3, 3)).astype(np.float32)
        parts[f"b_{gate}"] = rng.standard_normal((3,)).astype(np.float32)
    path = write_keras2(tmp_path / "k1.h5", [("lstm_1", "LSTM", {
        "output_dim": 3, "activation": "tanh", "inner_activation": "sigmoid"},
        {f"lstm_1_{k}": v for k, v in parts.items()})], version="1.2.2")
    order = "ifco"
    kernel, recurrent, bias = (np.concatenate([parts[f"{w}_{g}"] for g in order], axis=-1)
                               for w in "WUb")
    x = rng.standard_normal((1, 4, 2))
    assert np.abs(port_output(path, x) - keras_lstm(x, kernel, recurrent, bias)).max() <= 1e-10


@pytest.mark.parametrize("case", ["hard_sigmoid", "relu", "weights-2.2.4", "weights-2.2.4-tf",
                                  "merge-sum", "go-backwards"])
def test_keras2_layers_torch_cannot_compute_are_refused(tmp_path, case):
    rng = np.random.default_rng(3)
    config = dict(LSTM_CONFIG)
    cls, version, whole = "LSTM", "2.3.1", True
    weights = lstm_weights(rng, 2, 3)
    if case == "hard_sigmoid":
        config["recurrent_activation"] = "hard_sigmoid"
        reason = "recurrent_activation='hard_sigmoid'.*torch's sigmoid"
    elif case == "relu":
        config["activation"] = "relu"
        reason = "activation='relu'"
    elif case.startswith("weights"):
        version, whole = case[len("weights-"):], False
        reason = ("hard_sigmoid.*default of Keras 2.2.4" if version == "2.2.4"
                  else "does not record its recurrent_activation")
    elif case == "merge-sum":
        cls = "Bidirectional"
        config = {"merge_mode": "sum", "layer": {"class_name": "LSTM", "config": LSTM_CONFIG}}
        weights = {f"lstm_1/{side}_lstm_1/{k}": v for side in ("forward", "backward")
                   for k, v in lstm_weights(rng, 2, 3).items()}
        reason = "merge_mode='sum'"
    else:
        config["go_backwards"] = True
        reason = "go_backwards=True"
    path = write_keras2(tmp_path / "model.h5", [("lstm_1", cls, config, weights)],
                        version=version, whole_model=whole)
    assert read_checkpoint(path).lstm_info  # read, recorded
    with pytest.raises(CheckpointError, match=f"'lstm_1'.*{reason}|{reason}.*'lstm_1'"):
        jaxlstm.from_checkpoint(path)


def test_weights_only_keras_2_3_file_ports_assuming_the_default(tmp_path):
    rng = np.random.default_rng(4)
    lstm = lstm_weights(rng, 2, 3)
    path = write_keras2(tmp_path / "weights.h5", [("lstm_1", None, None, lstm)],
                        whole_model=False)
    info = read_checkpoint(path).lstm_info["lstm_1."]
    assert info["recurrent_activation"] == "sigmoid" and not info["recorded"]
    x = rng.standard_normal((2, 3, 2))
    assert np.abs(port_output(path, x) - keras_lstm(x, *lstm.values())).max() <= 1e-10


def test_nested_model_lstms_are_found_under_the_models_name(tmp_path, capsys):
    rng = np.random.default_rng(6)
    first, second = lstm_weights(rng, 2, 3), lstm_weights(rng, 3, 3)
    weights = {f"lstm_1/{k}": v for k, v in first.items()}
    weights.update({f"lstm_2/{k}": v for k, v in second.items()})
    path = write_keras2(tmp_path / "nested.h5", [("encoder", None, None, weights)],
                        whole_model=False)  # a weights-only file of a model inside a model
    assert set(read_checkpoint(path).lstm_info) == {"encoder.lstm_1.", "encoder.lstm_2."}
    x = rng.standard_normal((2, 4, 2))
    hidden = keras_lstm(x, *first.values())
    assert np.abs(port_output(path, x, "encoder.lstm_1.") - hidden).max() <= 1e-10
    assert np.abs(port_output(path, hidden, "lstm_2.") - keras_lstm(hidden, *second.values())
                  ).max() <= 1e-10


def test_hdf5_without_an_lstm_lists_its_layers(tmp_path):
    gru = {f"bi/{side}_gru/{k}": np.ones(shape, np.float32) for side in ("forward", "backward")
           for k, shape in (("kernel:0", (2, 9)), ("recurrent_kernel:0", (3, 9)))}
    path = write_keras2(tmp_path / "dense.h5", [
        ("dense_1", "Dense", {}, {"kernel:0": np.ones((2, 3), np.float32)}),
        ("bi", "Bidirectional", {"layer": {"class_name": "GRU", "config": {}}}, gru)])
    with pytest.raises(CheckpointError,
                       match=r"no Keras LSTM.*dense_1 \(Dense\), bi \(Bidirectional\(GRU\)\)"):
        read_checkpoint(path)


def test_hdf5_without_h5py_names_the_install_line(tmp_path, monkeypatch):
    path = write_keras2(tmp_path / "model.h5", [
        ("lstm_1", "LSTM", LSTM_CONFIG, lstm_weights(np.random.default_rng(5), 2, 3))])
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(CheckpointError, match=r"pip install 'jaxlstm\[keras\]'"):
        read_checkpoint(path)


# --- a real file ----------------------------------------------------------------------------------

CHARS2VEC = Path(__file__).parent / "data" / "chars2vec_eng_50_weights.h5"
"""Keras 2.2.0 ``save_weights`` of two default ``LSTM(50)`` layers (chars2vec 0.1.7, Apache
2.0; see ``tests/data/README.md``)."""


def _layout(path):
    """Every group and dataset (with its shape) and the attribute names of each, of a file."""
    found = {}
    with h5py.File(path, "r") as handle:
        found["/"] = sorted(handle.attrs)
        handle.visititems(lambda key, node: found.__setitem__(
            key, (getattr(node, "shape", None), sorted(node.attrs))))
    return found


def test_the_reproduced_keras2_layout_is_the_real_files(tmp_path):
    with h5py.File(CHARS2VEC, "r") as real:
        weights = {layer: {key.split("/", 1)[1]: real[f"{layer}/{key}"][()]
                           for key in real[layer].attrs["weight_names"].astype(str)}
                   for layer in ("lstm_1", "lstm_2")}
    copy = write_keras2(tmp_path / "copy.h5", [("input_1", None, None, {}),
                                                *((k, None, None, v) for k, v in weights.items())],
                        version="2.2.0", whole_model=False)
    assert _layout(copy) == _layout(CHARS2VEC)


def test_a_real_keras_2_2_file_is_read_and_refused_for_its_hard_sigmoid(tmp_path, capsys):
    checkpoint = read_checkpoint(CHARS2VEC)
    assert sorted(checkpoint.lstm_info) == ["lstm_1.", "lstm_2."]
    info = checkpoint.lstm_info["lstm_1."]
    assert (info["recurrent_activation"], info["recorded"], info["keras_version"]) == (
        "hard_sigmoid", False, "2.2.0")
    assert checkpoint.state_dict["lstm_1.weight_ih_l0"].shape == (200, 59)
    with pytest.raises(CheckpointError, match="'lstm_2'.*hard_sigmoid.*change its outputs"):
        jaxlstm.from_checkpoint(CHARS2VEC, "lstm_2.")
    assert cli.main(["inspect", str(CHARS2VEC)]) == 1
    captured = capsys.readouterr()
    assert "lstm_1. !" in captured.out and "hard_sigmoid" in captured.err
    assert cli.main(["convert", str(CHARS2VEC), str(tmp_path / "x.safetensors"),
                     "--prefix", "lstm_1."]) == 1
    assert not (tmp_path / "x.safetensors").exists()
