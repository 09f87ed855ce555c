"""Training methods: one `keras.Model` subclass per method, sharing `DomainAdaptationModel`."""

from advent_tf.methods.advent import AdvEnt
from advent_tf.methods.base import DomainAdaptationModel, LossWeights
from advent_tf.methods.minent import MinEnt
from advent_tf.methods.source_only import SourceOnly

__all__ = ["AdvEnt", "DomainAdaptationModel", "LossWeights", "MinEnt", "SourceOnly"]
