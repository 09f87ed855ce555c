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
import pytest
import tensorflow as tf

from advent_tf.data import demo
import train_helpers

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


def _launch(patterns, train_dir, num_workers=2, **overrides):
    """Starts the workers, waits for all (bounded); returns their CompletedProcess-like results."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(num_workers)]}
    args = train_helpers.tiny_flags(patterns, train_dir, strategy="multi_worker",
                                    image_summary_every=0, **overrides)
    processes = []
    for index in range(num_workers):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "advent_tf.train", *args],
            env=train_helpers.train_env(TF_CONFIG=tf_config), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True))
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
    reader = tf.train.load_checkpoint(os.path.join(train_dir, "checkpoints", f"ckpt-{step}"))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name.startswith(("segmenter/", "discriminator_")) and "OPTIMIZER_SLOT" not in name}


def test_two_workers_make_the_update_of_one_process_with_the_same_global_batch(one_pair,
                                                                             tmp_path):
    """Global batch 2 = 1 image per worker vs 2 images in one process; frozen BN.

    (With --bn_mode=reference each replica normalises with the statistics of its
    own images, as the reference's single GPU does with its one image: batch
    statistics over 1 image per worker differ from those over 2 by definition.)
    """
    flags = dict(method="advent", num_steps=2, checkpoint_every=2, bn_mode="frozen",
                 batch_size=2)
    results = _launch(one_pair, str(tmp_path / "workers"), **flags)
    for code, _, stderr in results:
        assert code == 0, stderr[-3000:]
    # The logs are averaged over the workers: both print the same losses.
    chief, other = (_logged_losses(stderr) for _, _, stderr in results)
    assert chief and chief == other, (chief, other)
    # Only the chief keeps checkpoints, summaries and the run record; the other
    # worker's scratch checkpoints are gone.
    assert sorted(os.listdir(tmp_path / "workers")) == [
        "checkpoints", "config.json", "logs", "run.flags"]
    single = train_helpers.run_train(train_helpers.tiny_flags(
        one_pair, str(tmp_path / "single"), image_summary_every=0, **flags))
    assert single.returncode == 0, single.stderr[-3000:]
    ours, want = _weights(tmp_path / "workers", 2), _weights(tmp_path / "single", 2)
    assert ours.keys() == want.keys() and len(ours) > 50
    for name, value in want.items():
        if name.startswith("segmenter/"):
            scale = np.abs(value).max() + 1e-12
            assert np.abs(ours[name] - value).max() <= 1e-4 * scale, name
        else:  # Adam steps of lr 1e-4: within 5% of a step.
            assert np.abs(ours[name] - value).max() <= 0.05 * 1e-4, name


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
