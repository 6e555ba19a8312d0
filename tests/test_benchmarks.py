"""The benchmark suite runs end to end (on a tiny shape; speed itself is not tested here)."""

import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxlstm
from benchmarks import __main__ as bench
from benchmarks import suite
from jaxlstm import functional
from jaxlstm.functional.recurrence import project


def _missing_package(module, shape, device):
    raise ImportError("No module named 'absentlstm'")


def test_benchmark_suite_writes_its_reports(tmp_path, monkeypatch, capsys):
    """End to end on a tiny shape, with the peers (torchax, slow to trace, aside: its own test
    below runs it) and one whose package is missing: that one is left out, with the reason
    printed and recorded, and the run goes on."""
    monkeypatch.setattr(suite, "CPU_SHAPES", [suite.Shape(4, 2, 3, 5, 2, True)])
    peers = {name: build for name, build in bench.PEERS.items() if "torchax" not in name}
    monkeypatch.setattr(bench, "PEERS", {**peers, "absent LSTM": _missing_package})
    paths = {kind: tmp_path / f"results.{kind}" for kind in ("json", "png", "md")}
    code = bench.main(["--shapes", "cpu", "--rounds", "1", "--per-round", "1",
                       "--json", str(paths["json"]), "--png", str(paths["png"]),
                       "--markdown", str(paths["md"])])
    assert code == 0
    report = json.loads(paths["json"].read_text())
    entry = report["results"][0]
    timings = entry["timings"]
    names = [t["implementation"] for t in timings]
    assert names[:2] == ["torch", "jaxlstm"]
    available = [name for name in peers if name in names]
    assert "flax OptimizedLSTMCell" in available
    assert [t["implementation"] for t in timings if t["peer"]] == available
    assert timings[0]["forward_ratio"] == 1.0
    assert all(t["forward_s"] > 0 and t["activation_bytes"] > 0 for t in timings)
    best = entry["best_peer"]
    for kind in ("forward", "forward_backward"):
        assert best[kind] in available
        fastest = min(t[f"{kind}_s"] for t in timings if t["peer"])
        assert all(t[f"{kind}_peer_ratio"] == t[f"{kind}_s"] / fastest for t in timings)
    reason = "ImportError: No module named 'absentlstm'"
    assert entry["left_out"]["absent LSTM"] == reason
    assert f"left out absent LSTM: {reason}" in capsys.readouterr().err
    assert paths["png"].stat().st_size > 1000
    table = paths["md"].read_text()
    assert "| T4 B2 I3 H5 L2 bi | jaxlstm |" in table and "vs best JAX" in table
    assert f"- T4 B2 I3 H5 L2 bi: left out absent LSTM: {reason}" in table


PEER_PACKAGES = {"flax OptimizedLSTMCell": "flax", "equinox LSTMCell": "equinox",
                 "keras LSTM": "keras", "torchax nn.LSTM": "torchax"}


@pytest.mark.parametrize("name", list(PEER_PACKAGES))
@pytest.mark.parametrize("bidirectional, batch_first", [(False, False), (True, False),
                                                        (False, True)],
                         ids=["uni", "bi", "uni-batch_first"])
def test_each_peer_runs_torchs_model(name, bidirectional, batch_first, request):
    """Each JAX peer, built as the benchmark builds it from the seeded torch module, gives that
    module's output and input gradient (2 layers, float32): the benchmark times one model."""
    import importlib.util
    import os
    import subprocess
    import sys

    import jax

    if importlib.util.find_spec(PEER_PACKAGES[name]) is None:
        pytest.skip(f"{PEER_PACKAGES[name]} is not installed")
    if name == "torchax nn.LSTM" and not os.environ.get("JAXLSTM_TEST_CHILD"):
        # Importing torchax registers torch's private-use backend as "jax" for the rest of the
        # process (torch.nn.DataParallel then picks it), so its check runs in a child process.
        root = pathlib.Path(__file__).parents[1]
        child = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                request.node.nodeid], cwd=root, capture_output=True, text=True,
                               env={**os.environ, "JAXLSTM_TEST_CHILD": "1"})
        assert child.returncode == 0, child.stdout[-3000:] + child.stderr[-3000:]
        return
    shape = suite.Shape(5, 3, 4, 6, 2, bidirectional, batch_first)
    assert set(bench.PEERS) == set(PEER_PACKAGES)
    module = suite.torch_lstm(shape)
    candidate = bench.PEERS[name](module, shape, jax.devices("cpu")[0])
    assert candidate.name == name
    x = torch.from_numpy(suite._inputs(shape)).requires_grad_(True)
    expected = module(x)[0]
    expected.sum().backward()
    np.testing.assert_allclose(np.asarray(candidate.forward()), expected.detach().numpy(),
                               atol=1e-5)
    _, x_grad = candidate.forward_backward()
    np.testing.assert_allclose(np.asarray(x_grad), x.grad.numpy(), atol=1e-5)


def test_a_peer_that_cannot_be_built_is_left_out_with_the_reason():
    timings_left_out: dict[str, str] = {}
    absent = suite.peer("absent LSTM", lambda: _missing_package(None, None, None))
    assert absent.optional and absent.peer
    fine = suite.Candidate("fine", lambda: None, lambda: None)
    timings = suite.time_candidates([fine, absent], 1, 1, left_out=timings_left_out)
    assert [t.implementation for t in timings] == ["fine"]
    assert timings_left_out == {"absent LSTM": "ImportError: No module named 'absentlstm'"}


def test_torchax_is_left_out_where_its_unrolled_first_call_would_take_too_long():
    long = suite.Shape(2000, 4, 40, 128)
    assert suite.torchax_first_call_s(long) > suite.TORCHAX_MAX_FIRST_CALL_S
    assert suite.torchax_first_call_s(suite.CPU_SHAPES[0]) < suite.TORCHAX_MAX_FIRST_CALL_S
    left_out: dict[str, str] = {}
    candidate = suite.peer("torchax nn.LSTM",
                           lambda: suite.torchax_candidate(None, long, None))
    assert suite.time_candidates([candidate], 1, 1, left_out=left_out) == []
    assert left_out["torchax nn.LSTM"].startswith(
        "torchax unrolls every step: first call estimated at ")


def test_ratios_to_torch_and_to_the_fastest_peer_of_each_kind():
    timings = [suite.Timing("torch", 2.0, 8.0), suite.Timing("jaxlstm", 1.0, 4.0),
               suite.Timing("a", 4.0, 2.0, peer=True), suite.Timing("b", 0.5, 16.0, peer=True)]
    rows, best = bench.ratios(timings)
    assert best == {"forward": "b", "forward_backward": "a"}
    assert [r["forward_ratio"] for r in rows] == [1.0, 0.5, 2.0, 0.25]
    assert [r["forward_peer_ratio"] for r in rows] == [4.0, 2.0, 8.0, 1.0]
    assert [r["forward_backward_peer_ratio"] for r in rows] == [4.0, 2.0, 1.0, 8.0]
    rows, best = bench.ratios(timings[:2])
    assert best == {"forward": None, "forward_backward": None}
    assert rows[1]["forward_peer_ratio"] is None
    assert bench._cells({**rows[1], "compile_s": 1.0})[2] == "-"


def test_cpu_shapes_include_the_seed_model_and_a_long_sequence():
    labels = [shape.label for shape in suite.CPU_SHAPES]
    assert labels[2:] == ["T100 B32 I64 H128 L2 uni batch_first", "T2000 B4 I40 H128 L1 uni"]
    shape = suite.CPU_SHAPES[2]
    assert suite.torch_lstm(shape).batch_first
    assert suite._inputs(shape).shape == (32, 100, 64)
    np.testing.assert_array_equal(suite._inputs(shape),
                                  np.swapaxes(suite.time_major_inputs(shape), 0, 1))


TINY = ["--shapes", "cpu", "--rounds", "1", "--per-round", "1"]


def _tiny_shapes(monkeypatch, count=1):
    """Two shapes, each timed with cheap stand-ins: these tests are about the run, not speed."""
    shapes = [suite.Shape(3, 2, 3, 4), suite.Shape(2, 1, 3, 4)][:count]
    monkeypatch.setattr(suite, "CPU_SHAPES", shapes)

    def work():
        return sum(range(1000))

    monkeypatch.setattr(bench, "candidates", lambda shape, gpu, memory=False: [
        suite.Candidate(name, work, work, lambda: 1) for name in ("torch", "jaxlstm")])


def _committed_tables():
    return {p.name: p.read_bytes() for p in bench.RECORD_DIR.glob("*.*")}


def test_reports_go_to_the_working_directory_and_never_to_the_checkout(
        tmp_path, monkeypatch, capsys):
    _tiny_shapes(monkeypatch)
    committed = _committed_tables()
    monkeypatch.chdir(tmp_path)
    assert bench.main(TINY) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert [n.rsplit(".", 1)[1] for n in names] == ["json", "md", "png"]
    assert all(n.startswith("bench-cpu-2") for n in names)
    assert _committed_tables() == committed
    err = capsys.readouterr().err
    assert "shape 1/1 T3 B2 I3 H4 L1 uni" in err and "round 1/1" in err  # progress, on stderr


def test_out_directory_is_created_and_results_are_written_after_each_shape(
        tmp_path, monkeypatch):
    _tiny_shapes(monkeypatch, count=2)
    calls = []
    plain = bench.candidates

    def second_shape_fails(shape, gpu, memory=False):
        calls.append(shape)
        if len(calls) == 2:
            raise RuntimeError("the machine went away")
        return plain(shape, gpu, memory)

    monkeypatch.setattr(bench, "candidates", second_shape_fails)
    out = tmp_path / "new" / "dir"
    with pytest.raises(RuntimeError, match="went away"):
        bench.main([*TINY, "--out", str(out), "--name", "run"])
    report = json.loads((out / "run.json").read_text())
    assert [r["shape"] for r in report["results"]] == ["T3 B2 I3 H4 L1 uni"]
    assert "| T3 B2 I3 H4 L1 uni | jaxlstm |" in (out / "run.md").read_text()


def test_unwritable_reports_fail_before_anything_is_timed(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(suite, "time_candidates", lambda *a, **k: pytest.fail("timed"))
    blocker = tmp_path / "a file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as done:
        bench.main([*TINY, "--out", str(blocker / "sub")])
    assert done.value.code == 2
    assert "cannot write the reports" in capsys.readouterr().err


def test_record_writes_the_committed_tables_and_only_on_a_full_run(tmp_path, monkeypatch):
    _tiny_shapes(monkeypatch)
    monkeypatch.setattr(bench, "RECORD_DIR", tmp_path)
    assert bench.main([*TINY, "--record"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "results.json", "results.md", "results.png"]
    for extra in (["--quick"], ["--out", "x"], ["--json", "x.json"]):
        with pytest.raises(SystemExit) as done:
            bench.main([*TINY, "--record", *extra])
        assert done.value.code == 2


def test_bench_help_names_the_command_and_every_default(capsys):
    from jaxlstm import cli

    assert cli.main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: jaxlstm bench")
    for option, default in [("--rounds", "(default: 9)"), ("--per-round", "(default: 3)"),
                            ("--shapes", "(default: auto)"), ("--out", "current directory"),
                            ("--json", "DIR/NAME.json"), ("--png", "DIR/NAME.png"),
                            ("--markdown", "DIR/NAME.md"), ("--name", "bench-<shapes>-")]:
        assert option in out and default in out, option


def test_floor_writes_its_reports(tmp_path, monkeypatch):
    from benchmarks import floor

    monkeypatch.setattr(suite, "CPU_SHAPES", [suite.Shape(4, 2, 3, 5, 2, True),
                                              suite.Shape(3, 2, 3, 4, batch_first=True)])
    threads = torch.get_num_threads()
    paths = {kind: tmp_path / f"floor.{kind}" for kind in ("json", "md")}
    code = floor.main(["--rounds", "1", "--per-round", "1", "--json", str(paths["json"]),
                       "--markdown", str(paths["md"])])
    assert code == 0
    assert torch.get_num_threads() == threads
    rows = json.loads(paths["json"].read_text())["results"][0]["timings"]
    assert [row["implementation"] for row in rows] == [
        "torch", "torch, 1 thread", "jaxlstm", floor.RECURRENCE, floor.PROJECTIONS, floor.TOTAL]
    assert all(row["forward_s"] > 0 for row in rows)
    assert all(row["ratio"] == row["forward_s"] / rows[0]["forward_s"] for row in rows)
    assert rows[-1]["forward_s"] == rows[-3]["forward_s"] + rows[-2]["forward_s"]
    table = paths["md"].read_text()
    assert "| T4 B2 I3 H5 L2 bi | XLA: recurrence alone |" in table
    assert "| T3 B2 I3 H4 L1 uni batch_first | jaxlstm |" in table


def test_floor_single_thread_wrapper_runs_on_one_thread():
    from benchmarks import floor

    threads = torch.get_num_threads()
    assert floor._single_thread(torch.get_num_threads)() == 1
    assert torch.get_num_threads() == threads


def test_floor_recurrence_is_the_lstm_recurrence():
    """Two uni layers without bias, each layer's projections given: the floor's loop computes
    jaxlstm's states, with layer 1 starting from layer 0's final state."""
    from benchmarks import floor

    torch.manual_seed(0)
    model = jaxlstm.from_torch(torch.nn.LSTM(3, 5, 2, bias=False))
    params, config = model.params(), model.config
    x = jnp.asarray(np.random.default_rng(0).standard_normal((6, 2, 3)), jnp.float32)
    _, (h_n, c_n) = functional.lstm(params, x, config=config)
    layer = {f"weight_{k}_l0": params[f"weight_{k}_l1"] for k in ("ih", "hh")}
    first = functional.lstm({k: v for k, v in params.items() if k.endswith("l0")}, x,
                            config=jaxlstm.LSTMConfig(3, 5, bias=False))[0]
    gates = [jnp.stack(project(inp, (params[f"weight_ih_l{i}"],), None))
             for i, inp in enumerate([x, first])]
    w_hh_t = [params[f"weight_hh_l{i}"].T[None] for i in range(2)]
    zeros = jnp.zeros((1, 2, 5), jnp.float32)
    h0, c0 = floor.recurrence(gates[:1], w_hh_t[:1], zeros, zeros)
    np.testing.assert_allclose(h0[0], h_n[0], atol=1e-6)
    np.testing.assert_allclose(c0[0], c_n[0], atol=1e-6)
    h1, c1 = floor.recurrence(gates, w_hh_t, zeros, zeros)
    _, (h_ref, c_ref) = functional.lstm(layer, first, (h0, c0),
                                        config=jaxlstm.LSTMConfig(5, 5, bias=False))
    np.testing.assert_allclose(h1[0], h_ref[0], atol=1e-6)
    np.testing.assert_allclose(c1[0], c_ref[0], atol=1e-6)


def test_cudnn_weights_are_the_layout_jax_experimental_rnn_reads():
    """The flat vector, unpacked by ``jax.experimental.rnn`` and run through its reference
    LSTM, gives torch's output: the GPU benchmark's cuDNN candidate runs torch's weights."""
    from jax.experimental import rnn

    torch.manual_seed(0)
    module = torch.nn.LSTM(3, 5, 2, bidirectional=True)
    model = jaxlstm.from_torch(module)
    config = model.config
    x = torch.randn(4, 6, 3)  # time-major for torch
    expected = module(x)[0].detach().numpy()
    weights = suite.cudnn_weights(model.params(), config)
    assert weights.shape == (rnn.get_num_params_in_lstm(3, 5, 2, True),)
    unpacked = rnn.unpack_lstm_weights(weights, 3, 5, 2, True)
    zeros = jnp.zeros((4, 6, 5), jnp.float32)
    y, _, _ = rnn.lstm_ref(jnp.swapaxes(jnp.asarray(x.numpy()), 0, 1), zeros, zeros, *unpacked,
                           jnp.full((6,), 4, jnp.int32), 3, 5, 2, 0.0, True)
    np.testing.assert_allclose(np.swapaxes(np.asarray(y), 0, 1), expected, atol=1e-5)


def test_gpu_check_script_parses():
    import pathlib
    import subprocess

    script = pathlib.Path(__file__).parents[1] / "benchmarks" / "gpu_check.sh"
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_an_optional_candidate_that_fails_is_left_out_and_others_are_not():
    import pytest

    def fails():
        raise RuntimeError("no such device")

    fine = suite.Candidate("fine", lambda: None, lambda: None)
    broken = suite.Candidate("broken", fails, fails, optional=True)
    timings = suite.time_candidates([fine, broken], rounds=1, per_round=1)
    assert [t.implementation for t in timings] == ["fine"]
    with pytest.raises(RuntimeError, match="no such device"):
        suite.time_candidates([fine, suite.Candidate("broken", fails, fails)], 1, 1)


def test_cudnn_candidate_matches_torch_on_a_gpu():
    """On a GPU: jax.experimental.rnn with the packed weights gives torch's output and input
    gradient (cuDNN through XLA against torch on the CPU, float32, full precision)."""
    import jax
    import pytest

    if jax.default_backend() != "gpu":
        pytest.skip("jax.experimental.rnn runs on GPUs only")
    from jax.experimental import rnn

    torch.manual_seed(0)
    module = torch.nn.LSTM(3, 5, 2, bidirectional=True)
    model = jaxlstm.from_torch(module)
    weights = suite.cudnn_weights(model.params(), model.config)
    x = torch.randn(6, 4, 3, requires_grad=True)  # batch-first for jax.experimental.rnn
    y_torch = module(x.transpose(0, 1))[0].transpose(0, 1)
    y_torch.sum().backward()
    zeros = jnp.zeros((4, 6, 5), jnp.float32)

    def run(x):
        return rnn.lstm(x, zeros, zeros, weights, jnp.full((6,), 4, jnp.int32), 3, 5, 2, 0.0,
                        True, precision="highest")[0]

    x_jax = jnp.asarray(x.detach().numpy())
    np.testing.assert_allclose(run(x_jax), y_torch.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(jax.grad(lambda x: jnp.sum(run(x)))(x_jax), x.grad.numpy(),
                               atol=1e-5)
