"""Run by test_train_multi_worker.py as each worker of a real cluster (TF_CONFIG set).

Builds the training input exactly as `advent_tf.train` does
(`pipeline.make_train_dataset` with the global batch and the run's seed,
`train.make_strategy("multi_worker")`) and distributes it as Keras' `fit`
does (`strategy.experimental_distribute_dataset`, keras/src/backend/
tensorflow/trainer.py). Prints one JSON line: per step, the frame indices of
the source and target examples this worker received. The frames hold their
index in their red and green channels (`train_helpers.indexed_frames`).

    python worker_data_check.py PATTERN HEIGHT WIDTH GLOBAL_BATCH STEPS SEED
"""

import json
import sys

import keras

from advent_tf.core import constants
from advent_tf.data import pipeline
import train_helpers


def train_dataset(pattern, size, batch_size, seed):
    """The training input of `train --seed=SEED` with PATTERN as source and target.

    As in `train`: Keras is seeded first (by the factory), then the dataset is
    made, so that its shuffles combine the same global and op seeds.
    """
    keras.utils.set_random_seed(seed)
    return pipeline.make_train_dataset(pattern, pattern, size, size, batch_size, seed=seed)


def main(pattern, height, width, global_batch, steps, seed):
    # Imported here: the test imports this module, and train defines absl flags
    # that other tools' flags would clash with in the test process.
    from advent_tf import train

    strategy = train.make_strategy("multi_worker")
    dataset = train_dataset(pattern, (int(height), int(width)), int(global_batch), int(seed))
    received = []
    for step, batch in enumerate(strategy.experimental_distribute_dataset(dataset)):
        if step == int(steps):
            break
        received.append({key: [i for part in strategy.experimental_local_results(batch[key])
                               for i in train_helpers.frame_indices(part)]
                         for key in (constants.SOURCE_IMAGE, constants.TARGET_IMAGE)})
    print(json.dumps({"replicas": strategy.num_replicas_in_sync,
                      "steps": received}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
