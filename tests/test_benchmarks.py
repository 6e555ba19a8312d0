"""The benchmark suite runs end to end (on a tiny shape; speed itself is not tested here)."""

import json

from benchmarks import __main__ as bench
from benchmarks import suite


def test_benchmark_suite_writes_its_reports(tmp_path, monkeypatch):
    monkeypatch.setattr(suite, "CPU_SHAPES", [suite.Shape(4, 2, 3, 5, 2, True)])
    paths = {kind: tmp_path / f"results.{kind}" for kind in ("json", "png", "md")}
    code = bench.main(["--shapes", "cpu", "--rounds", "1", "--per-round", "1",
                       "--json", str(paths["json"]), "--png", str(paths["png"]),
                       "--markdown", str(paths["md"])])
    assert code == 0
    report = json.loads(paths["json"].read_text())
    timings = report["results"][0]["timings"]
    assert [t["implementation"] for t in timings][:2] == ["torch", "jaxlstm"]
    assert timings[0]["forward_ratio"] == 1.0
    assert all(t["forward_s"] > 0 and t["activation_bytes"] > 0 for t in timings)
    assert paths["png"].stat().st_size > 1000
    assert "| T4 B2 I3 H5 L2 bi | jaxlstm |" in paths["md"].read_text()


def test_floor_writes_its_reports(tmp_path, monkeypatch):
    from benchmarks import floor

    monkeypatch.setattr(suite, "CPU_SHAPES", [suite.Shape(4, 2, 3, 5, 2, True)])
    paths = {kind: tmp_path / f"floor.{kind}" for kind in ("json", "md")}
    code = floor.main(["--rounds", "1", "--per-round", "1", "--json", str(paths["json"]),
                       "--markdown", str(paths["md"])])
    assert code == 0
    rows = json.loads(paths["json"].read_text())["results"][0]["timings"]
    assert [row["implementation"] for row in rows] == [
        "torch", "torch, 1 thread", "jaxlstm", "XLA: recurrence alone",
        "XLA: projections alone", "XLA: recurrence + projections"]
    assert rows[0]["ratio"] == 1.0 and all(row["forward_s"] > 0 for row in rows)
    assert rows[-1]["forward_s"] == rows[-3]["forward_s"] + rows[-2]["forward_s"]
    assert "| T4 B2 I3 H5 L2 bi | XLA: recurrence alone |" in paths["md"].read_text()
