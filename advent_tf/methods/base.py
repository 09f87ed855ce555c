"""Machinery shared by every training method: one `keras.Model` subclass per method.

A method wraps the segmentation network F (and, for AdvEnt, the discriminators)
and overrides `train_step` with exactly one iteration of the reference code
(valeoai/ADVENT, `advent/domain_adaptation/train_UDA.py`). This base class holds
what every iteration has in common: the supervised source pass, the gradient
bookkeeping, the segmenter's optimizer step and the metric trackers.

Distribution: Keras sums gradients over replicas, so every loss below is scaled
to its share of the global loss (Keras' train_step applies the summed
per-replica gradients, it does not average them). The source cross-entropy is
a mean over the valid pixels of the *global* batch, so each replica's mean is
weighted by its share of the valid pixels; fixed-size means (entropy, BCE) are
divided by the number of replicas. Logged values are the unscaled losses.
"""

import dataclasses

import keras
import tensorflow as tf

from advent_tf.experiment import config
from advent_tf.core import constants
from advent_tf.core import losses
from advent_tf.core import ops
from advent_tf.models import split_outputs


_DEFAULTS = config.MethodConfig()


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Loss weights (`--lambda_*`; reference `cfg.TRAIN.LAMBDA_*`); aux = layer3 head."""

    seg_main: float = _DEFAULTS.lambda_seg_main
    seg_aux: float = _DEFAULTS.lambda_seg_aux
    ent_main: float = _DEFAULTS.lambda_ent_main
    ent_aux: float = _DEFAULTS.lambda_ent_aux
    adv_main: float = _DEFAULTS.lambda_adv_main
    adv_aux: float = _DEFAULTS.lambda_adv_aux
    cp: float = _DEFAULTS.lambda_cp


def num_replicas():
    return tf.distribute.get_strategy().num_replicas_in_sync


def _global_sum(value):
    """Sums a per-replica scalar over all replicas (identity on one device)."""
    context = tf.distribute.get_replica_context()
    if context is None:  # Cross-replica context: the value is already global.
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def upsampled_probabilities(logits, size):
    """Softmax of logits upsampled (align_corners=True) to `size`, as the reference does."""
    upsampled = ops.resize_bilinear_align_corners(tf.cast(logits, tf.float32), size)
    return tf.nn.softmax(upsampled, axis=-1)


def waiting_for(tensors):
    """A context in which the ops created start only once `tensors` are computed.

    The ops wait on one NoOp that waits on all of `tensors`.
    `tf.control_dependencies(tensors)` itself would give every op created
    in it that has no input from inside it (each constant, each variable
    read) one control input per tensor: gating a pass on ResNet-101's ~170
    gradients that way gave some 4,500 such ops ~170 control inputs each,
    which made MinEnt's traced step 30.5 MB of FunctionDef (source-only's:
    2.1 MB) and TensorFlow's copies of that graph ~750 MiB of host memory
    (peak resident set at 640x360 + 512x256; 3.9 MB and -750 MiB with one
    NoOp).

    Args:
      tensors: tensors or None (skipped), e.g. a gradient list.
    """
    return tf.control_dependencies([tf.group(*[t for t in tensors if t is not None])])


def add_gradients(first, second):
    """Element-wise sum of two gradient lists, where either entry may be None."""
    return [a if b is None else b if a is None else a + b for a, b in zip(first, second)]


class DomainAdaptationModel(keras.Model):
    """Base of the training methods: source-supervised pass plus SGD step for F.

    Subclasses implement `train_step` as `begin_step`, `source_step`, their
    own target terms, `apply_segmenter_gradients`, and return `logs()`.

    Args:
      segmenter: the DeepLab-V2 network from `advent_tf.models.build_segmenter`.
      weights: a `LossWeights`.
      class_prior: optional source class-ratio prior p_s [C] (eq. 10, "CP");
        when given, the target loss gains `weights.cp * L_cp` on the main head.
      prior_mu: mu of eq. 10 (0.5 in the paper).
    """

    def __init__(self, segmenter, weights=LossWeights(), class_prior=None, prior_mu=0.5,
                 **kwargs):
        super().__init__(**kwargs)
        self.segmenter = segmenter
        self.loss_weights_config = weights
        self.class_prior = None if class_prior is None else tf.constant(class_prior, tf.float32)
        self.prior_mu = prior_mu
        self._trackers = {}
        self.multi_level = len(segmenter.outputs) == 2
        self.create_trackers(["loss_seg_main"] + (["loss_seg_aux"] if self.multi_level else [])
                             + (["loss_cp"] if class_prior is not None else []))
        # The sub-networks are built functional models. An unbuilt subclassed
        # model makes fit() build it by calling call() on the first batch, the
        # whole dict of source and target tensors, which the segmenter cannot
        # take: marking the wrapper built skips that.
        self.built = True

    # -- Keras plumbing -----------------------------------------------------
    def call(self, images, training=False):
        return self.segmenter(images, training=training)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Skips Keras' symbolic build in `fit`: everything is built already.

        The networks are built functional models, the optimizers are built in
        `compile` and the trackers in the constructor. Under a strategy Keras
        would otherwise draw the first batch and average it across replicas
        with `strategy.reduce`, which MultiWorkerMirroredStrategy's collectives
        cannot do for a dict of tensors (every worker crashed at the first
        step with "Attempt to convert a value ({'source_image': PerReplica...")
        and which consumes a batch of the stream for nothing.
        """
        del iterator, data_batch

    def compile(self, optimizer, **kwargs):
        """Compiles with the segmenter's SGD; builds its slots now.

        Keras would otherwise create the slot variables lazily at the first
        `apply_gradients`, inside the replica step, where a distribution
        strategy cannot create variables.
        """
        super().compile(optimizer=optimizer, **kwargs)
        self.optimizer.build(self.segmenter.trainable_variables)

    def create_trackers(self, names):
        """Creates `keras.metrics.Mean` trackers up front, inside the strategy scope.

        Variables cannot be created inside a replica step, so every logged name
        is declared here by the method's constructor.
        """
        for name in names:
            self._trackers[name] = keras.metrics.Mean(name=name)

    @property
    def metrics(self):
        return list(self._trackers.values())

    def begin_step(self):
        """Resets the trackers so that each step logs its own losses, not a running mean."""
        self.reset_metrics()

    def log(self, **values):
        for name, value in values.items():
            self._trackers[name].update_state(value)

    def logs(self):
        logs = {name: tracker.result() for name, tracker in self._trackers.items()}
        logs["lr"] = self._current_lr()
        if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            # Keras averages each log over the workers with strategy.reduce(..., axis=0),
            # which fails on a scalar ("Invalid reduction dimension 0"): give it an axis.
            logs = {name: tf.reshape(value, [1]) for name, value in logs.items()}
        return logs

    def _current_lr(self):
        lr = self.optimizer.learning_rate
        return tf.cast(lr, tf.float32)

    # -- The shared parts of one iteration ----------------------------------
    def forward(self, images):
        """Runs F in training mode; returns (aux logits or None, main logits)."""
        return split_outputs(self.segmenter(images, training=True))

    def source_step(self, images, labels):
        """Supervised source pass: L_seg = CE(main) + 0.1 CE(aux), and its gradients.

        Returns:
          (gradients w.r.t. the segmenter's trainable variables, (aux, main)
          low-resolution source logits for the methods that reuse them).
        """
        w = self.loss_weights_config
        valid = tf.reduce_sum(tf.cast(tf.not_equal(labels, constants.IGNORE_LABEL), tf.float32))
        global_valid = _global_sum(valid)
        share = tf.math.divide_no_nan(valid, global_valid)
        with tf.GradientTape() as tape:
            aux, main = self.forward(images)
            loss_main = losses.segmentation_loss(main, labels)
            loss = w.seg_main * loss_main
            if aux is not None:
                loss_aux = losses.segmentation_loss(aux, labels)
                loss += w.seg_aux * loss_aux
            scaled = self.optimizer.scale_loss(loss * share)
        grads = tape.gradient(scaled, self.segmenter.trainable_variables)
        self.log(loss_seg_main=loss_main)
        if aux is not None:
            self.log(loss_seg_aux=loss_aux)
        return grads, (aux, main)

    def target_step(self, loss_fn, after):
        """Runs `loss_fn` under a tape, once `after` exists; returns the gradients w.r.t. F.

        `loss_fn()` returns (the unscaled, per-replica target loss, extras):
        the loss is divided by the number of replicas because it is a
        fixed-size mean; `extras` (tensors the method needs after the
        backward pass, e.g. AdvEnt's target maps) is passed through.

        Args:
          loss_fn: the target loss, as above.
          after: the source gradients. The target pass starts only once
            they are computed, as in the reference, where the source
            backward has freed the source activations before the target
            forward: the graph executor would otherwise interleave the two
            passes and hold both passes' activations at once.

        Returns:
          (gradients w.r.t. the segmenter's trainable variables, extras).
        """
        with waiting_for(after):
            with tf.GradientTape() as tape:
                loss, extras = loss_fn()
                scaled = self.optimizer.scale_loss(loss / num_replicas())
        return tape.gradient(scaled, self.segmenter.trainable_variables), extras

    def target_probabilities(self, images):
        """Target pass of F: softmax of the logits upsampled to the input size.

        Returns:
          (aux probabilities or None, main probabilities), [B, H, W, C] float32.
        """
        size = tf.shape(images)[1:3]
        return tuple(None if logits is None else upsampled_probabilities(logits, size)
                     for logits in self.forward(images))

    def class_prior_term(self, prob_main):
        """Weighted class-ratio prior (eq. 10) on the main head, or 0 without a prior."""
        if self.class_prior is None:
            return 0.0
        loss = losses.class_ratio_prior_loss(prob_main, self.class_prior, self.prior_mu)
        self.log(loss_cp=loss)
        return self.loss_weights_config.cp * loss

    def apply_segmenter_gradients(self, grads):
        self.optimizer.apply_gradients(zip(grads, self.segmenter.trainable_variables))
