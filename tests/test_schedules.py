"""Tests for advent_tf.schedules against the reference's poly learning rates."""

import keras
import numpy as np

from advent_tf import schedules


def _lrs(schedule, steps):
    return np.array([float(schedule(step)) for step in steps])


def test_poly_schedule_matches_reference(ref):
    steps = ref["e_iters"]
    np.testing.assert_allclose(
        _lrs(schedules.PolySchedule(2.5e-4), steps), ref["e_lr_seg_1x"], rtol=1e-6)
    np.testing.assert_allclose(
        _lrs(schedules.PolySchedule(2.5e-4, multiplier=10), steps), ref["e_lr_seg_10x"], rtol=1e-6)
    np.testing.assert_allclose(
        _lrs(schedules.PolySchedule(1e-4), steps), ref["e_lr_disc"], rtol=1e-6)


def test_horizon_is_not_the_stop_step():
    schedule = schedules.PolySchedule(1.0)
    at_stop = float(schedule(schedules.REFERENCE_STOP_STEP))
    np.testing.assert_allclose(at_stop, (1 - 120_000 / 250_000) ** 0.9, rtol=1e-6)
    assert float(schedule(schedules.REFERENCE_HORIZON)) == 0.0
    assert float(schedule(schedules.REFERENCE_HORIZON + 10)) == 0.0


def test_poly_schedule_config_round_trip():
    schedule = schedules.PolySchedule(2.5e-4, horizon=schedules.SYNTHIA_HORIZON, multiplier=10)
    restored = schedules.PolySchedule.from_config(schedule.get_config())
    assert restored.get_config() == schedule.get_config()
    serialized = keras.optimizers.schedules.serialize(schedule)
    # Registered with Keras, so optimizer configs holding it deserialize as is.
    assert keras.optimizers.schedules.deserialize(serialized).horizon == 90_000
