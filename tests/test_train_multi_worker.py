"""--strategy=multi_worker with real worker processes on 127.0.0.1 (TF_CONFIG, CPU collectives)."""

import json
import os
import re
import socket
import subprocess
import sys

import pytest

import train_helpers

# Every wait is bounded: a worker that hangs in a collective is killed here.
WORKER_TIMEOUT = 240


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="module")
def patterns(tmp_path_factory):
    return train_helpers.make_tiny_data(str(tmp_path_factory.mktemp("tiny_data")))


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


def test_two_workers_train_together_and_only_the_chief_writes(patterns, tmp_path):
    train_dir = tmp_path / "run"
    results = _launch(patterns, str(train_dir), method="advent", num_steps=2,
                      checkpoint_every=1)
    for code, _, stderr in results:
        assert code == 0, stderr[-3000:]
    # The logs are averaged over the workers: both print the same losses.
    chief, other = (_logged_losses(stderr) for _, _, stderr in results)
    assert chief and chief == other, (chief, other)
    # Only the chief keeps checkpoints, summaries and the run record; the other
    # worker's scratch checkpoints are gone.
    assert sorted(os.listdir(train_dir)) == ["checkpoints", "config.json", "logs", "run.flags"]
    assert (train_dir / "checkpoints" / "ckpt-2.index").exists()
