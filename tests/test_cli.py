"""The ``jaxlstm`` command end to end, in a temporary directory: output, files and exit codes."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from jaxlstm import cli, files

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Module()
        self.encoder.rnn = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True)
        self.cell = torch.nn.LSTMCell(8, 5)
        self.head = torch.nn.Linear(5, 2)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Model()


@pytest.fixture
def checkpoint(tmp_path, model):
    """A training checkpoint of a DataParallel-wrapped model."""
    path = tmp_path / "model.pt"
    state = torch.nn.DataParallel(model).state_dict()
    torch.save({"epoch": 2, "model_state_dict": state}, path)
    return path


def _run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _state(module):
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("command", [[], ["inspect"], ["convert"], ["parity"]])
def test_help_everywhere(capsys, command):
    code, out, _ = _run(capsys, *command, "--help")
    assert code == 0
    assert "usage:" in out
    if command:
        assert out.startswith(f"usage: jaxlstm {command[0]}")
    if command == ["parity"]:
        assert "--full" in out  # the parity suite's own options


def test_bench_help_works_with_or_without_the_suite(capsys):
    code, out, _ = _run(capsys, "bench", "--help")
    assert code == 0 and "usage:" in out


def test_inspect_prints_a_table_of_the_lstms(capsys, checkpoint, model):
    code, out, _ = _run(capsys, "inspect", checkpoint)
    assert code == 0
    lines = out.splitlines()
    assert "state dict under 'model_state_dict'" in lines[0]
    assert "'module.encoder.rnn.weight_ih_l0' -> 'encoder.rnn.weight_ih_l0'" in out
    header = next(i for i, line in enumerate(lines) if line.startswith("prefix"))
    assert lines[header].split() == ["prefix", "type", "input", "hidden", "layers",
                                     "bidirectional", "proj", "bias", "dtype", "params"]
    rows = {line.split()[0]: line.split() for line in lines[header + 2:header + 4]}
    encoder = sum(p.numel() for p in model.encoder.rnn.parameters())
    cell = sum(p.numel() for p in model.cell.parameters())
    assert rows["encoder.rnn."] == ["encoder.rnn.", "LSTM", "3", "4", "2", "yes", "0", "yes",
                                    "float32", f"{encoder:,}"]
    assert rows["cell."] == ["cell.", "LSTMCell", "8", "5", "-", "-", "-", "yes", "float32",
                             f"{cell:,}"]
    assert f"2 LSTMs, {encoder + cell:,} parameters; 2 other tensors" in out


def test_convert_to_safetensors_loads_into_torch(capsys, tmp_path, checkpoint, model):
    out_path = tmp_path / "encoder.safetensors"
    code, out, _ = _run(capsys, "convert", checkpoint, out_path, "--prefix", "encoder.rnn")
    assert code == 0 and "wrote" in out and "LSTM(3, 4, num_layers=2, bidirectional=True)" in out
    from safetensors.torch import load_file

    fresh = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    fresh.load_state_dict(load_file(out_path), strict=True)
    for key, value in model.encoder.rnn.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_convert_to_every_foreign_format(capsys, tmp_path, checkpoint, model):
    from jaxlstm.formats import equinox as feqx
    from jaxlstm.formats import flax as fflax
    from jaxlstm.formats import jax_rnn as fjax
    from jaxlstm.formats import keras as fkeras

    cell = _state(model.cell)
    merged = dict(cell, bias_ih=cell["bias_ih"] + cell["bias_hh"],
                  bias_hh=np.zeros_like(cell["bias_hh"]))
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    expected_h = model.cell(torch.from_numpy(x))[0].detach().numpy()

    code, _, _ = _run(capsys, "convert", checkpoint, tmp_path / "c.msgpack", "--prefix", "cell",
                      "--to", "flax", "--merge-biases")
    from flax import serialization

    restored = serialization.msgpack_restore((tmp_path / "c.msgpack").read_bytes())
    assert code == 0 and _equal(fflax.from_flax_cell(restored), merged)

    code, _, _ = _run(capsys, "convert", checkpoint, tmp_path / "c.eqx", "--prefix", "cell",
                      "--merge-biases")
    eqx = pytest.importorskip("equinox")
    import jax

    like = eqx.nn.LSTMCell(8, 5, key=jax.random.key(0))
    loaded = eqx.tree_deserialise_leaves(tmp_path / "c.eqx", like)
    assert code == 0 and _equal(feqx.from_equinox_cell(loaded), merged)
    h = jax.vmap(lambda xi: loaded(xi, (np.zeros(5, np.float32), np.zeros(5, np.float32))))(x)[0]
    np.testing.assert_allclose(h, expected_h, atol=1e-5)

    code, _, _ = _run(capsys, "convert", checkpoint, tmp_path / "e.npz", "--prefix", "encoder.rnn")
    assert code == 0 and _equal(fjax.read_npz(tmp_path / "e.npz"), _state(model.encoder.rnn))

    code, _, err = _run(capsys, "convert", checkpoint, tmp_path / "c.keras", "--prefix", "cell",
                        "--merge-biases")
    keras = pytest.importorskip("keras")
    layer = keras.saving.load_model(tmp_path / "c.keras").layers[0]
    renamed = {k + "_l0": v for k, v in merged.items()}
    assert code == 0 and _equal(fkeras.from_keras_lstm(layer), renamed), err


def _equal(actual, expected):
    return set(actual) == set(expected) and all(
        np.array_equal(np.asarray(actual[k]), expected[k]) for k in expected
    )


def test_convert_needs_a_prefix_when_there_are_several(capsys, tmp_path, checkpoint):
    code, _, err = _run(capsys, "convert", checkpoint, tmp_path / "x.safetensors")
    assert code == 1
    assert "holds 2 LSTMs" in err and "cell." in err and "encoder.rnn." in err
    assert str(checkpoint) in err
    assert not (tmp_path / "x.safetensors").exists()


def test_existing_output_is_kept_unless_forced(capsys, tmp_path, checkpoint):
    target = tmp_path / "cell.safetensors"
    target.write_bytes(b"precious")
    code, _, err = _run(capsys, "convert", checkpoint, target, "--prefix", "cell")
    assert code == 1 and "already exists" in err and "--force" in err
    assert target.read_bytes() == b"precious"
    code, _, _ = _run(capsys, "convert", checkpoint, target, "--prefix", "cell", "--force")
    assert code == 0 and set(files.load_state_dict(target)) == {"weight_ih", "weight_hh",
                                                                "bias_ih", "bias_hh"}


def test_failed_conversion_writes_nothing(capsys, tmp_path, checkpoint):
    before = set(tmp_path.iterdir())
    code, _, err = _run(capsys, "convert", checkpoint, tmp_path / "cell.eqx", "--prefix", "cell")
    assert code == 1 and "one bias per gate" in err and "--merge-biases" in err
    code, _, err = _run(capsys, "convert", checkpoint, tmp_path / "enc.eqx", "--prefix",
                        "encoder.rnn")
    assert code == 1 and "holds one LSTM cell" in err
    assert set(tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    "argv, message",
    [
        (["convert", "IN", "out.bin", "--prefix", "cell"], "cannot tell the output format"),
        (["convert", "IN", "out.msgpack", "--prefix", "cell"], "several formats"),
        (["convert", "IN", "out.x", "--to", "tflite"], "invalid choice"),
        (["inspect"], "required: FILE"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2(capsys, checkpoint, tmp_path, argv, message):
    argv = [str(checkpoint) if a == "IN" else a for a in argv]
    argv = [str(tmp_path / a) if a.startswith("out.") else a for a in argv]
    code, _, err = _run(capsys, *argv)
    assert code == 2 and message in err


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 cut short"], ids=["empty", "truncated"])
def test_bad_files_exit_1_naming_the_file(capsys, tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    code, _, err = _run(capsys, "inspect", path)
    assert code == 1 and str(path) in err and "corrupt" in err


def test_state_dict_without_lstm_exits_1(capsys, tmp_path):
    path = files.save_safetensors(_state(torch.nn.Linear(2, 3)), tmp_path / "linear.safetensors")
    code, _, err = _run(capsys, "inspect", path)
    assert code == 1 and "no LSTM or LSTMCell weights" in err and "'weight'" in err


def test_suites_run_from_the_checkout_root_and_pass_arguments(capsys, tmp_path, monkeypatch):
    package = tmp_path / "jaxlstm_fake_suite"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(
        "def main(argv, prog):\n    print(prog, 'got', argv)\n"
        "    return 1 if '--fail' in argv else 0\n"
    )
    monkeypatch.setattr(cli, "CHECKOUT_ROOT", tmp_path)
    monkeypatch.setitem(cli.SUITE_PACKAGES, "bench", "jaxlstm_fake_suite")
    monkeypatch.setattr(sys, "path", list(sys.path))
    code, out, _ = _run(capsys, "bench", "--quick", "--fail")
    assert code == 1 and "jaxlstm bench got ['--quick', '--fail']" in out
    assert _run(capsys, "bench")[0] == 0


def test_missing_suite_exits_2_with_a_message(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "CHECKOUT_ROOT", tmp_path)
    monkeypatch.setitem(cli.SUITE_PACKAGES, "bench", "jaxlstm_no_such_suite")
    code, _, err = _run(capsys, "bench")
    assert code == 2 and "'jaxlstm_no_such_suite' suite is not available" in err
    assert "source checkout" in err and "pip install -c constraints.txt -e '.[bench]'" in err


def test_only_the_checkouts_suite_runs(capsys, tmp_path, monkeypatch):
    """A package of the suite's name elsewhere on sys.path is never run in its place."""
    elsewhere = tmp_path / "elsewhere" / "jaxlstm_fake_suite"
    elsewhere.mkdir(parents=True)
    (elsewhere / "__init__.py").write_text("")
    (elsewhere / "__main__.py").write_text("def main(argv, prog):\n    print('wrong suite')\n")
    monkeypatch.setattr(sys, "path", [str(elsewhere.parent), *sys.path])
    monkeypatch.setattr(cli, "CHECKOUT_ROOT", tmp_path)
    monkeypatch.setitem(cli.SUITE_PACKAGES, "bench", "jaxlstm_fake_suite")
    code, out, err = _run(capsys, "bench")
    assert code == 2 and "wrong suite" not in out and "is not available" in err


def test_commands_from_a_wheel_outside_the_checkout(tmp_path):
    """Built as a wheel and run from elsewhere: parity FILE and the built-in parity grid work;
    the benchmark suite is not in the wheel, and jaxlstm bench says where it lives."""
    root = Path(cli.__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(root), "-w", str(tmp_path),
                    "--no-deps", "--no-build-isolation", "-q"],
                   check=True, capture_output=True, timeout=300, cwd=tmp_path)
    (wheel,) = tmp_path.glob("jaxlstm-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
        names = archive.namelist()
    assert not [n for n in names if n.startswith(("parity/", "benchmarks/", "tests/"))]
    work = tmp_path / "work"
    work.mkdir()

    def jaxlstm(*argv):
        return subprocess.run([sys.executable, "-m", "jaxlstm", *argv], cwd=work, text=True,
                              capture_output=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(site)})

    done = jaxlstm("bench", "--help")
    assert done.returncode == 0 and "not available here" in done.stdout
    assert "pip install -c constraints.txt -e '.[bench]'" in done.stdout
    done = jaxlstm("bench")
    assert done.returncode == 2 and "is not part of the installed package" in done.stderr
    done = jaxlstm("parity", "--help")  # the checkout's jaxlstm would find parity/ instead
    assert done.returncode == 0 and "built-in grid" in done.stdout
    done = jaxlstm("parity")
    assert done.returncode == 0, done.stderr
    assert "8/8 passed" in done.stdout and "Warning" not in done.stderr
    path = files.save_safetensors(_state(torch.nn.LSTM(3, 4, proj_size=2)),
                                  work / "lstm.safetensors")
    done = jaxlstm("parity", path.name, "--dtype", "float32")
    assert done.returncode == 0 and "the port matches torch" in done.stdout, done.stderr
    assert "Warning" not in done.stderr


def test_module_entry_point_in_a_subprocess(tmp_path, model):
    path = files.save_safetensors(_state(model.cell), tmp_path / "cell.safetensors")
    done = subprocess.run([sys.executable, "-m", "jaxlstm.cli", "inspect", str(path)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "(root)  LSTMCell" in done.stdout
    done = subprocess.run([sys.executable, "-m", "jaxlstm.cli", "inspect", str(tmp_path / "no")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 1 and "does not exist" in done.stderr
