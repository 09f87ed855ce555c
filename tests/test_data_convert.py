"""The converter tool on tiny datasets built here in their real on-disk layouts,
and the atomic publication of a split, killed at each of its steps."""

import importlib.util
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys

from absl import flags
from absl.testing import flagsaver
import numpy as np
import PIL.Image
import pytest
import tensorflow as tf

from advent_tf.core import constants
from advent_tf.core import preprocessing
from advent_tf.data import tfrecord_writer
from advent_tf.data import transforms
from advent_tf.data import example as example_lib
from advent_tf.data import pipeline
from advent_tf.data import sources

import convert_kill_driver

REPO = pathlib.Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "convert_to_tfrecord.py"
KILL_DRIVER = pathlib.Path(__file__).with_name("convert_kill_driver.py")
H, W = 8, 12


def _load_tool():
    if "convert_to_tfrecord" not in sys.modules:
        spec = importlib.util.spec_from_file_location("convert_to_tfrecord", TOOL)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["convert_to_tfrecord"] = module
    return sys.modules["convert_to_tfrecord"]


def run_tool(capsys=None, **flag_values):
    """Runs the tool's main() with these flags; returns (exit code, stderr)."""
    tool = _load_tool()
    flag_values.setdefault("num_workers", 1)  # In-process: no worker start-up cost.
    argv = ["convert_to_tfrecord"] + [
        f"--{k}={v}" if not isinstance(v, bool) else (f"--{k}" if v else f"--no{k}")
        for k, v in flag_values.items()]
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        flags.FLAGS(argv)
        code = tool.main([])
    err = capsys.readouterr().err if capsys else ""
    return code, err


def _rgb(seed, h=H, w=W):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    # GTA5 labels are palette PNGs whose indices are the ids.
    image = _palette(array) if mode == "P" else PIL.Image.fromarray(array)
    image.save(path)


def _palette(ids):
    image = PIL.Image.new("P", (ids.shape[1], ids.shape[0]))
    image.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    image.putdata(ids.ravel().tolist())
    return image


def _ids(seed, choices, h=H, w=W):
    return np.random.default_rng(seed).choice(choices, (h, w)).astype(np.uint8)


def make_gta5(root, n=3):
    for i in range(n):
        _save(root / "images" / f"{i:05d}.png", _rgb(i))
        _save(root / "labels" / f"{i:05d}.png", _ids(i, [0, 7, 8, 26, 33]), mode="P")
    return root


def make_cityscapes(root, split="val"):
    for city, n in (("aachen", 2), ("bonn", 1)):
        for i in range(n):
            stem = f"{city}_{i:06d}_000019"
            _save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", _rgb(i))
            _save(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png",
                  _ids(i, [1, 7, 11, 24]))
    return root


def make_synthia(root, n=2):
    for i in range(n):
        _save(root / "RGB" / f"{i:07d}.png", _rgb(i))
        ids = np.random.default_rng(i).choice([0, 3, 11, 16], (H, W)).astype(np.uint16)
        # Class id in channel 0, an instance id (large, 16-bit) in channel 1.
        label = np.stack([ids, np.full_like(ids, 4000), np.zeros_like(ids)], -1)
        path = root / "GT" / "LABELS" / f"{i:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(tf.io.encode_png(label).numpy())
    return root


def make_folder(root):
    _save(root / "images" / "a.jpg", _rgb(1))
    _save(root / "images" / "sub" / "b.png", _rgb(2))
    _save(root / "labels" / "a.png", _ids(1, [5, 6]))
    _save(root / "labels" / "sub" / "b.png", _ids(2, [5, 9]))
    (root / "map.txt").write_text("5 0\n6 1\n9 255\n")
    return root


def read_split(directory, split, in_written_order=False):
    """(shard files, examples sorted by file name, or in the written order)."""
    files = sorted(tf.io.gfile.glob(os.path.join(directory, example_lib.shard_glob(split))))
    examples = [example_lib.parse_example(r) for r in tf.data.TFRecordDataset(files)]
    if not in_written_order:
        examples.sort(key=lambda e: e["filename"].numpy())
    return files, examples


def _label(example):
    return tf.io.decode_png(example["label"]).numpy()[..., 0]


def test_gta5(tmp_path):
    root = make_gta5(tmp_path / "GTA5")
    code, _ = run_tool(dataset="gta5", root=root, output_dir=tmp_path / "out", num_shards=2)
    assert code == 0
    files, examples = read_split(tmp_path / "out", "train", in_written_order=True)
    assert [os.path.basename(f) for f in files] == [
        "train-g1-00000-of-00002.tfrecord", "train-g1-00001-of-00002.tfrecord"]
    manifest = json.loads((tmp_path / "out" / "train_manifest.json").read_text())
    # Written in the manifest's seeded permutation of the source order.
    names = [b"00000.png", b"00001.png", b"00002.png"]
    assert [e["filename"].numpy() for e in examples] == [names[i] for i in manifest["order"]]
    assert manifest["order"] != [0, 1, 2] and manifest["order_seed"] == 0
    _, examples = read_split(tmp_path / "out", "train")
    raw = np.asarray(PIL.Image.open(root / "labels" / "00001.png"))
    lut = {0: 255, 7: 0, 8: 1, 26: 13, 33: 18}
    np.testing.assert_array_equal(_label(examples[1]), np.vectorize(lut.get)(raw))
    np.testing.assert_array_equal(tf.io.decode_png(examples[1]["image"]), _rgb(1))
    assert manifest["num_examples"] == 3 and manifest["image_sizes"] == {f"{H}x{W}": 3}
    assert sum(manifest["class_pixel_counts"]) + manifest["ignored_pixel_count"] == 3 * H * W
    assert manifest["class_pixel_counts"][13] == sum(
        int((np.asarray(PIL.Image.open(p)) == 26).sum())
        for p in sorted((root / "labels").iterdir()))
    assert [s["num_examples"] for s in manifest["shards"]] == [2, 1]


def test_cityscapes_labelled_and_unlabelled(tmp_path):
    root = make_cityscapes(tmp_path / "cs")
    assert run_tool(dataset="cityscapes", root=root, split="val", output_dir=tmp_path / "out")[0] == 0
    _, examples = read_split(tmp_path / "out", "val")
    assert examples[0]["filename"].numpy() == b"aachen/aachen_000000_000019_leftImg8bit.png"
    assert set(np.unique(_label(examples[0]))) <= {255, 0, 2, 11}
    assert run_tool(dataset="cityscapes", root=root, split="val", labels=False,
                    output_dir=tmp_path / "unl")[0] == 0
    _, examples = read_split(tmp_path / "unl", "val")
    assert examples[0]["label"].numpy() == b""
    manifest = json.loads((tmp_path / "unl" / "val_manifest.json").read_text())
    assert not manifest["has_labels"] and manifest["num_examples"] == 3


@pytest.mark.parametrize("num_classes", [19, 16])
def test_synthia_16_bit_labels(tmp_path, num_classes):
    root = make_synthia(tmp_path / "syn")
    assert run_tool(dataset="synthia", root=root, num_classes=num_classes,
                    output_dir=tmp_path / "out")[0] == 0
    _, examples = read_split(tmp_path / "out", "train")
    ids = np.random.default_rng(0).choice([0, 3, 11, 16], (H, W))
    expected = {0: 255, 3: 0, 11: 18 if num_classes == 19 else 15,
                16: 9 if num_classes == 19 else 255}
    np.testing.assert_array_equal(_label(examples[0]), np.vectorize(expected.get)(ids))
    manifest = json.loads((tmp_path / "out" / "train_manifest.json").read_text())
    assert manifest["num_classes"] == len(manifest["class_names"]) == num_classes


def test_folder_with_label_map(tmp_path):
    root = make_folder(tmp_path / "mine")
    code, _ = run_tool(dataset="folder", root=root, label_map=root / "map.txt", num_classes=2,
                       class_names="ground,thing", output_dir=tmp_path / "out")
    assert code == 0
    _, examples = read_split(tmp_path / "out", "train")
    assert [e["filename"].numpy() for e in examples] == [b"a.jpg", b"sub/b.png"]
    assert tf.io.is_jpeg(examples[0]["image"])  # JPEG kept as is, not re-encoded.
    assert set(np.unique(_label(examples[1]))) <= {0, 255}
    manifest = json.loads((tmp_path / "out" / "train_manifest.json").read_text())
    assert manifest["class_names"] == ["ground", "thing"]


def _nothing_published(directory):
    """No shard and no manifest (the temporary folder may keep finished shards for a rerun)."""
    return not directory.exists() or not [
        p for p in directory.rglob("*") if p.is_file() and ".incomplete-" not in str(p)]


@pytest.mark.parametrize("damage, message", [
    ("truncated", "00001.png: not a decodable image"),
    ("size", "labels/00001.png: label is 13x8 but image"),
    ("unknown_id", "labels/00001.png: label ids [200]"),
    ("missing_label", "labels/00001.png: cannot read file"),
    ("colour_label", "labels/00001.png: expected a single-channel"),
])
def test_bad_samples_fail_cleanly_unless_skipped(tmp_path, capsys, monkeypatch, damage,
                                                 message):
    root = make_gta5(tmp_path / "GTA5")
    image, label = root / "images" / "00001.png", root / "labels" / "00001.png"
    if damage == "truncated":
        image.write_bytes(image.read_bytes()[:60])
    elif damage == "size":
        _save(label, _ids(1, [7], w=W + 1), mode="P")
    elif damage == "unknown_id":
        _save(label, _ids(1, [7, 200]), mode="P")
    elif damage == "missing_label":
        label.unlink()
    elif damage == "colour_label":
        _save(label, _rgb(1))
    out = tmp_path / "out"
    code, err = run_tool(capsys, dataset="gta5", root=root, output_dir=out, num_shards=2)
    assert code == 1 and message in err and "1 sample(s)" in err
    assert _nothing_published(out)

    written = _counting_shard_writes(monkeypatch)
    code, err = run_tool(capsys, dataset="gta5", root=root, output_dir=out, num_shards=2,
                         skip_bad=True)
    assert code == 0 and message in err
    # Bad samples are left out either way: the shards written by the failed run are reused.
    assert written == []
    manifest = json.loads((out / "train_manifest.json").read_text())
    assert manifest["num_examples"] == 2 and message in manifest["skipped"][0]["error"]
    assert sorted(p.name for p in out.iterdir()) == [
        "train-g1-00000-of-00002.tfrecord", "train-g1-00001-of-00002.tfrecord",
        "train_manifest.json"]


def test_missing_directory_and_list_entry(tmp_path, capsys):
    code, err = run_tool(capsys, dataset="cityscapes", root=tmp_path / "nowhere", split="val",
                         output_dir=tmp_path / "out")
    assert code == 2 and "leftImg8bit/val: missing directory" in err
    root = make_gta5(tmp_path / "GTA5")
    (tmp_path / "list.txt").write_text("00000.png\n00042.png\n")
    code, err = run_tool(capsys, dataset="gta5", root=root, list_file=tmp_path / "list.txt",
                         output_dir=tmp_path / "out")
    assert code == 1 and "images/00042.png: cannot read file" in err


def test_reconversion_replaces_old_shards(tmp_path):
    root = make_gta5(tmp_path / "GTA5")
    out = tmp_path / "out"
    assert run_tool(dataset="gta5", root=root, output_dir=out, num_shards=3)[0] == 0
    assert run_tool(dataset="gta5", root=root, output_dir=out, num_shards=1)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "train-g2-00000-of-00001.tfrecord", "train_manifest.json"]


def test_subprocess_with_parallel_workers(tmp_path):
    root = make_cityscapes(tmp_path / "cs")
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, str(TOOL), "--dataset=cityscapes", f"--root={root}", "--split=val",
         f"--output_dir={tmp_path / 'out'}", "--num_shards=2", "--num_workers=2"],
        capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "cityscapes val: 3 examples in 2 shards" in result.stdout
    _, examples = read_split(tmp_path / "out", "val")
    assert len(examples) == 3


def make_named_folder(root, prefix, n):
    """A labelled folder dataset of `n` images `{prefix}{i}.png` (2 classes, ROOT/map.txt)."""
    for i in range(n):
        _save(root / "images" / f"{prefix}{i}.png", _rgb(100 + i))
        _save(root / "labels" / f"{prefix}{i}.png", _ids(i, [5, 6]))
    (root / "map.txt").write_text("5 0\n6 1\n")
    return root


def read_names(directory, glob="train-*.tfrecord"):
    """The image names of a split, as the evaluation reader yields them."""
    dataset = pipeline.make_eval_dataset(os.path.join(directory, glob), (H, W))
    return sorted(n.decode() for batch in dataset for n in batch["filename"].numpy())


def _published_files(directory, split="train"):
    """The files a published split consists of: its manifest and the shards it lists."""
    manifest = json.loads((directory / f"{split}_manifest.json").read_text())
    return sorted([s["file"] for s in manifest["shards"]] + [f"{split}_manifest.json"])


def test_killed_publication_leaves_the_old_or_the_new_split(tmp_path):
    old_root = make_named_folder(tmp_path / "old", "old", 2)
    new_root = make_named_folder(tmp_path / "new", "new", 3)
    old, new = ["old0.png", "old1.png"], ["new0.png", "new1.png", "new2.png"]
    published = tmp_path / "published"
    convert_kill_driver.convert_killed_at(old_root, published, "train", 2, kill_at=0)
    full = tmp_path / "full"
    shutil.copytree(published, full)
    num_calls = convert_kill_driver.convert_killed_at(new_root, full, "train", 3, kill_at=0)
    # Record 3 finished shards, move them, rename the manifest (the commit
    # point), remove 2 old shards.
    assert num_calls == 3 + 3 + 1 + 2
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    runs = []
    for kill_at in range(1, num_calls + 1):  # In parallel: each start imports TensorFlow.
        out = tmp_path / f"killed_at_{kill_at}"
        shutil.copytree(published, out)
        with open(tmp_path / f"killed_at_{kill_at}.log", "w") as log:
            runs.append((kill_at, out, log.name, subprocess.Popen(
                [sys.executable, str(KILL_DRIVER), str(new_root), str(out), "train", "3",
                 str(kill_at)], stdout=log, stderr=subprocess.STDOUT, env=env)))
    for kill_at, out, log, process in runs:
        assert process.wait(timeout=120) == -signal.SIGKILL, pathlib.Path(log).read_text()
        # Killed before the manifest rename (call 7) or at it: the old split.
        assert read_names(out) == (old if kill_at <= 7 else new), f"killed at call {kill_at}"
        convert_kill_driver.convert_killed_at(new_root, out, "train", 3, kill_at=0)
        assert read_names(out) == new, f"killed at call {kill_at}, then rerun"
        assert sorted(os.listdir(out)) == _published_files(out), f"killed at call {kill_at}"


def test_stale_shards_are_ignored_then_removed(tmp_path):
    root = make_named_folder(tmp_path / "data", "img", 2)
    source = sources.folder(str(root), 2, label_map_file=str(root / "map.txt"))
    out = tmp_path / "out"
    tfrecord_writer.convert_split(source, str(out), "train", num_shards=2)
    listed = sorted(out.glob("train-g1-*.tfrecord"))
    # What interrupted conversions leave: shards of the next generation, one of
    # the names of converters before generations, a temporary folder.
    for stale in ("train-g2-00000-of-00001.tfrecord", "train-00000-of-00001.tfrecord",
                  ".incomplete-train-x/train-g2-00000-of-00001.tfrecord"):
        (out / stale).parent.mkdir(exist_ok=True)
        shutil.copy(listed[0], out / stale)
    assert read_names(out) == ["img0.png", "img1.png"]
    with pytest.raises(FileNotFoundError, match="lists none of them"):
        read_names(out, "train-g2-*.tfrecord")
    listed[1].rename(tmp_path / "away")
    with pytest.raises(FileNotFoundError, match=re.escape(listed[1].name) + ": missing, but "
                       r"listed by .*train_manifest\.json"):
        read_names(out)
    (tmp_path / "away").rename(listed[1])

    tfrecord_writer.convert_split(source, str(out), "train", num_shards=2)
    assert sorted(os.listdir(out)) == [
        "train-g2-00000-of-00002.tfrecord", "train-g2-00001-of-00002.tfrecord",
        "train_manifest.json"]
    assert read_names(out) == ["img0.png", "img1.png"]
    # Such a split's shards would match the glob of split "train".
    with pytest.raises(ValueError, match="must not contain '-'"):
        tfrecord_writer.convert_split(source, str(out), "train-extra")


def _smooth_rgb(seed, width, height):
    """A photo-like image: smooth gradients plus noise (resizing kernels disagree on such)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width * 255, y / height * 255, (x + y) % 97 * 2.6], -1)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def test_resized_inputs_equal_pil_at_real_sizes(tmp_path):
    """GTA5 1914x1052 -> 1280x720 (train) and Cityscapes 2048x1024 -> 1024x512 (val, full labels).

    The pipelines must hand the network exactly PIL's pixels: zero differing values.
    """
    gta = tmp_path / "GTA5"
    image = _smooth_rgb(0, 1914, 1052)
    ids = np.random.default_rng(0).choice([7, 8, 26], (1052 // 4, 1914 // 2)).repeat(
        4, 0).repeat(2, 1).astype(np.uint8)
    _save(gta / "images" / "00000.png", image)
    _save(gta / "labels" / "00000.png", ids, mode="P")
    assert run_tool(dataset="gta5", root=gta, output_dir=tmp_path / "gta", num_shards=1,
                    image_size="1280,720", label_size="1280,720")[0] == 0
    pattern = str(tmp_path / "gta" / "train-*.tfrecord")
    batch = next(iter(pipeline.make_train_dataset(pattern, pattern, (720, 1280), (720, 1280),
                                                  1, seed=0)))
    want = np.asarray(PIL.Image.fromarray(image).resize((1280, 720), PIL.Image.BICUBIC))
    got = preprocessing.unpreprocess_image(batch[constants.SOURCE_IMAGE][0]).numpy()
    assert np.count_nonzero(got != want) == 0
    lut = np.full(256, 255, np.uint8)
    lut[[7, 8, 26]] = [0, 1, 13]
    want_label = lut[np.asarray(PIL.Image.fromarray(ids).resize((1280, 720), PIL.Image.NEAREST))]
    np.testing.assert_array_equal(batch[constants.SOURCE_LABEL].numpy()[0], want_label)

    cityscapes = make_cityscapes(tmp_path / "cs")
    big = _smooth_rgb(1, 2048, 1024)
    stem = "aachen_000000_000019"
    _save(cityscapes / "leftImg8bit" / "val" / "aachen" / f"{stem}_leftImg8bit.png", big)
    _save(cityscapes / "gtFine" / "val" / "aachen" / f"{stem}_gtFine_labelIds.png",
          _ids(0, [7, 11], 1024, 2048))
    assert run_tool(dataset="cityscapes", root=cityscapes, split="val", list_file=_list(
        tmp_path, f"aachen/{stem}_leftImg8bit.png"), output_dir=tmp_path / "val",
        num_shards=1, image_size="1024,512")[0] == 0
    element = next(iter(pipeline.make_eval_dataset(str(tmp_path / "val" / "val-*.tfrecord"),
                                                   (512, 1024))))
    want = np.asarray(PIL.Image.fromarray(big).resize((1024, 512), PIL.Image.BICUBIC))
    got = preprocessing.unpreprocess_image(element["image"][0]).numpy()
    assert np.count_nonzero(got != want) == 0
    assert element["label"].shape[1:] == (1024, 2048)  # scored at full label resolution
    # TF's own bicubic (what serving uses) is close to PIL, not equal: the reason for the above.
    tf_resized = transforms.resize_image(tf.constant(big), (512, 1024)).numpy()
    assert np.count_nonzero(tf_resized != want) > 0


def _list(directory, *names):
    path = directory / "list.txt"
    path.write_text("\n".join(names) + "\n")
    return path


def test_gta5_pairs_of_different_sizes_are_resized_like_the_reference(tmp_path, capsys):
    """The real GTA5 has a few image/label pairs of different sizes; the reference resizes both."""
    root = make_gta5(tmp_path / "GTA5")
    _save(root / "labels" / "00001.png", _ids(1, [7, 8], h=H + 2, w=W + 4), mode="P")
    out = tmp_path / "out"
    code, err = run_tool(capsys, dataset="gta5", root=root, output_dir=out, num_shards=2)
    assert code == 1 and "--image_size and --label_size" in err
    code, err = run_tool(capsys, dataset="gta5", root=root, output_dir=out, num_shards=2,
                         image_size=f"{W},{H}", label_size=f"{W},{H}")
    assert code == 0, err
    assert "00001.png is 12x8 but its label" in err and "1 image/label pair(s)" in err, err
    manifest = json.loads((out / "train_manifest.json").read_text())
    assert manifest["num_examples"] == 3 and manifest["mismatched_pairs"] == 1
    assert manifest["mismatched"][0]["label_size"] == f"{W + 4}x{H + 2}"
    assert manifest["image_sizes"] == {f"{H}x{W}": 3}
    assert manifest["resized_to"] == {"image": [W, H], "label": [W, H]}


def _json(path):
    return json.loads(path.read_text())


def _examples(shard):
    return [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(shard))]


def _kill_after_two_shards(new_root, out, env):
    """Converts NEW_ROOT into OUT in a process SIGKILLed when 2 of its 3 shards are recorded."""
    process = subprocess.run([sys.executable, str(KILL_DRIVER), str(new_root), str(out), "train",
                              "3", "3"], capture_output=True, text=True, env=env, timeout=120)
    assert process.returncode == -signal.SIGKILL, process.stdout + process.stderr
    assert read_names(out) == ["old0.png", "old1.png"]  # Nothing published yet.


def _counting_shard_writes(monkeypatch):
    written = []
    write = tfrecord_writer._write_shard

    def counting(samples, *args):
        written.append([s.name for s in samples])
        return write(samples, *args)

    monkeypatch.setattr(tfrecord_writer, "_write_shard", counting)
    return written


def test_rerun_after_a_kill_reuses_the_finished_shards(tmp_path, monkeypatch):
    """The same command after an interruption writes only the unfinished shard; same result."""
    old_root = make_named_folder(tmp_path / "old", "old", 2)
    new_root = make_named_folder(tmp_path / "new", "new", 3)
    published = tmp_path / "published"
    convert_kill_driver.convert_killed_at(old_root, published, "train", 2, kill_at=0)
    full = tmp_path / "full"
    shutil.copytree(published, full)
    convert_kill_driver.convert_killed_at(new_root, full, "train", 3, kill_at=0)
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    resumed, changed = tmp_path / "resumed", tmp_path / "changed"
    for out in (resumed, changed):
        shutil.copytree(published, out)
        _kill_after_two_shards(new_root, out, env)

    written = _counting_shard_writes(monkeypatch)
    convert_kill_driver.convert_killed_at(new_root, resumed, "train", 3, kill_at=0)
    assert len(written) == 1, written
    assert sorted(os.listdir(resumed)) == sorted(os.listdir(full))
    # The uninterrupted conversion's split: manifest and records equal. (Not
    # byte for byte: each process serialises a record's feature map in its own order.)
    assert _json(resumed / "train_manifest.json") == _json(full / "train_manifest.json")
    for name in os.listdir(full):
        if name.endswith(".tfrecord"):
            assert _examples(resumed / name) == _examples(full / name), name

    # An input of a finished shard changed meanwhile: that shard is written again.
    manifest = json.loads((full / "train_manifest.json").read_text())
    first = f"new{manifest['order'][0]}.png"  # The sample of shard 0, finished.
    _save(new_root / "images" / first, _rgb(7))
    written.clear()
    convert_kill_driver.convert_killed_at(new_root, changed, "train", 3, kill_at=0)
    assert sorted(written) == sorted([[first], [f"new{manifest['order'][2]}.png"]])
    assert read_names(changed) == ["new0.png", "new1.png", "new2.png"]
    shard0 = manifest["shards"][0]["file"]
    assert _examples(changed / shard0) != _examples(full / shard0)
    assert sorted(os.listdir(changed)) == sorted(os.listdir(full))


def test_a_damaged_finished_shard_is_written_again(tmp_path, monkeypatch):
    old_root = make_named_folder(tmp_path / "old", "old", 2)
    new_root = make_named_folder(tmp_path / "new", "new", 3)
    out = tmp_path / "out"
    convert_kill_driver.convert_killed_at(old_root, out, "train", 2, kill_at=0)
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    _kill_after_two_shards(new_root, out, env)
    temp_dir, = out.glob(".incomplete-train-*")
    # The third shard was complete, its record not yet written: not finished.
    shards = sorted(p for p in temp_dir.glob("*.tfrecord")
                    if p.with_name(p.name + ".done.json").exists())
    assert len(shards) == 2
    # One truncated, one changed in place (same size): neither may be reused.
    shards[0].write_bytes(shards[0].read_bytes()[:-5])
    damaged = bytearray(shards[1].read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    shards[1].write_bytes(bytes(damaged))
    written = _counting_shard_writes(monkeypatch)
    convert_kill_driver.convert_killed_at(new_root, out, "train", 3, kill_at=0)
    assert len(written) == 3
    assert read_names(out) == ["new0.png", "new1.png", "new2.png"]
