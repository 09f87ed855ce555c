"""Demo data: deterministic from its seed, and a real source/target gap."""

import glob
import os
import subprocess
import sys

import numpy as np

from advent_tf.data import demo
from advent_tf.data import demo_scenes

SMALL = (("source", "train", 3, True), ("source", "val", 1, True),
         ("target", "train", 3, False), ("target", "val", 1, True))


def _scenes(domain, n=30, size=(48, 96)):
    return [demo_scenes.render_scene(np.random.default_rng(i), *size, domain) for i in range(n)]


def _shard_bytes(directory):
    return {os.path.relpath(p, directory): open(p, "rb").read()
            for p in sorted(glob.glob(os.path.join(directory, "*", "*.tfrecord")))}


def test_same_seed_same_files(tmp_path):
    demo.make_demo_data(str(tmp_path / "a"), seed=5, image_size=(24, 48), splits=SMALL)
    demo.make_demo_data(str(tmp_path / "b"), seed=5, image_size=(24, 48), splits=SMALL)
    demo.make_demo_data(str(tmp_path / "c"), seed=6, image_size=(24, 48), splits=SMALL)
    a, b, c = (_shard_bytes(str(tmp_path / x)) for x in "abc")
    assert len(a) == 6 and a == b and a != c


def test_ensure_generates_only_when_missing(tmp_path):
    patterns = demo.ensure_demo_data(str(tmp_path), image_size=(32, 64))
    assert sorted(patterns) == ["source_train", "source_val", "target_train", "target_val"]
    shard = glob.glob(patterns["source_train"])[0]
    stamp = os.stat(shard).st_mtime_ns
    assert demo.ensure_demo_data(str(tmp_path), image_size=(32, 64)) == patterns
    assert os.stat(shard).st_mtime_ns == stamp
    os.remove(os.path.join(tmp_path, "demo_info.json"))  # An interrupted run.
    demo.ensure_demo_data(str(tmp_path), image_size=(32, 64))
    assert os.path.exists(os.path.join(tmp_path, "demo_info.json"))


def test_domains_differ_in_appearance_and_layout():
    source, target = _scenes("source"), _scenes("target")
    for image, label in source + target:
        assert image.dtype == np.uint8 and set(np.unique(label)) <= set(demo_scenes.CLASSES)

    def saturation(scenes):
        images = np.stack([s[0] for s in scenes]).astype(np.float32)
        return float((images.max(-1) - images.min(-1)).mean())

    def sky_fraction(scenes):
        return float(np.mean([(s[1] == demo_scenes.SKY).mean() for s in scenes]))

    def car_fraction(scenes):
        return float(np.mean([(s[1] == demo_scenes.CAR).mean() for s in scenes]))

    assert saturation(target) < 0.7 * saturation(source)
    assert sky_fraction(target) < 0.8 * sky_fraction(source)  # Higher horizon.
    assert car_fraction(target) > car_fraction(source)  # Larger objects.
    # Grain: neighbouring pixels of one class vary more in the target.
    def roughness(scenes):
        return float(np.mean([np.abs(np.diff(img.astype(np.float32), axis=1))[
            (lab[:, 1:] == lab[:, :-1]) & (lab[:, 1:] == demo_scenes.ROAD)].mean()
            for img, lab in scenes]))
    assert roughness(target) > 1.3 * roughness(source)


def test_concurrent_first_runs_generate_the_data_once(tmp_path):
    """Two seeds launched together on a fresh directory: both get the data, neither crashes."""
    output = str(tmp_path / "demo")
    code = ("import sys; from advent_tf.data import demo; "
            "print(sorted(demo.ensure_demo_data(sys.argv[1], image_size=(24, 48)).values()))")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    processes = [subprocess.Popen([sys.executable, "-c", code, output], env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for _ in range(2)]
    outputs = [p.communicate(timeout=240) for p in processes]
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-2000:]
    assert outputs[0][0] == outputs[1][0]
    # The data is whole: one generation's shards, every manifest listing existing files.
    shards = glob.glob(os.path.join(output, "*", "*.tfrecord"))
    assert len(shards) == 8 and not glob.glob(os.path.join(output, "*", ".incomplete-*"))
