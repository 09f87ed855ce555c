"""End-to-end tests of `python -m advent_tf.predict` (checkpoint, SavedModel) and the pictures."""

import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

from advent_tf.core import constants
from advent_tf.inference import image_files
from advent_tf.inference import segment
from advent_tf.inference import saved_model
from advent_tf.data import labels
from advent_tf.inference import visualize
from advent_tf.models import build_segmenter


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Two images of different sizes (one in a subfolder), a corrupt one, weights and an export."""
    root = tmp_path_factory.mktemp("predict")
    rng = np.random.default_rng(0)
    (root / "images" / "city").mkdir(parents=True)
    PIL.Image.fromarray(rng.integers(0, 256, (20, 36, 3), np.uint8)).save(root / "images" / "a.png")
    PIL.Image.fromarray(rng.integers(0, 256, (18, 30, 3), np.uint8)).save(
        root / "images" / "city" / "b.jpg")
    (root / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    model = build_segmenter("resnet_tiny", 16, False)
    model.save_weights(str(root / "model.weights.h5"))
    saved_model.export([(model, 1.0)], labels.class_names(16), (16, 32), str(root / "export"))
    return root


def _predict(*args):
    return subprocess.run([sys.executable, "-m", "advent_tf.predict", *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("source", ["checkpoint", "saved_model"])
def test_writes_three_pngs_per_image_and_skips_the_bad_one(workdir, source):
    out = workdir / f"out_{source}"
    model_args = (["--saved_model", str(workdir / "export")] if source == "saved_model" else
                  [f"--checkpoints={workdir / 'model.weights.h5'}", "--backbone=resnet_tiny",
                   "--num_classes=16", "--nomulti_level", "--image_size=32,16"])
    result = _predict(*model_args, f"--inputs={workdir / 'images'},{workdir / 'missing.png'}",
                      f"--output_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 image(s) segmented" in result.stdout and "2 skipped" in result.stdout
    assert "broken.png" in result.stderr and "missing.png" in result.stderr
    if sys.platform.startswith("linux"):  # glibc: CPU inference, tensors from malloc.
        assert ("Host memory: one_arena, system_allocator, large_blocks_mapped."
                in result.stderr)
    for name, size in (("a", (36, 20)), (os.path.join("city", "b"), (30, 18))):
        for kind in ("color", "entropy", "overlay"):
            with PIL.Image.open(out / f"{name}_{kind}.png") as image:
                assert image.size == size and image.mode == "RGB"
    colours = np.asarray(PIL.Image.open(out / "a_color.png")).reshape(-1, 3)
    allowed = {tuple(c) for c in visualize.palette(16)}
    assert {tuple(c) for c in colours} <= allowed
    if source == "checkpoint":
        # The network saw PIL's bicubic resize of the image (the reference's), not TF's.
        model = build_segmenter("resnet_tiny", 16, False)
        model.load_weights(str(workdir / "model.weights.h5"))
        image = PIL.Image.open(workdir / "images" / "a.png")
        resized = np.asarray(image.resize((32, 16), PIL.Image.BICUBIC))[None]
        # The whole-map path (with probabilities) against the CLI's blocked one.
        maps = segment.maps_of_resized([(model, 1.0)], resized, (20, 36), True)
        expected = visualize.colorize(maps["class_map"].numpy()[0], 16)
        np.testing.assert_array_equal(np.asarray(PIL.Image.open(out / "a_color.png")), expected)


def test_exit_status_when_nothing_can_be_read(workdir):
    result = _predict("--saved_model", str(workdir / "export"),
                      f"--inputs={workdir / 'images' / 'broken.png'}",
                      f"--output_dir={workdir / 'none'}")
    assert result.returncode == 1 and "0 image(s) segmented" in result.stdout


def test_sixteen_class_maps_use_the_19_class_colours():
    class_map = np.array([[0, 9, 13, 15, 255]])  # 16-class ids: road, sky, bus, bicycle, ignore.
    rgb = visualize.colorize(class_map, 16)
    expected = constants.CITYSCAPES_PALETTE[[0, 10, 15, 18]]
    np.testing.assert_array_equal(rgb[0, :4], expected)
    np.testing.assert_array_equal(rgb[0, 4], [0, 0, 0])
    ramp = visualize.entropy_image(np.array([[0.0, 0.5, 1.0]]))
    assert ramp[0, 0].sum() < ramp[0, 1].sum() < ramp[0, 2].sum()


def test_pictures_are_rendered_a_block_of_rows_at_a_time_with_the_whole_values():
    rng = np.random.default_rng(0)
    # 600 rows: two whole blocks of 256 and a short one.
    entropy = rng.uniform(-0.1, 1.1, (600, 7)).astype(np.float32)
    position = np.clip(entropy, 0, 1) * 4
    low = np.minimum(np.floor(position), 3).astype(int)
    fraction = (position - low)[..., None]
    ramp = np.array([(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)],
                    np.float32)
    expected = np.round((1 - fraction) * ramp[low] + fraction * ramp[low + 1]).astype(np.uint8)
    np.testing.assert_array_equal(visualize.entropy_image(entropy), expected)
    np.testing.assert_array_equal(visualize.entropy_image(np.array([[0.0, 1.0, 0.125]])),
                                  [[[0, 0, 4], [252, 255, 164], [44, 8, 57]]])
    image, colours = rng.integers(0, 256, (2, 600, 7, 3), np.uint8)
    blend = 0.7 * image.astype(np.float32) + 0.3 * colours.astype(np.float32)
    np.testing.assert_array_equal(visualize.overlay(image, colours, 0.3),
                                  np.round(blend).astype(np.uint8))


def test_inputs_sharing_a_stem_never_share_an_output(tmp_path):
    """a.png and a.jpg in one folder, and the same relative path under two folders."""
    for folder in ("one", "two"):
        (tmp_path / folder / "sub").mkdir(parents=True)
        for name in ("a.png", "a.jpg", "b.png", "sub/c.png"):
            (tmp_path / folder / name).write_bytes(b"")
    (tmp_path / "notes.txt").write_bytes(b"")
    inputs = [str(tmp_path / "one"), str(tmp_path / "two"), str(tmp_path / "one" / "b.png")]
    found = image_files.list_images(inputs)
    names = [name for _, name in found]
    assert len(set(names)) == len(names) == 9, names
    assert names[:4] == ["a_jpg", "a_png", "b_png", os.path.join("sub", "c_png")]
    assert names[4:] == ["a_jpg_2", "a_png_2", "b_png_2", os.path.join("sub", "c_png_2"),
                         "b_png_3"]
    # A name unique among the inputs keeps the plain stem.
    assert image_files.list_images([str(tmp_path / "one" / "sub")]) == [
        (str(tmp_path / "one" / "sub" / "c.png"), "c")]
