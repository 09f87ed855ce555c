"""`--jit_compile` and `--mixed_precision` through the real entry point.

Each run is compared with a float32, uncompiled run of the same command: the
losses logged for the first step come from the same initial weights and data
(same seed), so they must agree up to the numerics of the variant.
"""

import glob
import os
import re

import numpy as np
import pytest
import tensorflow as tf

from advent_tf.core import hardware
import train_helpers

# AdvEnt, multi-level: the method with the most moving parts (two
# discriminators, two Adam optimizers, detached maps).
_METHOD = dict(method="advent", num_steps=3, image_summary_every=100)
_LOSSES = ("loss_seg_main", "loss_seg_aux", "loss_adv_main", "loss_adv_aux", "loss_d_main",
           "loss_d_aux")


@pytest.fixture(scope="module")
def patterns(tmp_path_factory):
    return train_helpers.make_tiny_data(str(tmp_path_factory.mktemp("tiny_data")))


def _first_logged_losses(log):
    """{name: value} of the first step line with losses that ProgressLogger wrote."""
    line = next(l for l in log.splitlines()
                if re.search(r"step \d+/\d+ ", l) and "loss_seg_main" in l)
    return {name: float(re.search(rf"{name} (\S+)", line).group(1)) for name in _LOSSES}


def _train(patterns, train_dir, env=None, **overrides):
    result = train_helpers.run_train(
        train_helpers.tiny_flags(patterns, train_dir, **_METHOD, **overrides), env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step 3/3" in result.stderr
    return result.stderr


@pytest.fixture(scope="module")
def float32_losses(patterns, tmp_path_factory):
    return _first_logged_losses(_train(patterns, str(tmp_path_factory.mktemp("fp32") / "run")))


def _final_weights(train_dir):
    reader = tf.train.load_checkpoint(os.path.join(train_dir, "checkpoints", "ckpt-3"))
    # Trainable weights are saved under their optimizer's path, BN's under the segmenter's.
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name.startswith(("segmenter/", "optimizer/_trainable_variables/"))
            and "OPTIMIZER_SLOT" not in name}


def test_jit_compile_compiles_the_train_step_once(patterns, float32_losses, tmp_path):
    # Regression: the losses' own XLA functions, nested in an XLA-compiled
    # step, made XLA take the weights as constants and recompile every step.
    dump_dir = tmp_path / "xla_dump"
    env = train_helpers.train_env(XLA_FLAGS=f"--xla_dump_to={dump_dir}")
    log = _train(patterns, str(tmp_path / "run"), env=env, jit_compile=True)
    step_modules = glob.glob(str(dump_dir / "*one_step_on_data*before_optimizations.txt"))
    assert len(step_modules) == 1, sorted(os.path.basename(p) for p in step_modules)
    got = _first_logged_losses(log)
    for name, want in float32_losses.items():
        # The log prints 4 significant digits; XLA fuses in another order.
        assert got[name] == pytest.approx(want, rel=2e-3), name


@pytest.mark.parametrize("policy, tolerance", [("mixed_bfloat16", 3e-2),
                                               ("mixed_float16", 1e-2)])
def test_mixed_precision_trains_close_to_float32(policy, tolerance, patterns, float32_losses,
                                                 tmp_path):
    train_dir = str(tmp_path / "run")
    log = _train(patterns, train_dir, mixed_precision=policy, allow_emulated_precision=True)
    # Allowed, an emulated policy still says what it costs.
    problem = hardware.precision_problem(policy)
    assert (f"--allow_emulated_precision: {policy}" in log) == (problem is not None), log[-2000:]
    got = _first_logged_losses(log)
    for name, want in float32_losses.items():
        assert got[name] == pytest.approx(want, rel=tolerance), (name, got, float32_losses)
    # Weights stay float32 (only the computation is reduced) and finite.
    weights = _final_weights(train_dir)
    assert sum(n.startswith("optimizer/") for n in weights) > 30
    assert all(w.dtype == np.float32 and np.all(np.isfinite(w)) for w in weights.values())
    if policy == "mixed_float16":
        # Dynamic loss scaling: its scale is part of the checkpointed state.
        names = tf.train.load_checkpoint(
            os.path.join(train_dir, "checkpoints", "ckpt-3")).get_variable_to_shape_map()
        assert any("dynamic_scale" in name for name in names), sorted(names)[:20]


def test_emulated_precision_is_refused_unless_allowed(patterns, tmp_path):
    """mixed_float16 without native float16 (nearly every CPU) stops before anything is written."""
    train_dir = str(tmp_path / "run")
    result = train_helpers.run_train(train_helpers.tiny_flags(
        patterns, train_dir, **_METHOD, mixed_precision="mixed_float16"))
    problem = hardware.precision_problem("mixed_float16")
    if problem is None:  # A CPU with AVX512-FP16 or AMX-FP16: nothing to refuse.
        assert result.returncode == 0, result.stderr[-3000:]
        return
    assert result.returncode != 0
    assert "--mixed_precision=mixed_float16 refused" in result.stderr, result.stderr[-2000:]
    assert "avx512_fp16 or amx_fp16" in result.stderr and "--allow_emulated_precision" in (
        result.stderr)
    assert not os.path.exists(train_dir)
