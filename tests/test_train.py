"""End-to-end training through `python -m advent_tf.train` on tiny demo-format data."""

import glob
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from advent_tf import models
from advent_tf.data import manifest
import train_helpers


@pytest.fixture(scope="module")
def patterns(tmp_path_factory):
    return train_helpers.make_tiny_data(str(tmp_path_factory.mktemp("tiny_data")))


@pytest.fixture(scope="module")
def prior_file(patterns, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("prior") / "prior.json")
    source_dir = os.path.dirname(patterns["source_train"])
    prior = manifest.class_prior_from_manifest(source_dir, "train")
    manifest.save_class_prior(prior, [str(i) for i in range(19)], path)
    return path


def _segmenter_weights(path, multi_level=True):
    """The segmenter's weights in a training checkpoint, restored the way evaluation does."""
    model = models.build_segmenter("resnet_mini", 19, multi_level)
    tf.train.Checkpoint(segmenter=model).restore(path).expect_partial().assert_existing_objects_matched()
    return [w.numpy() for w in model.weights]


CASES = {
    # Also the reference's per-tensor update counts (the duplicated-parameter quirk).
    "source_only": (dict(method="source_only", backbone_update_repeats="reference"),
                    ["loss_seg_main", "loss_seg_aux"]),
    "minent_er": (dict(method="minent", entropy_top_fraction=0.3), ["loss_ent_main"]),
    "minent_cp": (dict(method="minent", class_prior="PRIOR"), ["loss_ent_main", "loss_cp"]),
    "advent": (dict(method="advent"), ["loss_adv_main", "loss_adv_aux", "loss_d_main",
                                       "loss_d_aux", "d_accuracy_main"]),
    "advent_cp_single_level": (dict(method="advent", class_prior="PRIOR", multi_level=False),
                               ["loss_adv_main", "loss_d_main", "loss_cp"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_method_trains_end_to_end(case, patterns, prior_file, tmp_path):
    overrides, expected_logs = CASES[case]
    overrides = {k: (prior_file if v == "PRIOR" else v) for k, v in overrides.items()}
    if overrides.get("multi_level") is False:
        overrides["nomulti_level"] = True
        del overrides["multi_level"]
    train_dir = str(tmp_path / "run")
    args = train_helpers.tiny_flags(patterns, train_dir, eval_pattern=patterns["target_val"],
                                    eval_size="64,32", **overrides)
    result = train_helpers.run_train(args)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stderr
    for name in expected_logs:
        assert name in log, f"{name} not logged:\n{log[-2000:]}"
    assert "step 2/2" in log and "steps/s" in log and "ETA" in log
    assert "UserWarning" not in log, log[-2000:]  # e.g. Keras' ignored `shuffle=True`.
    assert "mIoU" in result.stdout
    if sys.platform.startswith("linux"):  # glibc; a CPU-only run shares one arena.
        assert "Host memory: one_arena." in log, log[-2000:]
        # Once, after the first step (`callbacks.ReleaseFreeHeap`).
        assert len(re.findall(r"Host memory: \d+ MiB of free heap returned to the system "
                              r"after the first step\.", log)) == 1, log[-2000:]
    # Both steps checkpointed; the segmenter's weights moved and stayed finite.
    ckpt_dir = os.path.join(train_dir, "checkpoints")
    first, second = (_segmenter_weights(os.path.join(ckpt_dir, f"ckpt-{i}"),
                                        overrides.get("nomulti_level") is None) for i in (1, 2))
    assert any(not np.array_equal(a, b) for a, b in zip(first, second))
    assert all(np.all(np.isfinite(w)) for w in second)
    names = tf.train.load_checkpoint(os.path.join(ckpt_dir, "ckpt-2")).get_variable_to_shape_map()
    assert any(k.startswith("optimizer/_variables/") for k in names)  # SGD momentum buffers
    if case.startswith("advent"):
        assert any(k.startswith("d_optimizer_main/_variables/") for k in names)  # Adam slots
    assert glob.glob(os.path.join(train_dir, "logs", "events.out.tfevents.*"))


def test_tensorboard_has_scalars_images_flags_and_periodic_eval(patterns, tmp_path):
    """Plain MinEnt; also covers --eval_every (target mIoU during training)."""
    train_dir = str(tmp_path / "run")
    result = train_helpers.run_train(train_helpers.tiny_flags(
        patterns, train_dir, method="minent", eval_pattern=patterns["target_val"],
        eval_size="64,32", eval_every=1))
    assert result.returncode == 0, result.stderr[-3000:]
    tags = set()
    event_files = glob.glob(os.path.join(train_dir, "logs", "events.out.tfevents.*"))
    assert len(event_files) == 1, event_files  # one summary writer per run
    for event_file in event_files:
        for event in tf.compat.v1.train.summary_iterator(event_file):
            tags.update(v.tag for v in event.summary.value)
    for tag in ("loss_seg_main", "loss_ent_main", "loss_ent_aux", "lr", "config", "source/input",
                "source/prediction", "source/ground_truth", "target/prediction",
                "target/entropy", "eval/mIoU", "eval/IoU/road"):
        assert tag in tags, f"{tag} missing from {sorted(tags)}"


@pytest.mark.parametrize("overrides, message", [
    (dict(bogus_flag=1), "Unknown command line flag 'bogus_flag'"),
    (dict(num_classes=16), "has 19 classes"),
    (dict(source_pattern="/nonexistent/train-*.tfrecord"), "matches no file"),
    (dict(method="advent", entropy_top_fraction=0.3), "applies to --method=minent only"),
    (dict(source_size="64"), "--source_size must be WIDTH,HEIGHT"),
    (dict(learning_rate=-1), "learning_rate"),
    (dict(backbone_update_repeats=0), "--backbone_update_repeats=0: 'reference', 'deduplicated'"),
    (dict(backbone="vgg16", backbone_update_repeats="reference"),
     "the reference code has no vgg16"),
    (dict(init_checkpoint="/nonexistent/init.weights.h5"),
     "--init_checkpoint: /nonexistent/init.weights.h5: no such weights file"),
])
def test_bad_flags_fail_before_training(overrides, message, patterns, tmp_path):
    train_dir = str(tmp_path / "run")
    result = train_helpers.run_train(train_helpers.tiny_flags(patterns, train_dir, **overrides))
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-2000:]
    assert not os.path.exists(os.path.join(train_dir, "checkpoints"))


def test_init_checkpoint_loads_every_weight_and_refuses_another_network(patterns, tmp_path):
    # Learning rate 0 and frozen BN: the saved step-1 state is the initial one.
    flags = dict(method="source_only", num_steps=1, learning_rate=0.0, bn_mode="frozen",
                 image_summary_every=0)
    init = models.build_segmenter("resnet_mini", 19, True)
    for variable in init.weights:  # not what --seed would draw
        variable.assign(np.random.default_rng(7).normal(size=variable.shape) * 0.05 + 1.0)
    init_file = str(tmp_path / "init.weights.h5")
    init.save_weights(init_file)
    expected = [w.numpy() for w in init.weights]

    def train_from(init_checkpoint, train_dir):
        result = train_helpers.run_train(train_helpers.tiny_flags(
            patterns, train_dir, init_checkpoint=init_checkpoint, **flags))
        assert result.returncode == 0, result.stderr[-3000:]
        got = _segmenter_weights(os.path.join(train_dir, "checkpoints", "ckpt-1"))
        for value, want in zip(got, expected, strict=True):
            np.testing.assert_array_equal(value, want)

    first_dir = str(tmp_path / "from_h5")
    train_from(init_file, first_dir)
    # A training run's directory works as an initialisation too (its newest checkpoint).
    train_from(first_dir, str(tmp_path / "from_run"))
    # Resuming restores the checkpoint over the initialisation: the init file
    # is no longer needed.
    os.rename(init_file, init_file + ".moved")
    result = train_helpers.run_train(train_helpers.tiny_flags(
        patterns, first_dir, init_checkpoint=init_file, **dict(flags, num_steps=2)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resumed from" in result.stderr
    # Weights of a 16-class network: refused before training, naming the file.
    other_file = str(tmp_path / "sixteen.weights.h5")
    models.build_segmenter("resnet_mini", 16, True).save_weights(other_file)
    third_dir = str(tmp_path / "refused")
    result = train_helpers.run_train(train_helpers.tiny_flags(
        patterns, third_dir, init_checkpoint=other_file, **flags))
    assert result.returncode != 0
    assert f"--init_checkpoint: {other_file}" in result.stderr, result.stderr[-3000:]
    assert "resnet_mini, 19 classes, multi-level" in result.stderr
    assert "Traceback" not in result.stderr
    assert not os.path.exists(os.path.join(third_dir, "checkpoints"))


def test_configs_parse():
    """Every shipped flagfile names only existing flags with valid values."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    configs = sorted(glob.glob(os.path.join(root, "configs", "*.flags")))
    assert len(configs) == 7
    # Each parses and is a valid experiment: config_from_flags refuses none of
    # them (e.g. none trains past its poly horizon).
    script = ("import sys; from absl import flags; from advent_tf import train\n"
              "for path in sys.argv[1:]:\n"
              "    flags.FLAGS.unparse_flags(); flags.FLAGS(['train', '--flagfile=' + path])\n"
              "    cfg = train.config_from_flags()\n"
              "    print(path, cfg.method.method, cfg.model.num_classes, cfg.model.backbone,\n"
              "          cfg.optim.backbone_update_repeats)\n")
    result = subprocess.run([sys.executable, "-c", script, *configs], capture_output=True,
                            text=True, cwd=root, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert len(lines) == len(configs)
    assert any(l.endswith("synthia.flags advent 16 resnet101 reference") for l in lines), lines
    assert any(l.endswith("gta_minent_er.flags minent 19 resnet101 reference") for l in lines)
    assert any(l.endswith("synthia_advent_cp.flags advent 16 vgg16 deduplicated") for l in lines)


def test_compare_source_only_trains_the_baseline_and_reports_the_gain(patterns, tmp_path):
    """The demo's report: the adapted model next to source-only on the same data and budget."""
    train_dir = tmp_path / "run"
    result = train_helpers.run_train(train_helpers.tiny_flags(
        patterns, str(train_dir), method="minent", eval_pattern=patterns["target_val"],
        eval_size="64,32", image_summary_every=0, compare_source_only=True))
    assert result.returncode == 0, result.stderr[-3000:]
    report = result.stdout[result.stdout.index("same data, steps and seed"):]
    baseline, adapted, gain = (float(re.search(rf"{name}\s+(\S+)", report).group(1))
                               for name in ("source-only", "minent", "gain"))
    assert gain == pytest.approx(adapted - baseline, abs=0.011)
    recorded = json.loads((train_dir / "source_only" / "config.json").read_text())
    assert recorded["method"]["method"] == "source_only"
    assert recorded["run"]["num_steps"] == 2 and recorded["run"]["seed"] == 3
    assert (train_dir / "source_only" / "checkpoints" / "ckpt-2.index").exists()
    assert (train_dir / "checkpoints" / "ckpt-2.index").exists()
