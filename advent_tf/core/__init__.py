"""The numeric core: losses (the paper's equations), ops, metrics, optimizers, schedules."""
