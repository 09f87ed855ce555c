"""tools/gpu_check.py on a machine without a GPU: it says so, writes its report, exits 2."""

import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_without_a_gpu_it_says_so_and_exits_2(tmp_path):
    probe = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True) \
        if pathlib.Path("/usr/bin/nvidia-smi").exists() else None
    if probe is not None and probe.returncode == 0:
        pytest.skip("this machine has an NVIDIA GPU: run tools/gpu_check.py itself")
    output = tmp_path / "report.json"
    result = subprocess.run([sys.executable, str(REPO / "tools" / "gpu_check.py"),
                             f"--output={output}"], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "no GPU to check" in result.stderr and "nvidia-smi" in result.stderr
    report = json.loads(output.read_text())
    assert report["gpu"] is False and report["machine"]["gpus"] == []
    assert report["machine"]["tensorflow_gpus"] == 0
