"""--strategy=multi_worker with real worker processes on 127.0.0.1 (TF_CONFIG, CPU collectives)."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import PIL.Image
import pytest
import tensorflow as tf

from advent_tf.core import preprocessing
from advent_tf.data import demo
from advent_tf.data import sources
from advent_tf.data import tfrecord_writer
import train_helpers
import worker_data_check


# Every wait is bounded: a worker that hangs in a collective is killed here.
WORKER_TIMEOUT = 240
# How long the surviving worker may take to notice a killed one and stop:
# TensorFlow's collective health check probes the peers every 30 s.
STOP_TIMEOUT = 120


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _launch(patterns, train_dir, num_workers=2, alongside=(), **overrides):
    """Trains with real workers, waits for all (bounded); returns (code, stdout, stderr) each."""
    args = train_helpers.tiny_flags(patterns, train_dir, strategy="multi_worker",
                                    image_summary_every=0, **overrides)
    return _run_cluster(_train_command(args), num_workers, alongside)


def _train_command(args):
    return [sys.executable, "-m", "advent_tf.train", *args]


def _run_cluster(command, num_workers, alongside=()):
    """Runs `command` as each worker of a cluster on 127.0.0.1; (code, stdout, stderr) each.

    The commands `alongside` (single processes, no TF_CONFIG) run at the same
    time, to share the start-up time; their results follow the workers'.
    """
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(num_workers)]}
    processes = []
    for index in range(num_workers):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        processes.append(subprocess.Popen(
            command, env=train_helpers.train_env(TF_CONFIG=tf_config), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True))
    for single in alongside:
        processes.append(subprocess.Popen(single, env=train_helpers.train_env(),
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
    results = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=WORKER_TIMEOUT)
            results.append((process.returncode, stdout, stderr))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    return results


def _logged_losses(stderr):
    return re.findall(r"step (\d+)/\d+\s+(.*?)\s+[\d.]+ steps/s", stderr)


@pytest.fixture(scope="module")
def one_pair(tmp_path_factory):
    """One source and one target image: every global batch is the same on every worker."""
    return demo.make_demo_data(
        str(tmp_path_factory.mktemp("one_pair")), seed=0, image_size=train_helpers.TINY_SIZE,
        splits=(("source", "train", 1, True), ("target", "train", 1, False)), num_shards=1)


def _weights(train_dir, step):
    """Every network variable of a checkpoint, by its checkpoint name.

    A trainable variable is saved under the shortest path that reaches it,
    its optimizer's (`optimizer/_trainable_variables/N`, `d_optimizer_main/...`);
    the BN statistics and frozen gamma/beta under `segmenter/`.
    """
    reader = tf.train.load_checkpoint(os.path.join(train_dir, "checkpoints", f"ckpt-{step}"))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name.startswith(("segmenter/", "discriminator_", "optimizer/_trainable_variables/",
                                "d_optimizer_main/_trainable_variables/",
                                "d_optimizer_aux/_trainable_variables/"))
            and "OPTIMIZER_SLOT" not in name}


def _is_discriminator(name):
    return name.startswith(("discriminator_", "d_optimizer_"))


def test_two_workers_make_the_update_of_one_process_with_the_same_global_batch(
        one_pair, tmp_path):
    """Global batch 2 = 1 image per worker vs 2 images in one process; frozen BN.

    (With --bn_mode=reference each replica normalises with the statistics of its
    own images, as the reference's single GPU does with its one image: batch
    statistics over 1 image per worker differ from those over 2 by definition.)
    """
    flags = dict(method="advent", num_steps=2, checkpoint_every=2, bn_mode="frozen",
                 batch_size=2)
    single = _train_command(train_helpers.tiny_flags(
        one_pair, str(tmp_path / "single"), image_summary_every=0, **flags))
    results = _launch(one_pair, str(tmp_path / "workers"), alongside=[single], **flags)
    for code, _, stderr in results:
        assert code == 0, stderr[-3000:]
    # The logs are averaged over the workers: both print the same losses.
    chief, other = (_logged_losses(stderr) for _, _, stderr in results[:2])
    assert chief and chief == other, (chief, other)
    # Only the chief keeps checkpoints, summaries and the run record; the other
    # worker's scratch checkpoints are gone.
    assert sorted(os.listdir(tmp_path / "workers")) == [
        "checkpoints", "config.json", "logs", "run.flags"]
    ours, want = _weights(tmp_path / "workers", 2), _weights(tmp_path / "single", 2)
    assert ours.keys() == want.keys()
    trained = [n for n in want if n.startswith("optimizer/")]
    assert len(trained) > 30 and sum(map(_is_discriminator, want)) >= 10
    for name, value in want.items():
        if not _is_discriminator(name):
            scale = np.abs(value).max() + 1e-12
            assert np.abs(ours[name] - value).max() <= 1e-4 * scale, name
    # The discriminators take two Adam steps of lr 1e-4. Adam divides each
    # gradient by its own magnitude, so where a gradient is near zero the
    # round-off of the summation order decides the step (1 of 5.5M elements
    # was 11% of a step off): nearly all within 5% of a step, all within 25%.
    gaps = np.concatenate([np.abs(ours[n] - want[n]).ravel() for n in want
                           if _is_discriminator(n)])
    assert np.mean(gaps <= 0.05 * 1e-4) > 0.9999 and gaps.max() <= 0.25 * 1e-4, gaps.max()


def test_a_killed_worker_stops_the_others_then_a_relaunch_resumes(one_pair, tmp_path):
    train_dir = tmp_path / "run"
    flags = dict(method="source_only", num_steps=1000, lr_horizon=1000, checkpoint_every=2,
                 log_every=1)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    args = train_helpers.tiny_flags(one_pair, str(train_dir), strategy="multi_worker",
                                    image_summary_every=0, **flags)
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    processes = [subprocess.Popen(
        [sys.executable, "-m", "advent_tf.train", *args],
        env=train_helpers.train_env(TF_CONFIG=json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": i}})),
        stdout=subprocess.DEVNULL, stderr=open(logs[i], "w")) for i in range(2)]
    try:
        deadline = time.monotonic() + WORKER_TIMEOUT
        while "ckpt-4" not in logs[0].read_text():
            assert time.monotonic() < deadline, logs[0].read_text()[-3000:]
            assert processes[0].poll() is None, logs[0].read_text()[-3000:]
            time.sleep(0.5)
        processes[1].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        code = processes[0].wait(timeout=STOP_TIMEOUT)
        stopped_after = time.monotonic() - killed_at
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    chief_log = logs[0].read_text()
    print(f"the chief stopped {stopped_after:.1f} s after the other worker was killed")
    assert code != 0
    assert "a worker of the cluster is gone" in chief_log, chief_log[-3000:]
    assert "Relaunch every worker with the same command" in chief_log
    newest = max(int(n[len("ckpt-"):-len(".index")]) for n in
                 os.listdir(train_dir / "checkpoints") if n.endswith(".index"))
    # The same command on every worker resumes from the chief's newest checkpoint.
    results = _launch(one_pair, str(train_dir), **dict(flags, num_steps=newest + 2))
    for code, _, stderr in results:
        assert code == 0, stderr[-3000:]
        assert f"Resumed from {train_dir / 'checkpoints' / f'ckpt-{newest}'}" in stderr
    assert (train_dir / "checkpoints" / f"ckpt-{newest + 2}.index").exists()
    assert sorted(os.listdir(train_dir)) == ["checkpoints", "config.json", "logs", "run.flags"]


def _write_frames(root, frames, labels, num_classes):
    """A folder dataset (images/, labels/, map.txt) converted by the real writer; its pattern."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for index, (frame, label) in enumerate(zip(frames, labels)):
        PIL.Image.fromarray(frame).save(root / "images" / f"{index:05d}.png")
        PIL.Image.fromarray(label).save(root / "labels" / f"{index:05d}.png")
    (root / "map.txt").write_text("".join(f"{k} {k}\n" for k in range(num_classes)))
    source = sources.folder(str(root), num_classes, label_map_file=str(root / "map.txt"))
    tfrecord_writer.convert_split(source, str(root / "records"), "train", num_shards=4,
                                  num_workers=1, order_seed=0)
    return str(root / "records" / "train-*.tfrecord")


NUM_FRAMES = 240  # More than the shuffle buffer: the first steps draw every frame once.
FRAME_SIZE = (8, 8)


@pytest.fixture(scope="module")
def indexed_frames(tmp_path_factory):
    """Frames whose red and green channels hold their index, in 4 permuted shards."""
    labels = np.zeros((NUM_FRAMES, *FRAME_SIZE), np.uint8)
    return _write_frames(tmp_path_factory.mktemp("indexed"),
                         train_helpers.indexed_frames(NUM_FRAMES, FRAME_SIZE), labels, 2)


def test_each_worker_reads_its_own_part_of_every_global_batch(indexed_frames, num_workers=3):
    """AutoShardPolicy.DATA over one seeded stream: worker i gets slice i of each global batch.

    Every worker reads every shard (so any shard count works) through the same
    seeded shuffle, and keeps its slice of each global batch: together the
    workers see exactly the global batch one process would, no example twice.
    """
    global_batch, steps, seed = 6, 8, 5
    results = _run_cluster([sys.executable, worker_data_check.__file__, indexed_frames,
                            *map(str, (*FRAME_SIZE, global_batch, steps, seed))], num_workers)
    for code, _, stderr in results:
        assert code == 0, stderr[-3000:]
    received = [json.loads(stdout.strip().splitlines()[-1]) for _, stdout, _ in results]
    assert [r["replicas"] for r in received] == [num_workers] * num_workers
    one_process = [{key: train_helpers.frame_indices(batch[key]) for key in parts}
                   for batch, parts in zip(
                       worker_data_check.train_dataset(indexed_frames, FRAME_SIZE,
                                                       global_batch, seed),
                       received[0]["steps"])]
    assert len(one_process) == steps
    for step, want in enumerate(one_process):
        for key, indices in want.items():
            parts = [r["steps"][step][key] for r in received]
            assert [len(p) for p in parts] == [global_batch // num_workers] * num_workers
            # Worker order = slice order: the global batch of one process.
            assert sum(parts, []) == indices, (step, key, parts, indices)
    for key in one_process[0]:
        drawn = [i for want in one_process for i in want[key]]
        assert len(set(drawn)) == len(drawn) == global_batch * steps  # No example twice.


def _training_stream(pattern, size, batch_size, seed):
    """The batches `train --seed=SEED` trains on (data used as source and target).

    `train` draws the TensorBoard sample from the dataset's first iteration,
    so `fit` reads its second (each iteration reshuffles). Which shuffle the
    second one gets depends on how many epochs the first one's prefetching
    started: the split must hold more records than the shuffle buffer (128)
    and the prefetch take, or the order varies from run to run.
    """
    dataset = worker_data_check.train_dataset(pattern, size, batch_size, seed)
    next(iter(dataset))
    return iter(dataset)


def test_reference_bn_normalises_each_worker_with_its_own_images(tmp_path):
    """--bn_mode=reference across workers: per-replica batch statistics, by definition.

    Each worker's BN uses the mean and variance of its own images (as the
    reference's one GPU does with its one image; not synchronised BN). So one
    step of 2 workers with frames A and B equals the mean of one-image steps
    on A and on B (gradients and moving statistics both average; the labels
    are all valid, so each image weighs the same in the cross-entropy), and
    differs from one process normalising A and B together.
    """
    rng = np.random.default_rng(0)
    height, width = train_helpers.TINY_SIZE
    frames = rng.integers(0, 256, (2, height, width, 3), np.uint8)
    labels = rng.integers(0, 19, (2, height, width), np.uint8)
    # 150 copies of each: a split larger than the shuffle buffer (see _training_stream).
    copies = np.arange(300) % 2
    patterns = {"pair": _write_frames(tmp_path / "pair", frames[copies], labels[copies], 19)}
    for name, index in (("a", 0), ("b", 1)):
        patterns[name] = _write_frames(tmp_path / name, frames[index:index + 1],
                                       labels[index:index + 1], 19)
    # A seed whose first global batch holds A and B (a shuffled repeated stream
    # of two frames may start with one frame twice); each worker gets one of them.
    for seed in range(20):
        first = next(_training_stream(patterns["pair"], (height, width), 2, seed))
        order = [[np.array_equal(preprocessing.unpreprocess_image(image), f)
                  for f in frames].index(True) for image in first["source_image"]]
        if sorted(order) == [0, 1]:
            break
    else:
        raise AssertionError("no seed in 0..19 starts with a batch of A and B")
    flags = dict(method="source_only", num_steps=1, checkpoint_every=1, bn_mode="reference",
                 seed=seed)

    def pattern_flags(name):
        return {"source_train": patterns[name], "target_train": patterns[name]}

    singles = {name: _train_command(train_helpers.tiny_flags(
        pattern_flags(name), str(tmp_path / f"single_{name}"), batch_size=batch_size,
        image_summary_every=0, **flags)) for name, batch_size in (("a", 1), ("b", 1), ("pair", 2))}
    results = _launch(pattern_flags("pair"), str(tmp_path / "workers"), batch_size=2,
                      alongside=list(singles.values()), **flags)
    for code, _, stderr in results:
        assert code == 0, stderr[-3000:]
    runs = {name: _weights(tmp_path / f"single_{name}", 1) for name in singles}
    ours = _weights(tmp_path / "workers", 1)
    assert ours.keys() == runs["pair"].keys()
    assert sum("moving" in n for n in ours) > 10 and sum("_trainable_" in n for n in ours) > 30
    largest_gap = 0.0
    for name, value in ours.items():
        want = (runs["a"][name] + runs["b"][name]) / 2
        scale = np.abs(want).max() + 1e-12
        assert np.abs(value - want).max() <= 1e-5 * scale, name
        largest_gap = max(largest_gap, np.abs(value - runs["pair"][name]).max() / scale)
    # Statistics of A and B together normalise differently: visibly so.
    assert largest_gap > 1e-3, largest_gap
