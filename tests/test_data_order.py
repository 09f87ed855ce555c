"""The training stream samples the whole split uniformly, as the reference's shuffled DataLoader.

A split of 3,000 tiny records whose index is written into their pixels is
converted by the real writer and read by the real training pipeline. Over
windows of 100 consecutive draws, the statistic is the share of the split's
100 equal blocks of consecutive frames that the window hits: uniform draws
hit 1 - (1 - 1/100)^100 = 0.634 of them; a stream that reads a few
source-ordered shards through a bounded buffer hits far fewer (0.18 measured
before the writer permuted the samples).
"""

import numpy as np
import PIL.Image
import pytest

from advent_tf.core import constants
from advent_tf.data import pipeline
from advent_tf.data import sources
from advent_tf.data import tfrecord_writer
import train_helpers

NUM_RECORDS = 3000
NUM_BLOCKS = 100
WINDOW = 100
SIZE = (4, 4)


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    """images/NNNNN.png whose red and green channels hold the frame index; labels all class 0."""
    root = tmp_path_factory.mktemp("ordered")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    label = PIL.Image.fromarray(np.zeros(SIZE, np.uint8))
    for index, pixels in enumerate(train_helpers.indexed_frames(NUM_RECORDS, SIZE)):
        PIL.Image.fromarray(pixels).save(root / "images" / f"{index:05d}.png")
        label.save(root / "labels" / f"{index:05d}.png")
    (root / "map.txt").write_text("0 0\n")
    return root


def _convert(root, output_dir, order_seed):
    source = sources.folder(str(root), 2, label_map_file=str(root / "map.txt"))
    tfrecord_writer.convert_split(source, str(output_dir), "train", num_shards=16,
                                  num_workers=1, order_seed=order_seed)
    return str(output_dir / "train-*.tfrecord")


def _draws(pattern, count):
    """Frame indices of the first `count` source images of the training stream."""
    dataset = pipeline.make_train_dataset(pattern, pattern, SIZE, SIZE, batch_size=1, seed=0)
    indices = []
    for batch in dataset.take(count):
        indices.extend(train_helpers.frame_indices(batch[constants.SOURCE_IMAGE]))
    return np.array(indices)


def block_coverage(indices):
    """Mean share of the NUM_BLOCKS blocks hit by each window of WINDOW consecutive draws."""
    blocks = indices * NUM_BLOCKS // NUM_RECORDS
    shares = [len(set(blocks[i:i + WINDOW])) / NUM_BLOCKS
              for i in range(0, len(blocks) - WINDOW + 1, WINDOW)]
    return float(np.mean(shares))


def test_training_stream_is_uniform_over_the_split(dataset_root, tmp_path):
    pattern = _convert(dataset_root, tmp_path / "shuffled", order_seed=0)
    draws = _draws(pattern, NUM_RECORDS)
    assert draws.min() >= 0 and draws.max() < NUM_RECORDS
    coverage = block_coverage(draws)
    print(f"block coverage, permuted shards: {coverage:.3f} (uniform: 0.634)")
    assert coverage > 0.58, coverage
    # One epoch reads every record once before any repeats.
    assert len(set(draws.tolist())) > 0.95 * NUM_RECORDS


def test_source_order_shards_are_what_the_statistic_catches(dataset_root, tmp_path):
    """The same reader over shards in source order: the narrow window the reference avoids."""
    pattern = _convert(dataset_root, tmp_path / "source_order", order_seed=None)
    coverage = block_coverage(_draws(pattern, NUM_RECORDS))
    print(f"block coverage, source-ordered shards: {coverage:.3f}")
    assert coverage < 0.35, coverage


def test_the_permutation_is_recorded_and_seeded(dataset_root, tmp_path):
    from advent_tf.data import manifest as manifest_lib

    _convert(dataset_root, tmp_path / "a", order_seed=7)
    manifest = manifest_lib.read_manifest(str(tmp_path / "a"), "train")
    assert manifest["order_seed"] == 7
    assert sorted(manifest["order"]) == list(range(NUM_RECORDS))
    np.testing.assert_array_equal(manifest["order"],
                                  tfrecord_writer.sample_order(NUM_RECORDS, 7))
