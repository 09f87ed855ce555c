"""tools/benchmark.py end to end on a tiny network: rows, JSON, tensor peaks, profiles."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from advent_tf.core import hardware

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")
TOOL = os.path.join(TOOLS, "benchmark.py")
TINY = ["--backbone=resnet_mini", "--source_size=64,32", "--target_size=64,32",
        "--eval_size=64,32", "--iterations=1", "--warmup=1", "--jit=off", "--noisolate"]


def _run(tmp_path, *flags):
    output = tmp_path / "bench.json"
    process = subprocess.run(
        [sys.executable, TOOL, *TINY, *flags, f"--output_json={output}"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""})
    assert process.returncode == 0, process.stderr[-3000:]
    assert "FAILED" not in process.stdout, process.stdout
    return process.stdout, json.loads(output.read_text())


def test_benchmark_prints_our_row_and_pytorch_row_per_measurement_and_writes_json(tmp_path):
    """Every method and the inference, each with PyTorch's row after ours, from one run."""
    pytest.importorskip("torch")
    stdout, report = _run(tmp_path, "--pytorch", "--ceiling_size=256", "--notensor_memory")
    rows = [line.split()[:3] for line in stdout.splitlines()]
    names = ["source_only", "minent", "advent", "inference"]
    assert [r for r in rows if r and r[0] in names] == [
        row for name in names for row in ([name, "ours", "off"], [name, "pytorch", "-"])], stdout

    assert report["config"]["backbone"] == "resnet_mini"
    # Measured in the run, never remembered: the CPU, its ceiling, the idle runtimes.
    machine = report["machine"]
    assert machine["cpu"] and "logical cores" in machine["cpu"]
    # The ceiling is the faster framework's product in the policy's compute type.
    assert {c["dtype"] for c in machine["ceilings"].values()} == {"float32"}
    assert set(machine["ceilings"]) == {"advent_tf", "pytorch"}
    assert machine["ceiling_gflop_per_s"] == max(
        c["gflop_per_s"] for c in machine["ceilings"].values()) > 0
    assert "ceiling: 256x256 float32 matrix product, ours:" in stdout
    assert set(machine["idle_memory_bytes"]) == {"advent_tf", "pytorch"}
    assert 0 < machine["idle_memory_bytes"]["advent_tf"] < min(
        r["peak_memory_bytes"] for r in report["results"])
    assert "WARNING" not in stdout, stdout

    results = report["results"]
    ours, theirs = results[::2], results[1::2]
    assert [r["name"] for r in ours] == names
    for mine, other in zip(ours, theirs):
        assert (mine["implementation"], other["implementation"]) == ("advent_tf", "pytorch")
        assert mine["jit"] is False and mine["jit_applied"] is False
        for key in ("seconds", "seconds_min", "first_call_seconds", "gflop", "gflop_per_s",
                    "peak_memory_bytes"):
            assert mine[key] > 0, (mine["name"], key, mine[key])
        assert mine["ratio_to_pytorch"] == pytest.approx(mine["seconds"] / other["seconds"])
        assert other["gflop"] == mine["gflop"] > 0  # The same network.
        assert other["torch_threads"] >= 1
        assert "tensor_peak_bytes" not in mine and "tensor_peak_bytes" not in other
    gflop = {r["name"]: r["gflop"] for r in ours}
    # MinEnt adds a target pass to the source pass; AdvEnt adds the discriminators.
    assert gflop["source_only"] < gflop["minent"] < gflop["advent"]


def test_a_16_bit_policy_measures_its_ceiling_in_its_type_and_flags_emulation(tmp_path):
    pytest.importorskip("torch")
    stdout, report = _run(tmp_path, "--pytorch", "--methods=", "--noinference",
                          "--mixed_precision=mixed_bfloat16", "--ceiling_size=256")
    assert report["results"] == []
    assert {c["dtype"] for c in report["machine"]["ceilings"].values()} == {"bfloat16"}
    assert "ceiling: 256x256 bfloat16 matrix product, ours:" in stdout
    # bfloat16 on a CPU without native bfloat16 is flagged before the table.
    problem = hardware.precision_problem("mixed_bfloat16", gpus=[])
    assert (f"WARNING: {problem}" in stdout) if problem else ("WARNING" not in stdout), stdout


def test_rounds_tensor_peaks_and_op_family_profiles_of_both_sides(tmp_path):
    """Rounds alternate and pool; live-tensor peaks and op-family profiles of both sides."""
    pytest.importorskip("torch")
    stdout, report = _run(tmp_path, "--pytorch", "--methods=advent", "--noinference",
                          "--rounds=2", "--ceiling_size=0", "--tensor_memory", "--profile")
    ours, theirs = report["results"]
    # Two rounds of one timed call each, pooled.
    assert len(ours["seconds_all"]) == len(theirs["seconds_all"]) == 2
    assert ours["ratio_to_pytorch"] == pytest.approx(ours["seconds"] / theirs["seconds"])
    batch = 4 * 64 * 32 * (3 + 1 + 3)  # Source image, labels, target image, float32/int32.
    for row in (ours, theirs):
        # At least the inputs are alive; never more than the process held.
        assert batch < row["tensor_peak_bytes"] < row["peak_memory_bytes"], row
        families = row["profile"]
        assert families["convolution"] > 0 and families["batch norm"] > 0, families
        # Ops run one at a time in a profile: their times add up to about the call.
        assert 0.3 * row["profile_wall_seconds"] < sum(families.values()) < (
            1.2 * row["profile_wall_seconds"]), row
    # The allocator's chunks hold at least what the tensors asked for.
    assert ours["allocator_peak_bytes"] >= ours["tensor_peak_bytes"], ours
    assert "profile of one advent call (XLA off), seconds per op family:" in stdout
    assert "ours: convolutions" in stdout and "pytorch: convolutions" in stdout
    assert f"{ours['tensor_peak_bytes'] / 2**20:.0f}" in stdout.split("advent       ours")[1]


def test_torch_tensor_peak_and_op_families_are_exact(tmp_path):
    """The PyTorch count against tensors of known sizes; the family of known op names."""
    pytest.importorskip("torch")
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {TOOLS!r})
        import torch
        import benchmark

        MiB = 2 ** 20
        weights = torch.zeros(MiB // 4)  # 1 MiB, alive throughout.
        state = {{"grad": torch.zeros(2 * MiB // 4)}}  # Made before the profiler starts.

        def call():
            state["grad"] = None  # -2: the previous step's gradient.
            a = torch.ones(2 * MiB // 4)  # +2
            b = torch.ones(4 * MiB // 4)  # +4: 1 + 2 + 4 = 7 MiB
            del a  # 5
            c = torch.ones(MiB // 4)  # 6
            state["grad"] = b[: 2 * MiB // 4] * 2  # 8: the peak
            return c.sum() + b.sum()

        peak = benchmark.torch_tensor_peak(call, lambda: [weights, state["grad"]])
        print(peak / MiB)
        for name, family in [
                ("Conv2DBackpropFilter", "convolution"), ("_MklNativeConv2D", "convolution"),
                ("aten::convolution_backward", "convolution"), ("MatMul", "convolution"),
                ("aten::mm", "convolution"), ("FusedBatchNormGradV3", "batch norm"),
                ("_MklFusedBatchNormV3", "batch norm"),
                ("aten::native_batch_norm_backward", "batch norm"),
                ("ResizeBilinearGrad", "resize, pool"), ("aten::upsample_bilinear2d",
                                                         "resize, pool"),
                ("MaxPoolGrad", "resize, pool"), ("aten::max_pool2d_with_indices",
                                                  "resize, pool"),
                ("SparseSoftmaxCrossEntropyWithLogits", "softmax, loss"),
                ("aten::_log_softmax", "softmax, loss"), ("SpaceToBatchND", "layout"),
                ("Transpose", "layout"), ("aten::copy_", "layout"), ("ReluGrad", "elementwise"),
                ("aten::threshold_backward", "elementwise"), ("AddV2", "elementwise"),
                ("aten::add_", "elementwise"), ("NoOp", "other")]:
            assert benchmark.op_family(name) == family, (name, benchmark.op_family(name))
        """)
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=120)
    assert process.returncode == 0, process.stderr[-3000:]
    # 8 MiB, and the sums' scalars (a few bytes) made while it is held.
    assert float(process.stdout.split()[-1]) == pytest.approx(8.0, abs=1e-4)


def test_tf_tensor_peak_counts_tensors_of_known_sizes_and_the_allocators_own_peak(tmp_path):
    """Ours against tensors of known sizes (as PyTorch's above), and BFC's own count."""
    script = textwrap.dedent(f"""
        import os
        import sys
        sys.path.insert(0, {TOOLS!r})
        os.environ["TF_CPU_ALLOCATOR_USE_BFC"] = "true"
        import tensorflow as tf
        import benchmark

        MiB = 2 ** 20
        state = {{}}

        def setup():
            state["weights"] = tf.Variable(tf.fill([MiB // 4], 0.5))  # 1 MiB throughout.
            state["grad"] = tf.fill([2 * MiB // 4], 1.0)  # The previous step's gradient.
            tf.config.experimental.reset_memory_stats("CPU:0")
            return call

        def call():
            state["grad"] = None  # 1 MiB
            a = tf.fill([2 * MiB // 4], 1.0)  # 3
            b = tf.fill([4 * MiB // 4], 1.0)  # 7
            del a  # 5
            c = tf.fill([MiB // 4], 1.0)  # 6
            state["grad"] = tf.fill([2 * MiB // 4], 2.0)  # 8: the peak
            return b, c

        peaks = benchmark.tf_tensor_peak(setup)
        print(peaks["tensor_peak_bytes"] / MiB, peaks["allocator_peak_bytes"],
              tf.config.experimental.get_memory_info("CPU:0")["peak"])
        """)
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert process.returncode == 0, process.stderr[-3000:]
    requested, allocated, bfc_peak = process.stdout.split()[-3:]
    # 8 MiB, and a few hundred bytes of scalars and the variable's handle.
    assert float(requested) == pytest.approx(8.0, abs=1e-3)
    # The chunks as the events give them are BFC's own count of the same call.
    assert int(allocated) == int(bfc_peak)


def test_live_tensor_peaks_count_only_the_interval_from_what_was_alive_at_its_start():
    """live_tensor_peaks on an event log written by hand."""
    # A subprocess: the tool's absl flags would clash with advent_tf.train's in this one.
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {TOOLS!r})
        import benchmark

        events = [  # (time, allocation?, address, requested, allocated), out of order.
            (5, True, "c", 30, 64),
            (0, True, "a", 100, 128),
            (1, True, "b", 50, 64),  # Before the interval: 150 / 192 is not its peak.
            (2, False, "a", 0, 0),
            (6, False, "b", 0, 0),
            (7, True, "d", 500, 512),  # After it.
        ]
        # At 3, b is alive (50 / 64); c brings 80 / 128; freeing b 30 / 64.
        print(benchmark.live_tensor_peaks(events, 3, 6))
        # An interval that begins with a free, and one with no event, keep what was alive.
        print(benchmark.live_tensor_peaks(events, 5.5, 6.5))
        print(benchmark.live_tensor_peaks(events, 3, 4))
        """)
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert process.returncode == 0, process.stderr[-3000:]
    assert process.stdout.splitlines()[-3:] == ["(80, 128)", "(80, 128)", "(50, 64)"]
