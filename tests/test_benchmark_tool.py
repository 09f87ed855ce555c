"""tools/benchmark.py end to end on a tiny network: one row per measurement, JSON figures."""

import json
import os
import subprocess
import sys

import pytest

from advent_tf.core import hardware

TOOL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools",
                    "benchmark.py")


def test_benchmark_prints_a_row_per_method_and_writes_json(tmp_path):
    output = tmp_path / "bench.json"
    process = subprocess.run(
        [sys.executable, TOOL, "--backbone=resnet_mini", "--source_size=64,32",
         "--target_size=64,32", "--eval_size=64,32", "--iterations=1", "--warmup=1", "--jit=off",
         "--noisolate", "--ceiling_size=256", f"--output_json={output}"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""})
    assert process.returncode == 0, process.stderr[-3000:]
    rows = [line.split() for line in process.stdout.splitlines()]
    names = [row[0] for row in rows if len(row) > 3 and row[1:3] == ["ours", "off"]]
    assert names == ["source_only", "minent", "advent", "inference"], process.stdout
    assert "FAILED" not in process.stdout

    report = json.loads(output.read_text())
    assert report["config"]["backbone"] == "resnet_mini"
    # Measured in the run, never remembered: the CPU, its ceiling, the idle runtime.
    machine = report["machine"]
    assert machine["cpu"] and "logical cores" in machine["cpu"]
    assert machine["ceiling_gflop_per_s"] == max(
        c["gflop_per_s"] for c in machine["ceilings"].values()) > 0
    assert "ceiling: 256x256 float32 matrix product, ours:" in process.stdout
    assert 0 < machine["idle_memory_bytes"]["advent_tf"] < min(
        r["peak_memory_bytes"] for r in report["results"])
    assert [r["name"] for r in report["results"]] == names
    for result in report["results"]:
        assert result["jit"] is False and result["jit_applied"] is False
        for key in ("seconds", "seconds_min", "first_call_seconds", "gflop", "gflop_per_s",
                    "peak_memory_bytes"):
            assert result[key] > 0, (result["name"], key, result[key])
    gflop = {r["name"]: r["gflop"] for r in report["results"]}
    # MinEnt adds a target pass to the source pass; AdvEnt adds the discriminators.
    assert gflop["source_only"] < gflop["minent"] < gflop["advent"]


def test_benchmark_times_pytorch_side_by_side(tmp_path):
    """--pytorch: a PyTorch row after ours per measurement, and ours/PyTorch from the same run."""
    pytest.importorskip("torch")
    output = tmp_path / "bench.json"
    process = subprocess.run(
        [sys.executable, TOOL, "--backbone=resnet_mini", "--source_size=64,32",
         "--target_size=64,32", "--eval_size=64,32", "--iterations=1", "--warmup=1", "--jit=off",
         "--methods=advent", "--pytorch", "--rounds=2", "--noisolate",
         "--mixed_precision=mixed_bfloat16", "--ceiling_size=256", f"--output_json={output}"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""})
    assert process.returncode == 0, process.stderr[-3000:]
    assert "FAILED" not in process.stdout, process.stdout
    rows = [line.split()[:3] for line in process.stdout.splitlines()]
    assert [r for r in rows if r and r[0] in ("advent", "inference")] == [
        ["advent", "ours", "off"], ["advent", "pytorch", "-"],
        ["inference", "ours", "off"], ["inference", "pytorch", "-"]], process.stdout

    # The ceiling is the faster framework's product in the policy's compute type.
    machine = json.loads(output.read_text())["machine"]
    assert {c["dtype"] for c in machine["ceilings"].values()} == {"bfloat16"}
    assert set(machine["ceilings"]) == {"advent_tf", "pytorch"}
    assert set(machine["idle_memory_bytes"]) == {"advent_tf", "pytorch"}
    # bfloat16 on a CPU without native bfloat16 is flagged before the table.
    problem = hardware.precision_problem("mixed_bfloat16", gpus=[])
    assert (f"WARNING: {problem}" in process.stdout) if problem else (
        "WARNING" not in process.stdout), process.stdout

    results = json.loads(output.read_text())["results"]
    for ours, theirs in zip(results[::2], results[1::2]):
        assert (ours["implementation"], theirs["implementation"]) == ("advent_tf", "pytorch")
        # Two rounds of one timed call each, pooled.
        assert len(ours["seconds_all"]) == len(theirs["seconds_all"]) == 2
        assert ours["ratio_to_pytorch"] == pytest.approx(ours["seconds"] / theirs["seconds"])
        assert theirs["gflop"] == ours["gflop"] > 0  # The same network.
        assert theirs["torch_threads"] >= 1
