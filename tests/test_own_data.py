"""A user's own dataset with any class count, through all five commands.

convert (tools/convert_to_tfrecord.py, folder layout, --class_names) ->
train -> evaluate -> predict -> export, then the SavedModel served in
process. evaluate, predict and export get nothing but the run directory: the
network, the class names and the input size come from its config.json.
"""

import json
import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import tensorflow as tf

from advent_tf.inference import visualize
import train_helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = (40, 56)  # (height, width) of the images
IGNORED_RAW_ID = 200


def _make_folder_dataset(root, num_classes, count=6, seed=0):
    """images/NAME.png and labels/NAME.png (raw ids 10 + class, and an ignored id), a label map."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (num_classes, 3))
    (root / "images" / "sub").mkdir(parents=True)
    (root / "labels" / "sub").mkdir(parents=True)
    for index in range(count):
        name = f"sub/frame_{index}" if index % 2 else f"frame_{index}"
        ids = rng.integers(0, num_classes, (SIZE[0] // 8, SIZE[1] // 8)).repeat(8, 0).repeat(8, 1)
        image = np.clip(colours[ids] + rng.normal(0, 12, ids.shape + (3,)), 0, 255)
        raw = (ids + 10).astype(np.uint8)
        raw[:4] = IGNORED_RAW_ID
        PIL.Image.fromarray(image.astype(np.uint8)).save(root / "images" / f"{name}.png")
        PIL.Image.fromarray(raw).save(root / "labels" / f"{name}.png")
    lines = [f"{10 + c} {c}" for c in range(num_classes)] + [f"{IGNORED_RAW_ID} 255"]
    (root / "map.txt").write_text("\n".join(lines) + "\n")


def _run(module_or_script, *args):
    command = ([sys.executable, module_or_script] if module_or_script.endswith(".py")
               else [sys.executable, "-m", module_or_script])
    result = subprocess.run([*command, *args], capture_output=True, text=True, cwd=ROOT,
                            env=train_helpers.train_env(), timeout=400)
    assert result.returncode == 0, (args, result.stdout[-2000:], result.stderr[-4000:])
    return result


@pytest.mark.parametrize("num_classes, method", [(5, "minent"), (11, "advent")])
def test_own_dataset_through_every_command(num_classes, method, tmp_path):
    names = [f"thing {c}" for c in range(num_classes)]
    data = tmp_path / "mine"
    _make_folder_dataset(data, num_classes)
    records = tmp_path / "tfrecords"
    convert = os.path.join(ROOT, "tools", "convert_to_tfrecord.py")
    common = ["--dataset=folder", f"--root={data}", f"--label_map={data / 'map.txt'}",
              f"--num_classes={num_classes}", f"--class_names={','.join(names)}",
              f"--output_dir={records}", "--num_shards=2", "--num_workers=1"]
    _run(convert, *common, "--split=train")
    _run(convert, *common, "--split=target", "--nolabels")

    # train: the class names come from the source split's manifest.
    train_dir = tmp_path / "run"
    size = f"{SIZE[1]},{SIZE[0]}"
    result = _run("advent_tf.train", f"--source_pattern={records}/train-*.tfrecord",
                  f"--target_pattern={records}/target-*.tfrecord",
                  f"--eval_pattern={records}/train-*.tfrecord", f"--num_classes={num_classes}",
                  "--backbone=resnet_mini", f"--method={method}", f"--source_size={size}",
                  f"--target_size={size}", f"--eval_size={size}", "--num_steps=2",
                  "--batch_size=2", "--learning_rate=0.01", "--lr_horizon=10",
                  f"--train_dir={train_dir}", "--image_summary_every=1", "--log_every=1")
    assert names[-1] in result.stdout  # the final evaluation's table
    recorded = json.loads((train_dir / "config.json").read_text())
    assert recorded["model"]["class_names"] == names
    assert recorded["data"]["eval_size"] == [SIZE[1], SIZE[0]]

    # evaluate: nothing but the run (network, classes, size from config.json).
    result = _run("advent_tf.evaluate", f"--train_dir={train_dir}",
                  f"--eval_pattern={records}/train-*.tfrecord",
                  f"--output_dir={tmp_path / 'eval'}")
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert list(results["summary"]["iou"]) == names
    assert results["eval_size"] == [SIZE[1], SIZE[0]]
    assert results["backbone"] == "resnet_mini" and results["num_classes"] == num_classes
    assert all(name in result.stdout for name in names)
    assert results["checkpoints"] == [str(train_dir / "checkpoints" / "ckpt-2")]

    # predict: colour maps in the N-class palette.
    predictions = tmp_path / "predictions"
    _run("advent_tf.predict", f"--train_dir={train_dir}", f"--inputs={data / 'images'}",
         f"--output_dir={predictions}")
    colour_file = predictions / "sub" / "frame_1_color.png"
    colours = np.asarray(PIL.Image.open(colour_file))
    assert colours.shape == SIZE + (3,)
    palette = {tuple(c) for c in visualize.palette(num_classes)}
    assert {tuple(c) for c in colours.reshape(-1, 3)} <= palette

    # export, then serve the SavedModel: same map as predict, the run's names and size.
    export_dir = tmp_path / "serving"
    _run("advent_tf.export", f"--train_dir={train_dir}", f"--export_dir={export_dir}")
    loaded = tf.saved_model.load(str(export_dir / "1"))
    assert [n.decode() for n in loaded.class_names.numpy()] == names
    assert tuple(loaded.model_size.numpy()) == SIZE
    image_bytes = (data / "images" / "sub" / "frame_1.png").read_bytes()
    outputs = loaded.signatures["serving_default"](image_bytes=tf.constant([image_bytes]))
    class_map = outputs["class_map"][0].numpy()
    assert class_map.shape == SIZE and class_map.max() < num_classes
    np.testing.assert_array_equal(visualize.colorize(class_map, num_classes), colours)


def test_a_network_flag_that_disagrees_with_the_run_is_refused(tmp_path):
    """--num_classes=19 for a run trained with 5 classes: a usage error naming both."""
    from advent_tf.experiment import config
    from advent_tf.experiment import run_dir

    train_dir = tmp_path / "run"
    run_dir.write(str(train_dir), config.from_values(dict(
        num_classes=5, class_names=tuple("abcde"), backbone="resnet_mini")))
    result = subprocess.run(
        [sys.executable, "-m", "advent_tf.export", f"--train_dir={train_dir}",
         "--num_classes=19", f"--export_dir={tmp_path / 'serving'}"],
        capture_output=True, text=True, cwd=ROOT, env=train_helpers.train_env(), timeout=120)
    assert result.returncode != 0
    assert "--num_classes=19" in result.stderr and "trained with --num_classes=5" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "serving").exists()
