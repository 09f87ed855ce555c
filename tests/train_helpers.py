"""Helpers of the training tests: tiny demo-format data and the real entry point in a subprocess.

The entry point runs in a subprocess because absl flags are process-global and
other tools imported by the test session define flags of the same names.
"""

import os
import subprocess
import sys

import numpy as np

from advent_tf.core import preprocessing
from advent_tf.data import demo

TINY_SPLITS = (("source", "train", 8, True), ("target", "train", 8, False),
               ("target", "val", 4, True))
TINY_SIZE = (32, 64)  # (height, width)


def make_tiny_data(root):
    """Demo data at 32x64 through the real generator and converter; returns its patterns."""
    return demo.make_demo_data(root, seed=0, image_size=TINY_SIZE, splits=TINY_SPLITS,
                               num_shards=2)


def tiny_flags(patterns, train_dir, **overrides):
    """Flags of a tiny but complete training run (resnet_mini, 32x64, 2 steps)."""
    values = dict(
        source_pattern=patterns["source_train"], target_pattern=patterns["target_train"],
        source_size="64,32", target_size="64,32", backbone="resnet_mini", num_classes=19,
        learning_rate=0.01, num_steps=2, lr_horizon=100, batch_size=2, train_dir=train_dir,
        checkpoint_every=1, log_every=1, image_summary_every=2, seed=3)
    values.update(overrides)
    return [f"--{k}={v}" if v is not True else f"--{k}" for k, v in values.items()]


def train_env(**extra):
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1", **extra)


def run_train(args, timeout=300, env=None):
    """Runs `python -m advent_tf.train ARGS`; returns the CompletedProcess (text)."""
    env = env or train_env()
    return subprocess.run([sys.executable, "-m", "advent_tf.train", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def indexed_frames(count, size):
    """uint8 [count, H, W, 3] frames whose red and green channels hold their index."""
    frames = np.zeros((count, *size, 3), np.uint8)
    frames[..., 0] = (np.arange(count) // 256)[:, None, None]
    frames[..., 1] = (np.arange(count) % 256)[:, None, None]
    return frames


def frame_indices(images):
    """The index of each `indexed_frames` frame in a preprocessed batch [B, H, W, 3]."""
    pixels = preprocessing.unpreprocess_image(images[:, 0, 0]).numpy().astype(int)
    return [int(red) * 256 + int(green) for red, green, _ in pixels]
