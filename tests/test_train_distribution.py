"""Losses are scaled per replica so that 2 replicas make the same update as 1 device."""

import json

import pytest

import two_cpus


@pytest.fixture(scope="module")
def differences():
    """Both comparisons, from one process (its start-up and the strategy are the slow part).

    Weights after two optimizer steps for AdvEnt (every term, TorchSGD and both
    Adams: SGD's update is linear in the gradient, so a mis-scaled
    segmentation term shows there at 1e-4); gradients, before any optimizer,
    for the target terms, entropy and adversarial (with the discriminators').
    """
    stdout = two_cpus.run(two_cpus.TESTS_DIR / "distribution_check.py", "advent",
                          "--gradients", "ent", "adv", timeout=900)
    return json.loads(stdout.strip().splitlines()[-1])


def test_mirrored_two_replicas_match_one_device(differences):
    differences = differences["weights"]
    assert set(differences) == {"advent"}
    for method, (relative, discriminator_steps) in differences.items():
        # float32 sums in a different order: agreement to round-off, not exact.
        assert relative < 1e-4, (method, relative)
        # Discriminators: within 5% of one Adam step (round-off on near-zero
        # gradients, amplified by Adam's normalisation).
        assert discriminator_steps < 0.05, (method, discriminator_steps)


def test_mirrored_two_replicas_give_the_one_device_gradients_per_loss_term(differences):
    """Gradients before the optimizer, for F and both discriminators, term by term.

    Adam ignores a gradient's scale, so comparing weights after Adam steps cannot
    see a discriminator loss summed instead of averaged over replicas; plain SGD
    at learning rate 1 makes each weight change equal to the gradient.
    """
    differences = differences["gradients"]
    assert set(differences) == {"ent", "adv"}
    assert set(differences["adv"]) == {"segmenter", "discriminator_main", "discriminator_aux"}
    for term, groups in differences.items():
        for group, relative in groups.items():
            assert relative < 1e-4, (term, group, relative)
