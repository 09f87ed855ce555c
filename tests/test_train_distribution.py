"""Losses are scaled per replica so that 2 replicas make the same update as 1 device."""

import json

import two_cpus


def test_mirrored_two_replicas_match_one_device():
    stdout = two_cpus.run(two_cpus.TESTS_DIR / "distribution_check.py",
                          "source_only", "minent", "advent", timeout=600)
    differences = json.loads(stdout.strip().splitlines()[-1])
    assert set(differences) == {"source_only", "minent", "advent"}
    for method, (relative, discriminator_steps) in differences.items():
        # float32 sums in a different order: agreement to round-off, not exact.
        assert relative < 1e-4, (method, relative)
        # Discriminators: within 5% of one Adam step (round-off on near-zero
        # gradients, amplified by Adam's normalisation).
        assert discriminator_steps < 0.05, (method, discriminator_steps)
