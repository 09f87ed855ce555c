"""The numeric core: losses (paper equations), ops, metrics, optimizers, schedules, XLA, constants."""
