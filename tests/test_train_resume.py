"""Fault tolerance: SIGKILL mid-run then resume; NaN losses stop training cleanly."""

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from advent_tf.data import demo

import train_helpers


@pytest.fixture(scope="module")
def patterns(tmp_path_factory):
    return train_helpers.make_tiny_data(str(tmp_path_factory.mktemp("tiny_data")))


@pytest.fixture(scope="module")
def one_pair(tmp_path_factory):
    """One source and one target image: every batch is the same, whatever the data order."""
    return demo.make_demo_data(
        str(tmp_path_factory.mktemp("one_pair")), seed=0, image_size=train_helpers.TINY_SIZE,
        splits=(("source", "train", 1, True), ("target", "train", 1, False)), num_shards=1)


def _all_variables(path):
    reader = tf.train.load_checkpoint(path)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name != "_CHECKPOINTABLE_OBJECT_GRAPH" and not name.startswith("save_counter")}


def _checkpoint_step(path):
    return -1 if path is None else int(path.rsplit("-", 1)[1])


def test_sigkill_then_rerun_resumes_from_last_checkpoint(one_pair, tmp_path):
    # A resumed run reseeds its data streams with the resumed step (see README):
    # on one image pair the order cannot matter, so the resumed run must end
    # bit-identical to an uninterrupted one if no state was lost.
    steps = 16
    killed_dir = str(tmp_path / "killed")
    flags = dict(method="advent", num_steps=steps, checkpoint_every=2, image_summary_every=0,
                 deterministic=True)
    args = train_helpers.tiny_flags(one_pair, killed_dir, **flags)
    # oneDNN off from the start: --deterministic then needs no restart (one
    # TensorFlow start-up less per run; the restart is tested below).
    env = train_helpers.train_env(TF_ENABLE_ONEDNN_OPTS="0")
    process = subprocess.Popen([sys.executable, "-m", "advent_tf.train", *args],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt_dir = os.path.join(killed_dir, "checkpoints")
    deadline = time.monotonic() + 300
    # Wait on the manager's state file, which is written after a checkpoint's
    # files: killing between the two leaves the previous checkpoint newest.
    while _checkpoint_step(tf.train.latest_checkpoint(ckpt_dir)) < 4:
        assert process.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    last = tf.train.latest_checkpoint(ckpt_dir)
    assert last is not None
    killed_at = int(last.rsplit("-", 1)[1])
    assert 4 <= killed_at < steps, killed_at

    # The newest checkpoint survived the kill whole: every state of the run at
    # one step (segmenter, SGD momentum, both discriminators and Adam states).
    saved = _all_variables(last)
    for optimizer in ("optimizer", "d_optimizer_main", "d_optimizer_aux"):
        assert int(saved[f"{optimizer}/_iterations/.ATTRIBUTES/VARIABLE_VALUE"]) == killed_at
    assert all(np.all(np.isfinite(v)) for v in saved.values() if v.dtype.kind == "f")

    rerun = train_helpers.run_train(args, env=env)  # The very same command.
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"Resumed from {last}" in rerun.stderr
    first = re.search(r"step (\d+)/16 .* lr ([0-9.e-]+) ", rerun.stderr)
    assert first and int(first.group(1)) == killed_at + 1
    # The poly schedule continues from the restored iteration count.
    expected_lr = 0.01 * (1 - (killed_at + 1) / 100) ** 0.9
    assert float(first.group(2)) == pytest.approx(expected_lr, rel=1e-3)
    final = _all_variables(os.path.join(ckpt_dir, f"ckpt-{steps}"))
    for optimizer in ("optimizer", "d_optimizer_main", "d_optimizer_aux"):
        assert int(final[f"{optimizer}/_iterations/.ATTRIBUTES/VARIABLE_VALUE"]) == steps

    # A third run of the same command has nothing left to do.
    again = train_helpers.run_train(args, env=env)
    assert again.returncode == 0 and f"Already trained to step {steps}" in again.stderr

    straight_dir = str(tmp_path / "straight")
    straight = train_helpers.run_train(train_helpers.tiny_flags(one_pair, straight_dir, **flags),
                                       env=env)
    assert straight.returncode == 0, straight.stderr[-3000:]
    expected = _all_variables(os.path.join(straight_dir, "checkpoints", f"ckpt-{steps}"))
    assert expected.keys() == final.keys()
    for name, value in expected.items():
        np.testing.assert_array_equal(final[name], value, err_msg=name)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(patterns, tmp_path):
    train_dir = str(tmp_path / "run")
    good = train_helpers.run_train(train_helpers.tiny_flags(
        patterns, train_dir, method="source_only", num_steps=2, image_summary_every=0))
    assert good.returncode == 0, good.stderr[-3000:]
    ckpt_dir = os.path.join(train_dir, "checkpoints")
    good_checkpoint = tf.train.latest_checkpoint(ckpt_dir)
    # Resume the same run with an absurd learning rate: it must diverge.
    result = train_helpers.run_train(train_helpers.tiny_flags(
        patterns, train_dir, method="source_only", learning_rate=1e12, num_steps=20,
        image_summary_every=0))
    assert result.returncode != 0
    assert ("Resuming with a changed setting: --learning_rate: 0.01 in the record, now "
            "1000000000000.0") in result.stderr
    match = re.search(r"NonFinite(?:Loss|State)Error: (.*) at step (\d+)", result.stderr)
    assert match, result.stderr[-3000:]
    assert int(match.group(2)) > 2
    last = tf.train.latest_checkpoint(ckpt_dir)
    assert f"Last good checkpoint kept: {last}" in result.stderr
    assert last == good_checkpoint or int(last.rsplit("-", 1)[1]) < int(match.group(2))
    for name, value in _all_variables(last).items():
        if value.dtype.kind == "f":
            assert np.all(np.isfinite(value)), name


def test_damaged_newest_checkpoint_resumes_from_the_one_before(one_pair, tmp_path):
    # A disk that filled up or a copy cut short can leave the newest
    # checkpoint unreadable: the rerun sets it aside, resumes from the one
    # before and, on one image pair under --deterministic, remakes it exactly.
    train_dir = str(tmp_path / "run")
    flags = dict(method="advent", num_steps=3, checkpoint_every=1, image_summary_every=0,
                 deterministic=True)
    first = train_helpers.run_train(train_helpers.tiny_flags(one_pair, train_dir, **flags))
    assert first.returncode == 0, first.stderr[-3000:]
    # --deterministic swaps oneDNN's kernels for TensorFlow's own, once.
    assert first.stderr.count("--deterministic: restarting with TF_ENABLE_ONEDNN_OPTS=0") == 1
    ckpt_dir = os.path.join(train_dir, "checkpoints")
    newest = os.path.join(ckpt_dir, "ckpt-3")
    assert tf.train.latest_checkpoint(ckpt_dir) == newest
    pristine = _all_variables(newest)
    data_file = newest + ".data-00000-of-00001"
    with open(data_file, "r+b") as f:
        f.truncate(os.path.getsize(data_file) // 2)
    # Later runs start with oneDNN off (no restart: one TensorFlow start-up less each).
    env = train_helpers.train_env(TF_ENABLE_ONEDNN_OPTS="0")
    rerun = train_helpers.run_train(train_helpers.tiny_flags(one_pair, train_dir, **flags), env=env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "restarting with" not in rerun.stderr
    assert f"Checkpoint {newest} cannot be read" in rerun.stderr
    assert f"Resumed from {os.path.join(ckpt_dir, 'ckpt-2')}" in rerun.stderr
    assert sorted(os.listdir(os.path.join(ckpt_dir, "unreadable"))) == [
        "ckpt-3.data-00000-of-00001", "ckpt-3.index"]
    remade = _all_variables(newest)
    assert remade.keys() == pristine.keys()
    for name, value in pristine.items():
        np.testing.assert_array_equal(remade[name], value, err_msg=name)
    # Another experiment on the same --train_dir: refused before training,
    # naming the flag against the run's record, and nothing touched.
    record = os.path.join(train_dir, "config.json")
    files, recorded = sorted(os.listdir(ckpt_dir)), open(record).read()
    other_flags = train_helpers.tiny_flags(
        one_pair, train_dir, **dict(flags, method="minent", backbone="resnet_tiny", num_steps=5))
    other = train_helpers.run_train(other_flags, env=env)
    assert other.returncode != 0
    assert (f"--train_dir={train_dir}: resuming would continue the recorded experiment"
            in other.stderr), other.stderr[-3000:]
    assert f"recorded experiment ({record})" in other.stderr
    assert "--backbone: 'resnet_mini' in the record, now 'resnet_tiny'" in other.stderr
    assert "--method: 'advent' in the record, now 'minent'" in other.stderr
    assert "Traceback" not in other.stderr
    assert sorted(os.listdir(ckpt_dir)) == files and open(record).read() == recorded
    # Without the record (a run of an older version), the checkpoint itself refuses.
    os.remove(record)
    os.remove(os.path.join(train_dir, "run.flags"))
    other = train_helpers.run_train(other_flags, env=env)
    assert other.returncode != 0
    assert f"--train_dir={train_dir}: checkpoint {newest} does not fit" in other.stderr, \
        other.stderr[-3000:]
    assert sorted(os.listdir(ckpt_dir)) == files and not os.path.exists(record)
