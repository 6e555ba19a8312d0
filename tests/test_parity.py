"""The default parity grid against real torch: values and gradients, float32 and float64 (the
forward-mode and dropout cases run in tests/test_forward_mode.py and tests/test_dropout.py)."""

import warnings

import pytest

from parity import grid, runner


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", grid.grid(full=False), ids=lambda c: c.name)
def test_parity_default_grid(case, dtype):
    for result in runner.run_case(case, dtype, seed=1):
        worst = max(result.errors, key=result.errors.get)
        assert result.passed, (
            f"{case.name} {dtype} vs torch {result.torch_path}: {worst} error "
            f"{result.errors[worst]:.2e} > {result.tolerance:.0e}"
        )


def test_relative_error_detects_mismatch():
    import numpy as np

    assert runner.relative_error(np.ones(3), np.ones(3)) == 0.0
    assert runner.relative_error(np.array([1.0, 2.0]), np.array([1.0, 2.5])) == pytest.approx(0.2)
    assert runner.relative_error(np.ones(3), np.ones(4)) == float("inf")


def test_float32_fallback_to_float64_only_rescues_errors_within_tolerance():
    case = grid.Case()
    loose = runner.Result(case, "float32", "oneDNN", {"output": 2e-5, "h_n": 1e-7})
    assert not loose.passed
    loose.truth_errors["output"] = 3e-6
    assert loose.passed
    loose.truth_errors["output"] = 2e-5
    assert not loose.passed
    assert runner.Result(case, "float64", "native", {"output": 1e-11}).passed


def test_default_run_exercises_every_feature_in_both_dtypes():
    from parity import __main__ as parity_main

    runs = [(check, case) for check, (cases, _) in parity_main.CHECKS.items()
            for case in cases(False)]
    features = {
        "proj_size": lambda check, case: case.proj_size > 0,
        "bidirectional": lambda check, case: case.bidirectional,
        "packed sequences": lambda check, case: case.packed,
        "no bias": lambda check, case: not case.bias,
        "batch_first": lambda check, case: case.batch_first and case.batch is not None,
        "unbatched input": lambda check, case: case.kind == "lstm" and case.batch is None,
        "dropout masks": lambda check, case: check == "dropout" and case.dropout > 0,
        "LSTMCell": lambda check, case: case.kind == "cell",
        "wavefront": lambda check, case: case.wavefront,
        "remat": lambda check, case: bool(case.remat),
        "forward mode": lambda check, case: check == "jvp",
    }
    missing = [name for name, has in features.items() if not any(has(*run) for run in runs)]
    assert not missing
    assert parity_main.DTYPES == ["float32", "float64"]  # --dtype's default: every case in both


def test_parity_run_counts_comparisons_in_its_progress_and_summary(
        tmp_path, monkeypatch, capsys):
    from parity import __main__ as parity_main
    from parity import forward_mode

    # proj_size: torch warns that oneDNN does not support it, which the run keeps to itself.
    cases = [grid.Case(seq_len=2, batch=1, proj_size=2), grid.Case(kind="cell", batch=1)]
    monkeypatch.setattr(parity_main, "CHECKS", {
        "values": (lambda full: cases, runner.run_case),
        "jvp": (lambda full: forward_mode.grid()[-1:], forward_mode.run_forward_mode_case),
    })
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = parity_main.main(["--dtype", "float32", "--json", str(tmp_path / "r.json")],
                                prog="jaxlstm parity")
    out, err = capsys.readouterr()
    assert code == 0
    assert not [w for w in caught if "oneDNN" in str(w.message)]
    # float32: two torch paths for each grid case, one for forward mode: 5 comparisons.
    lines = [line for line in err.splitlines() if line.startswith("parity:")]
    assert lines[0].startswith("parity:   0%") and "0/5" in lines[0]
    assert "5/5" in lines[-1] and "0 failed, last jvp cell I3 H4 N2" in lines[-1]
    assert "comparison" in lines[-1]
    assert "report written to" in out and "\r" not in err
    assert "parity: 5/5 comparisons passed over 3 configurations" in out


def test_progress_lines_when_piped_come_at_least_every_ten_seconds(monkeypatch):
    import io
    import time

    from jaxlstm import _progress as progress

    assert 0 < progress.PIPED_INTERVAL_S <= 10
    stream = io.StringIO()
    assert list(progress.progress(range(3), desc="work", file=stream)) == [0, 1, 2]
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("work:   0%") and lines[-1].startswith("work: 100%")
    # A step longer than the interval still shows lines while it runs, with the elapsed time
    # (whole seconds) counting up: 00:00, 00:01, 00:02.
    monkeypatch.setattr(progress, "PIPED_INTERVAL_S", 0.25)
    stream = io.StringIO()
    with progress.progress(total=1, desc="slow", file=stream) as bar:
        time.sleep(2.6)
        during = stream.getvalue().splitlines()
        bar.update()
    assert len(during) >= 3 and all(line.startswith("slow:   0% 0/1") for line in during)
    assert stream.getvalue().splitlines()[-1].startswith("slow: 100% 1/1")
    time.sleep(0.2)  # closed: no more lines
    assert stream.getvalue().splitlines()[-1].startswith("slow: 100% 1/1")
