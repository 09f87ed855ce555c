r"""One short check of a machine with an NVIDIA GPU: tests, speed and memory at reference sizes.

    python tools/gpu_check.py --install --output=gpu_check.json

1. Finds the GPUs (``nvidia-smi -L`` and TensorFlow's device list). Without
   one it says so and exits with status 2, having written a JSON that says so.
2. ``--install``: ``pip install -e .[test]`` (the project and its test extras).
3. Runs the GPU-relevant tests: gradients under XLA and mixed precision, the
   compiled and mixed-precision training entry point, the networks.
4. Times source-only, MinEnt and AdvEnt iterations at the reference sizes
   (batch 1, 1280x720 source + 1024x512 target, ResNet-101 multi-level) and
   1024x512 inference with ``tools/benchmark.py``, for float32,
   mixed_bfloat16 and mixed_float16, XLA off and on, each measurement in its
   own process so that its peak GPU memory is its own (the paper trained on
   an 11 GB GPU).
5. Trains the demo for a few steps with ``--strategy=mirrored`` over the
   visible GPUs (global batch 4 per GPU) and reports steps per second.

Everything goes into one JSON (``--output``): the machine, each step's
command, exit status, wall time and results. Each step has a timeout and the
whole check a budget (``--budget_seconds``, default 450): steps that would
start past it are recorded as skipped. Exit status 0 when every step passed,
1 when one failed, 2 without a GPU.
"""

import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

REPO = pathlib.Path(__file__).resolve().parent.parent
GPU_TESTS = ("tests/test_precision_gradients.py", "tests/test_train_compilation.py",
             "tests/test_models.py")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")

_OUTPUT = flags.DEFINE_string("output", "gpu_check.json", "Where the JSON report goes.")
_INSTALL = flags.DEFINE_bool("install", False, "pip install -e .[test] first.")
_BUDGET = flags.DEFINE_integer("budget_seconds", 450,
                               "No step starts after this many seconds.", lower_bound=1)


def _run(command, timeout, env=None):
    """Runs a command; returns {command, returncode, seconds, output tail}."""
    start = time.monotonic()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                cwd=REPO, env=env)
        code, output = result.returncode, result.stdout + result.stderr
    except subprocess.TimeoutExpired as e:
        code, output = "timeout", f"timed out after {timeout} s: {e.stdout or ''}"
    except OSError as e:
        code, output = "not_run", str(e)
    return {"command": " ".join(map(str, command)), "returncode": code,
            "seconds": round(time.monotonic() - start, 1), "output_tail": output[-3000:]}


def find_gpus():
    """(GPU names from nvidia-smi, number of GPUs TensorFlow sees, why none if none)."""
    smi = _run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                "--format=csv,noheader"], timeout=30)
    names = ([line.strip() for line in smi["output_tail"].splitlines() if line.strip()]
             if smi["returncode"] == 0 else [])
    probe = _run([sys.executable, "-c", "import tensorflow as tf; "
                  "print(len(tf.config.list_physical_devices('GPU')))"], timeout=300)
    try:
        tf_gpus = int(probe["output_tail"].strip().splitlines()[-1])
    except (ValueError, IndexError):
        tf_gpus = 0
    reason = None
    if not names:
        reason = f"nvidia-smi found no NVIDIA GPU ({str(smi['returncode'])}: " \
                 f"{smi['output_tail'].strip()[:200] or 'no output'})"
    elif not tf_gpus:
        reason = f"nvidia-smi lists {names} but TensorFlow sees no GPU (a CPU-only build?)"
    return names, tf_gpus, reason


class Check:
    """Runs steps within the budget and collects the report."""

    def __init__(self, budget):
        self.start = time.monotonic()
        self.budget = budget
        self.steps = {}

    def step(self, name, command, timeout, env=None):
        if time.monotonic() - self.start > self.budget:
            self.steps[name] = {"command": " ".join(map(str, command)), "returncode": "skipped",
                                "reason": f"past the {self.budget} s budget"}
            return self.steps[name]
        print(f"[gpu_check] {name}: {' '.join(map(str, command))}", flush=True)
        self.steps[name] = _run(command, timeout, env)
        print(f"[gpu_check] {name}: {self.steps[name]['returncode']} in "
              f"{self.steps[name]['seconds']} s", flush=True)
        return self.steps[name]

    def passed(self):
        return all(s["returncode"] in (0, "skipped") for s in self.steps.values())


def _benchmark(check, scratch, precision):
    output = os.path.join(scratch, f"benchmark_{precision}.json")
    result = check.step(f"benchmark_{precision}", [
        sys.executable, "tools/benchmark.py", "--source_size=1280,720",
        "--target_size=1024,512", "--eval_size=1024,512", "--jit=both",
        f"--mixed_precision={precision}", "--warmup=1", "--iterations=3",
        f"--output_json={output}"], timeout=900)
    if os.path.exists(output):
        with open(output, encoding="utf-8") as f:
            result["results"] = json.load(f)


def _mirrored(check, scratch, num_gpus):
    result = check.step("mirrored_demo", [
        sys.executable, "-m", "advent_tf.train", "--flagfile=configs/demo.flags",
        "--strategy=mirrored", f"--batch_size={4 * num_gpus}", "--num_steps=40",
        "--lr_horizon=240", "--nocompare_source_only",
        f"--demo_data_dir={scratch}/demo_data",
        f"--source_pattern={scratch}/demo_data/source/train-*.tfrecord",
        f"--target_pattern={scratch}/demo_data/target/train-*.tfrecord",
        f"--eval_pattern={scratch}/demo_data/target/val-*.tfrecord",
        f"--train_dir={scratch}/mirrored", "--log_every=10"], timeout=600)
    rates = [float(part.split()[0]) for part in result.get("output_tail", "").split("  ")
             if part.endswith("steps/s")]
    result["steps_per_second"] = rates[-1] if rates else None


def main(argv):
    del argv
    report = {"machine": {"python": platform.python_version(), "platform": platform.platform()}}
    names, tf_gpus, reason = find_gpus()
    report["machine"].update(gpus=names, tensorflow_gpus=tf_gpus)
    output = pathlib.Path(_OUTPUT.value)
    if reason:
        report.update(gpu=False, reason=reason)
        output.write_text(json.dumps(report, indent=1) + "\n")
        print(f"gpu_check: no GPU to check: {reason}. Report: {output}", file=sys.stderr)
        return 2
    report["gpu"] = True
    check = Check(_BUDGET.value)
    with tempfile.TemporaryDirectory() as scratch:
        if _INSTALL.value:
            check.step("install", [sys.executable, "-m", "pip", "install", "-q", "-e",
                                   ".[test]"], timeout=600)
        check.step("tests", [sys.executable, "-m", "pytest", "-q", *GPU_TESTS], timeout=900)
        for precision in PRECISIONS:
            _benchmark(check, scratch, precision)
        _mirrored(check, scratch, tf_gpus)
    report["steps"] = check.steps
    report["seconds"] = round(time.monotonic() - check.start, 1)
    output.write_text(json.dumps(report, indent=1) + "\n")
    print(f"gpu_check: {'passed' if check.passed() else 'FAILED'}; report: {output}")
    return 0 if check.passed() else 1


if __name__ == "__main__":
    app.run(main)
