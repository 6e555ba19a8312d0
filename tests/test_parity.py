"""The quick parity grid against real torch: values and gradients, float32 and float64."""

import pytest

from parity import grid, runner


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", grid.grid(full=False), ids=lambda c: c.name)
def test_parity_quick_grid(case, dtype):
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


def test_parity_run_shows_progress_when_piped_and_still_prints_the_report(
        tmp_path, monkeypatch, capsys):
    from parity import __main__ as parity_main
    from parity import grid

    monkeypatch.setattr(grid, "grid", lambda full: [grid.Case(seq_len=2, batch=1),
                                                    grid.Case(kind="cell", batch=1)])
    code = parity_main.main(["--dtype", "float32", "--json", str(tmp_path / "r.json")],
                            prog="jaxlstm parity")
    out, err = capsys.readouterr()
    assert code == 0
    lines = [line for line in err.splitlines() if line.startswith("parity:")]
    assert lines[0].startswith("parity:   0%") and "0/2" in lines[0]
    assert "2/2" in lines[-1] and "0 failed, last cell I5 H8" in lines[-1]
    assert "report written to" in out and "\r" not in err


def test_progress_lines_when_piped_come_at_least_every_twenty_seconds():
    import io

    from jaxlstm import _progress as progress

    stream = io.StringIO()
    assert 0 < progress.PIPED_INTERVAL_S <= 20
    assert list(progress.progress(range(3), desc="work", file=stream)) == [0, 1, 2]
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("work:   0%") and lines[-1].startswith("work: 100%")
