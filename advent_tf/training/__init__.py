"""Training infrastructure: checkpoints, callbacks and the loop behind `advent_tf.train`."""
