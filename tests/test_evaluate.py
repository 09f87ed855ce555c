"""End-to-end tests of `python -m advent_tf.evaluate` and its library, on tiny demo data."""

import json
import os
import re
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from advent_tf.experiment import segmenter_weights
from advent_tf.inference import evaluation_protocol
from advent_tf.core import ops
from advent_tf.inference import segment
from advent_tf.inference import sweep
from advent_tf.data import demo
from advent_tf.data import pipeline
from advent_tf.models import build_segmenter, split_outputs

EVAL_SIZE = (16, 32)  # (height, width) the network sees; labels stay at 24x48.


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Tiny labelled val split (two shards of one image), checkpoints 2 and 4, a .weights.h5."""
    root = tmp_path_factory.mktemp("evaluate")
    pattern = demo.make_demo_data(str(root / "data"), splits=(("target", "val", 2, True),),
                                  image_size=(24, 48), num_shards=2)["target_val"]
    model = build_segmenter("resnet_tiny", 19, True)
    checkpoint = tf.train.Checkpoint(segmenter=model, optimizer=keras.optimizers.SGD(0.1))
    manager = tf.train.CheckpointManager(checkpoint, str(root / "run" / "checkpoints"), None)
    for step in (2, 4):
        for variable in model.trainable_variables:
            variable.assign_add(tf.random.stateless_normal(variable.shape, [step, 0], stddev=0.02))
        manager.save(checkpoint_number=step)
    model.save_weights(str(root / "converted.weights.h5"))
    return {"root": root, "pattern": pattern, "run": str(root / "run")}


def _cli(*args):
    result = subprocess.run(
        [sys.executable, "-m", "advent_tf.evaluate", "--backbone=resnet_tiny",
         f"--eval_size={EVAL_SIZE[1]},{EVAL_SIZE[0]}", *args],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def _manual_hist(paths, weights, pattern):
    """The reference protocol restated with numpy: weighted upsampled logits, argmax, bincount."""
    models = []
    for path in paths:
        model = build_segmenter("resnet_tiny", 19, True)
        segmenter_weights.load_weights(model, path)
        models.append(model)
    hist = np.zeros((19, 19), np.int64)
    for batch in pipeline.make_eval_dataset(pattern, EVAL_SIZE):
        label = batch["label"].numpy()
        logits = sum(w * ops.resize_bilinear_align_corners(
            split_outputs(m(batch["image"]))[1], label.shape[1:3]).numpy()
            for m, w in zip(models, weights))
        valid = label < 19
        hist += np.bincount(19 * label[valid] + logits.argmax(-1)[valid],
                            minlength=361).reshape(19, 19)
    return hist


def test_ensemble_cli_matches_the_reference_protocol(workdir):
    ckpt = os.path.join(workdir["run"], "checkpoints", "ckpt-2")
    weights_file = str(workdir["root"] / "converted.weights.h5")
    out = workdir["root"] / "ensemble"
    log = _cli(f"--checkpoints={ckpt},{weights_file}", "--ensemble_weights=0.25,0.75",
               f"--eval_pattern={workdir['pattern']}", f"--output_dir={out}")
    results = json.loads((out / "results.json").read_text())
    expected = _manual_hist([ckpt, weights_file], [0.25, 0.75], workdir["pattern"])
    np.testing.assert_array_equal(results["summary"]["confusion_matrix"], expected)
    assert results["summary"]["num_pixels"] == expected.sum() > 0
    assert results["ensemble_weights"] == [0.25, 0.75]
    assert "traffic light" in log and "mIoU" in log
    counts = _progress_counts(log)
    assert ("2", "2") in counts and {total for _, total in counts} == {"2"}
    assert os.listdir(out / "tensorboard")
    if sys.platform.startswith("linux"):  # glibc: CPU inference, tensors from malloc.
        assert "Host memory: one_arena, system_allocator, large_blocks_mapped." in log


def _progress_counts(log):
    """The (done, total) pairs that the progress bar (Keras' Progbar, "1/2 \u2501...") printed."""
    plain = re.sub("\x1b\\[[0-9;]*m", "", log)  # Without its colour codes.
    return set(re.findall("([0-9]+)/([0-9]+) \u2501", plain))


def test_one_shard_of_a_split_is_scored_and_counted_alone(workdir):
    # The split's manifest counts both shards; the progress bar must count the one selected.
    weights_file = str(workdir["root"] / "converted.weights.h5")
    shard = workdir["pattern"].replace("*", "*-00001-of-00002")
    out = workdir["root"] / "one_shard"
    log = _cli(f"--checkpoints={weights_file}", f"--eval_pattern={shard}", f"--output_dir={out}")
    results = json.loads((out / "results.json").read_text())
    expected = _manual_hist([weights_file], [1.0], shard)
    assert 0 < expected.sum() < _manual_hist([weights_file], [1.0], workdir["pattern"]).sum()
    np.testing.assert_array_equal(results["summary"]["confusion_matrix"], expected)
    assert _progress_counts(log) == {("1", "1")}


@pytest.mark.parametrize("rows", [1, 7, None])
def test_blocked_prediction_is_the_argmax_of_the_whole_upsampled_map(rows):
    """`ensemble_maps` a few label rows at a time: the whole map's classes and entropy."""
    keras.utils.set_random_seed(3)
    members = [(build_segmenter("resnet_tiny", 19, True), 0.25),
               (build_segmenter("resnet_tiny", 19, True), 0.75)]
    for index, variable in enumerate(v for m, _ in members for v in m.trainable_variables):
        # Freshly built, one class wins everywhere; perturbed, the maps vary (more
        # would saturate the softmax: an entropy of 0 everywhere).
        variable.assign_add(tf.random.stateless_normal(variable.shape, [index, 1], stddev=0.06))
    images = tf.random.stateless_normal([2, 24, 48, 3], [3, 0])
    predict = tf.function(
        lambda x, size: evaluation_protocol.ensemble_prediction(members, x, size, rows))
    segment_maps = tf.function(lambda x, size: evaluation_protocol.ensemble_maps(
        members, x, size, segment.pixel_maps, rows))
    # XLA needs every block of one shape (sizes known when it compiles).
    compiled = tf.function(lambda x: evaluation_protocol.ensemble_prediction(
        members, x, (97, 193), rows), jit_compile=True)
    for size in [(97, 193), (129, 64), (1, 5)]:  # Last blocks short, whole, a single row.
        whole = segment.segmentation_maps(
            evaluation_protocol.ensemble_logits(members, images, size))
        assert size == (1, 5) or (len(np.unique(whole["class_map"].numpy())) > 3
                                  and np.ptp(whole["entropy"]) > 0.2)
        np.testing.assert_array_equal(predict(images, tf.constant(size)).numpy(),
                                      whole["class_map"].numpy())
        maps = segment_maps(images, tf.constant(size))
        np.testing.assert_array_equal(maps["class_map"].numpy(), whole["class_map"].numpy())
        np.testing.assert_allclose(maps["entropy"].numpy(), whole["entropy"].numpy(),
                                   rtol=1e-5, atol=1e-6)
        if size == (97, 193):
            np.testing.assert_array_equal(compiled(images).numpy(), whole["class_map"].numpy())


def test_default_blocks_are_small_on_cpu_and_whole_maps_on_a_gpu(monkeypatch):
    """Eagerly, `pixel_maps` runs once per block: count them with and without a GPU."""
    members = [(build_segmenter("resnet_tiny", 19, True), 1.0)]
    images = tf.random.stateless_normal([1, 16, 32, 3], [4, 0])
    blocks = []

    def argmax(logits):
        blocks.append(logits.shape[1])
        return {"class_map": tf.argmax(logits, axis=-1)}

    size = (300, 200)  # 2 MiB hold 137 rows of 200 x 19: three blocks, the last padded.
    evaluation_protocol.ensemble_maps(members, images, size, argmax)
    assert blocks == [137] * 3, blocks
    blocks.clear()
    monkeypatch.setattr(tf.config, "list_logical_devices",
                        lambda kind=None: ["/device:GPU:0"] if kind == "GPU" else [])
    evaluation_protocol.ensemble_maps(members, images, size, argmax)
    assert blocks == [300], blocks


def test_best_mode_resumes_an_interrupted_sweep(workdir):
    """A cache holding ckpt-2 (as an interrupted sweep leaves it): only ckpt-4 is scored."""
    out = workdir["root"] / "sweep"
    settings = {"eval_pattern": workdir["pattern"], "eval_size": [EVAL_SIZE[1], EVAL_SIZE[0]],
                "num_classes": 19, "class_subset": None, "backbone": "resnet_tiny",
                "multi_level": True}
    cached = evaluation_protocol.summarize(np.diag([7.0] + [0.0] * 18))  # mIoU 100: must win.
    sweep.SweepCache(str(out / "sweep.json"), settings).store(
        os.path.join(workdir["run"], "checkpoints", "ckpt-2"), 2, cached)
    log = _cli("--mode=best", f"--train_dir={workdir['run']}", f"--output_dir={out}",
               f"--eval_pattern={workdir['pattern']}")
    assert "2 checkpoints, 1 cached" in log
    assert "ckpt-4: mIoU" in log and "ckpt-2: mIoU" not in log
    results = json.loads((out / "results.json").read_text())
    assert results["best"]["step"] == 2 and results["best"]["summary"] == cached
    assert results["last"]["step"] == 4 and results["last"]["summary"]["num_pixels"] > 0
    assert len(json.loads((out / "sweep.json").read_text())["checkpoints"]) == 2


def test_best_mode_skips_a_damaged_checkpoint_and_names_it(workdir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(workdir["run"], run)
    data_file = run / "checkpoints" / "ckpt-4.data-00000-of-00001"
    data_file.write_bytes(data_file.read_bytes()[:40])
    out = tmp_path / "sweep"
    log = _cli("--mode=best", f"--train_dir={run}", f"--output_dir={out}",
               f"--eval_pattern={workdir['pattern']}")
    assert "ckpt-2: mIoU" in log and "ckpt-4: skipped, cannot be read" in log
    assert f"Skipped {run / 'checkpoints' / 'ckpt-4'}: " in log
    results = json.loads((out / "results.json").read_text())
    assert results["unreadable"] == ["ckpt-4"]
    assert results["best"]["step"] == results["last"]["step"] == 2
    # Nothing cached for it: a repaired file is scored by the next run.
    assert list(json.loads((out / "sweep.json").read_text())["checkpoints"]) == ["ckpt-2"]


def test_run_sweep_after_interruption_scores_only_the_rest(workdir, tmp_path):
    checkpoints = segmenter_weights.list_checkpoints(workdir["run"])
    cache_path = str(tmp_path / "sweep.json")
    calls = []

    def score(prefix, interrupt_at=None):
        if prefix == interrupt_at:
            raise KeyboardInterrupt
        calls.append(os.path.basename(prefix))
        return {"miou": float(len(calls))}

    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(checkpoints, lambda p: score(p, checkpoints[1][1]),
                        sweep.SweepCache(cache_path, {"a": 1}))
    results = sweep.run_sweep(checkpoints, score, sweep.SweepCache(cache_path, {"a": 1}))
    assert calls == ["ckpt-2", "ckpt-4"]
    assert results == {2: {"miou": 1.0}, 4: {"miou": 2.0}}
    assert sweep.best_and_last(results) == (4, 4)
    with pytest.raises(ValueError, match="other settings"):
        sweep.SweepCache(cache_path, {"a": 2})


def test_loading_errors_name_the_file_and_the_flags(workdir, tmp_path):
    ckpt = os.path.join(workdir["run"], "checkpoints", "ckpt-4")
    assert segmenter_weights.resolve(workdir["run"]) == ckpt
    with pytest.raises(FileNotFoundError, match="ckpt-9"):
        segmenter_weights.load_segmenter(ckpt[:-1] + "9", "resnet_tiny", 19, True)
    with pytest.raises(segmenter_weights.CheckpointError, match="--num_classes"):
        segmenter_weights.load_segmenter(ckpt, "resnet_tiny", 16, True)
    truncated = tmp_path / "ckpt-4"
    for suffix in (".index", ".data-00000-of-00001"):
        shutil.copy(ckpt + suffix, str(truncated) + suffix)
    with open(str(truncated) + ".data-00000-of-00001", "r+b") as f:
        f.truncate(40)
    with pytest.raises(segmenter_weights.DamagedCheckpointError, match="ckpt-4: cannot be read"):
        segmenter_weights.load_segmenter(str(truncated), "resnet_tiny", 19, True)
    bad = tmp_path / "bad.weights.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(segmenter_weights.CheckpointError, match="bad.weights.h5"):
        segmenter_weights.load_segmenter(str(bad), "resnet_tiny", 19, True)
    result = subprocess.run(
        [sys.executable, "-m", "advent_tf.evaluate", "--backbone=resnet_tiny",
         f"--checkpoints={ckpt}", "--ensemble_weights=0.5,0.5",
         f"--eval_pattern={workdir['pattern']}"], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "2 ensemble weights for 1" in result.stderr
    assert "Traceback" not in result.stderr


def test_synthia_16_and_13_class_figures():
    table = evaluation_protocol.label_mapping(19, 16)
    assert table[9] == table[14] == table[16] == 255  # terrain, truck, train
    assert table[18] == 15 and table[255] == 255
    assert evaluation_protocol.label_mapping(16, 16) is None
    hist = np.diag(np.arange(1.0, 17.0))
    hist[0, 1] = 3.0  # road pixels predicted as sidewalk: road IoU 1/4, sidewalk 2/5.
    summary = evaluation_protocol.summarize(hist, class_subset=13)
    assert summary["iou"]["road"] == 25.0 and summary["iou"]["sidewalk"] == 40.0
    assert summary["miou"] == pytest.approx((25 + 40 + 1400) / 16)
    assert summary["miou_13"] == pytest.approx((25 + 40 + 1100) / 13)
    assert "mIoU-13" in evaluation_protocol.format_summary(summary)
    with pytest.raises(ValueError):
        evaluation_protocol.summarize(np.eye(19), class_subset=13)
