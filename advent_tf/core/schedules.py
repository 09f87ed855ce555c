"""The reference's "poly" learning-rate schedule, with its horizon/stop distinction.

The reference decays every learning rate as
base * (1 - step / horizon) ** 0.9 with a horizon of 250,000 iterations
(90,000 for SYNTHIA), but stops training at 120,000 iterations: the decay is
never completed and the last learning rate is about 0.555 x base. The horizon
belongs to the schedule; the stop step belongs to the trainer.
"""

import keras
import tensorflow as tf

# Decay horizon of the reference for GTA5 -> Cityscapes.
REFERENCE_HORIZON = 250_000
# Decay horizon of the reference for SYNTHIA -> Cityscapes (reference issue #12).
SYNTHIA_HORIZON = 90_000
# Iteration at which the reference stops training (the trainer's `stop` step).
REFERENCE_STOP_STEP = 120_000


@keras.saving.register_keras_serializable(package="advent_tf")
class PolySchedule(keras.optimizers.schedules.LearningRateSchedule):
    """lr(step) = base_lr * multiplier * (1 - step / horizon) ** power, 0 past the horizon.

    Matches the reference's `lr_poly` / `adjust_learning_rate` (step counted
    from 0, the update of iteration i uses lr(i)). The multiplier gives the
    reference's x10 learning rate of the ASPP classifiers without a second
    schedule class. Evaluated in float64 so that neighbouring steps near the
    stop step stay distinct, then returned as float32.

    Args:
      base_lr: learning rate at step 0 (2.5e-4 for the segmentation network,
        1e-4 for the discriminators in the reference).
      horizon: step at which the rate would reach 0.
      power: exponent of the decay (0.9).
      multiplier: constant factor applied to the whole schedule.
    """

    def __init__(self, base_lr, horizon=REFERENCE_HORIZON, power=0.9, multiplier=1.0):
        if horizon <= 0:
            raise ValueError(f"horizon must be positive, got {horizon}.")
        self.base_lr = base_lr
        self.horizon = horizon
        self.power = power
        self.multiplier = multiplier

    def __call__(self, step):
        step = tf.cast(step, tf.float64)
        remaining = 1.0 - tf.minimum(step, float(self.horizon)) / float(self.horizon)
        lr = self.base_lr * self.multiplier * tf.pow(remaining, self.power)
        return tf.cast(lr, tf.float32)

    def get_config(self):
        return {
            "base_lr": self.base_lr,
            "horizon": self.horizon,
            "power": self.power,
            "multiplier": self.multiplier,
        }
