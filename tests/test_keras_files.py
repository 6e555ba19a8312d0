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


@pytest.mark.parametrize("bidirectional", [False, True])
def test_keras3_hard_sigmoid_ports_matches_keras_and_converts_back(tmp_path, capsys,
                                                                   keras_model, bidirectional):
    keras, _, x = keras_model
    layer = keras.layers.LSTM(4, recurrent_activation="hard_sigmoid", return_sequences=True,
                              name="old_style")
    if bidirectional:
        layer = keras.layers.Bidirectional(layer, name="old_style")
    model = keras.Sequential([keras.Input((None, 3)), layer])
    # Large weights saturate gates, so the clipped branches are exercised.
    model.set_weights([3 * w for w in model.get_weights()])
    path = tmp_path / "hard.keras"
    model.save(path)
    info = read_checkpoint(path).lstm_info["old_style."]
    assert info["recurrent_activation"] == "hard_sigmoid" and info["keras_version"] == "3"
    assert info["gate_activation"] == jaxlstm.HardSigmoid(1 / 6, 0.5)
    want = np.asarray(model(x))
    ported = jaxlstm.from_checkpoint(path)
    assert ported.gate_activation == jaxlstm.HardSigmoid(1 / 6, 0.5)
    assert np.abs(np.asarray(ported(x)[0]) - want).max() <= 1e-5
    assert np.abs(port_output(path, x) - want).max() <= 1e-5
    assert cli.main(["inspect", str(path)]) == 0
    assert "gate_activation=hard_sigmoid(alpha=0.1666666667, beta=0.5)" in capsys.readouterr().out
    assert cli.main(["parity", str(path)]) == 0
    back = tmp_path / "back.keras"
    assert cli.main(["convert", str(path), str(back)]) == 0
    loaded = keras.saving.load_model(back)
    inner = loaded.layers[0].forward_layer if bidirectional else loaded.layers[0]
    assert inner.recurrent_activation is keras.activations.hard_sigmoid
    assert np.abs(np.asarray(loaded(x)) - want).max() <= 1e-5
    assert cli.main(["convert", str(path), str(tmp_path / "x.npz")]) == 1
    assert "sigmoid gates only" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()


def test_keras3_layers_other_activations_are_refused_naming_the_layer(tmp_path, capsys,
                                                                      keras_model):
    keras, _, _ = keras_model
    model = keras.Sequential([keras.Input((None, 3)), keras.layers.LSTM(
        4, recurrent_activation="relu", name="odd")])
    path = tmp_path / "relu.keras"
    model.save(path)
    with pytest.raises(CheckpointError, match="'odd'.*recurrent_activation='relu'"):
        jaxlstm.from_checkpoint(path)
    for argv in (["inspect", str(path)], ["convert", str(path), str(tmp_path / "x.npz")],
                 ["parity", str(path)]):
        assert cli.main(argv) == 1, argv
        assert "relu" in capsys.readouterr().err


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


@pytest.mark.parametrize("case", ["relu", "weights-2.2.4-tf", "merge-sum", "go-backwards"])
def test_keras2_layers_jaxlstm_cannot_compute_are_refused(tmp_path, case):
    rng = np.random.default_rng(3)
    config = dict(LSTM_CONFIG)
    cls, version, whole = "LSTM", "2.3.1", True
    weights = lstm_weights(rng, 2, 3)
    if case == "relu":
        config["activation"] = "relu"
        reason = "activation='relu'"
    elif case.startswith("weights"):
        version, whole = case[len("weights-"):], False
        reason = "does not record its recurrent_activation"
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


def hard_sigmoid(x):
    """Keras 2's: ``clip(0.2 x + 0.5, 0, 1)``."""
    return np.clip(0.2 * x + 0.5, 0.0, 1.0)


@pytest.mark.parametrize("case", ["recorded", "default of 2.2.4", "Keras 1", "bidirectional"])
def test_keras2_hard_sigmoid_ports_with_keras2s_constants(tmp_path, capsys, case):
    rng = np.random.default_rng(3)
    weights = {k: 3 * v for k, v in lstm_weights(rng, 2, 3).items()}  # saturating gates
    config, version, whole = {**LSTM_CONFIG, "recurrent_activation": "hard_sigmoid"}, "2.3.1", True
    layers = [("lstm_1", "LSTM", config, weights)]
    x = rng.standard_normal((2, 5, 2))
    want = keras_lstm(x, *weights.values(), gate=hard_sigmoid)
    if case == "default of 2.2.4":
        version, whole = "2.2.4", False
    elif case == "Keras 1":
        version = "1.2.2"
        config = {"output_dim": 3, "activation": "tanh", "inner_activation": "hard_sigmoid"}
        layers = [("lstm_1", "LSTM", config, weights)]
    elif case == "bidirectional":
        backward = {k: 3 * v for k, v in lstm_weights(rng, 2, 3).items()}
        bi = {f"lstm_1/{side}_lstm_1/{k}": v for side, part in
              (("forward", weights), ("backward", backward)) for k, v in part.items()}
        layers = [("lstm_1", "Bidirectional", {"merge_mode": "concat", "layer": {
            "class_name": "LSTM", "config": {"name": "lstm_1", **config}}}, bi)]
        want = np.concatenate([want, keras_lstm(x[:, ::-1], *backward.values(),
                                                gate=hard_sigmoid)[:, ::-1]], axis=-1)
    path = write_keras2(tmp_path / "model.h5", layers, version=version, whole_model=whole)
    assert read_checkpoint(path).lstm_info["lstm_1."]["gate_activation"] == jaxlstm.HardSigmoid(
        0.2, 0.5)
    assert np.abs(port_output(path, x) - want).max() <= 1e-10
    assert cli.main(["parity", str(path)]) == 0
    assert cli.main(["convert", str(path), str(tmp_path / "x.keras")]) == 1
    assert "Keras 3's hard_sigmoid is not Keras 2's" in capsys.readouterr().err
    assert not (tmp_path / "x.keras").exists()


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


def test_a_real_keras_2_2_file_ports_with_keras2s_hard_sigmoid(tmp_path, capsys):
    checkpoint = read_checkpoint(CHARS2VEC)
    assert sorted(checkpoint.lstm_info) == ["lstm_1.", "lstm_2."]
    info = checkpoint.lstm_info["lstm_1."]
    assert (info["recurrent_activation"], info["recorded"], info["keras_version"]) == (
        "hard_sigmoid", False, "2.2.0")
    assert info["gate_activation"] == jaxlstm.HardSigmoid(0.2, 0.5)
    assert checkpoint.state_dict["lstm_1.weight_ih_l0"].shape == (200, 59)
    with h5py.File(CHARS2VEC, "r") as real:
        keras_weights = [real[f"lstm_1/lstm_1/{k}:0"][()]
                         for k in ("kernel", "recurrent_kernel", "bias")]
    x = np.random.default_rng(7).standard_normal((3, 9, 59))
    want = keras_lstm(x, *keras_weights, gate=hard_sigmoid)
    assert np.abs(port_output(CHARS2VEC, x, "lstm_1.") - want).max() <= 1e-10 * np.abs(
        want).max()
    model = jaxlstm.from_checkpoint(CHARS2VEC, "lstm_1.")
    assert model.gate_activation == jaxlstm.HardSigmoid(0.2, 0.5)
    got32 = np.asarray(model(x.astype(np.float32))[0])
    assert np.abs(got32 - want).max() <= 1e-5 * np.abs(want).max()
    assert cli.main(["inspect", str(CHARS2VEC)]) == 0
    out = capsys.readouterr().out
    assert "gate_activation=hard_sigmoid(alpha=0.2, beta=0.5)" in out and " !" not in out
    assert cli.main(["parity", str(CHARS2VEC), "--prefix", "lstm_2."]) == 0
    assert "matches the reference" in capsys.readouterr().out
    assert cli.main(["convert", str(CHARS2VEC), str(tmp_path / "x.safetensors"),
                     "--prefix", "lstm_1."]) == 1
    assert "sigmoid gates only" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()
