"""Losses are scaled per replica so that 2 replicas make the same update as 1 device."""

import json
import os
import subprocess
import sys


def test_mirrored_two_replicas_match_one_device():
    script = os.path.join(os.path.dirname(__file__), "distribution_check.py")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, script, "source_only", "minent", "advent"],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    differences = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(differences) == {"source_only", "minent", "advent"}
    for method, (relative, discriminator_steps) in differences.items():
        # float32 sums in a different order: agreement to round-off, not exact.
        assert relative < 1e-4, (method, relative)
        # Discriminators: within 5% of one Adam step (round-off on near-zero
        # gradients, amplified by Adam's normalisation).
        assert discriminator_steps < 0.05, (method, discriminator_steps)
