"""PyTorch's SGD as a Keras 3 optimizer, with the reference's per-parameter quirks.

The reference trains the segmentation network with `torch.optim.SGD(momentum=0.9,
weight_decay=5e-4)`. Keras' SGD differs in two ways that change the numbers:
its weight decay is decoupled (w -= lr * wd * w, outside the momentum), and
its momentum buffer holds lr-scaled steps. `TorchSGD` follows PyTorch instead:

    g <- g + wd * w            (coupled weight decay, before momentum)
    buf <- momentum * buf + g  (buf = g at the first step: buf starts at 0)
    w <- w - lr * buf

It also carries the two per-parameter settings of the reference:

- a learning-rate multiplier (the ASPP classifiers train at 10x), and
- update repeats: the reference lists each backbone tensor several times in
  its parameter group, and torch 0.4.1 (the paper's version) then applied that
  many sequential updates per step, sharing one momentum buffer. Its SGD added
  the weight decay to `p.grad` in place, so every repeat adds wd * w (of the
  already-updated weights) on top of the previous repeat's decayed gradient.
  Repeating the update reproduces the published training; leaving it at 1
  gives modern PyTorch's behaviour.
"""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="advent_tf")
class TorchSGD(keras.optimizers.Optimizer):
    """SGD with momentum and coupled weight decay, as `torch.optim.SGD`.

    Per-variable settings are keyed by the optimizer's own variable key (the
    identity of the underlying, possibly distributed, variable), so they are
    found again inside `tf.function`, XLA and `tf.distribute` replicas. They
    are code, not state: re-apply them after `from_config`; checkpoints hold
    the momentum buffers and the iteration count.

    Args:
      learning_rate: float or `LearningRateSchedule` (before multipliers).
      momentum: momentum factor (no dampening, no Nesterov).
      weight_decay: L2 coefficient added to the gradient (PyTorch's
        `weight_decay`, not Keras' decoupled one).
      name: optimizer name.
      **kwargs: other `keras.optimizers.Optimizer` arguments (clipnorm,
        loss_scale_factor, ...); Keras' own `weight_decay` is not available.
    """

    def __init__(self, learning_rate=0.01, momentum=0.9, weight_decay=0.0,
                 name="torch_sgd", **kwargs):
        # Keras would apply `weight_decay` decoupled on top of ours: keep it off.
        super().__init__(learning_rate=learning_rate, weight_decay=None, name=name, **kwargs)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}.")
        if weight_decay < 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}.")
        self.momentum = momentum
        self.coupled_weight_decay = weight_decay
        self._lr_multipliers = {}
        self._update_repeats = {}

    def set_lr_multiplier(self, variables, multiplier):
        """Scales the learning rate of `variables` by `multiplier` (e.g. 10 for ASPP heads).

        Args:
          variables: iterable of model variables.
          multiplier: positive float.
        """
        for variable in variables:
            self._lr_multipliers[self._var_key(variable)] = float(multiplier)

    def set_update_repeats(self, variables, repeats):
        """Applies `repeats` sequential updates per step to `variables`.

        Emulates torch 0.4.1 with a tensor listed `repeats` times in the
        parameter group (the reference's backbone): repeat r uses the gradient
        g + wd * (w_0 + ... + w_{r-1}) (0.4.1 decayed `p.grad` in place, so the
        decay terms pile up), where w_i are the weights after i repeats, and
        advances the shared momentum buffer with it.

        Args:
          variables: iterable of model variables.
          repeats: positive int.
        """
        if int(repeats) != repeats or repeats < 1:
            raise ValueError(f"repeats must be a positive integer, got {repeats}.")
        for variable in variables:
            self._update_repeats[self._var_key(variable)] = int(repeats)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = self.add_optimizer_variables(variables, "momentum")

    def update_step(self, gradient, variable, learning_rate):
        key = self._var_key(variable)
        dtype = variable.dtype
        lr = tf.cast(learning_rate, dtype) * tf.cast(self._lr_multipliers.get(key, 1.0), dtype)
        gradient = tf.cast(gradient, dtype)
        momentum = tf.cast(self.momentum, dtype)
        weight_decay = tf.cast(self.coupled_weight_decay, dtype)
        buf_var = self.momentums[self._get_variable_index(variable)]
        for _ in range(self._update_repeats.get(key, 1)):
            # Read the weights only once the gradient exists. Nothing else
            # orders the first read, so the executor would compute wd * w at
            # the start of the step and keep it (the network's size) alive
            # through the forward and backward passes. Later repeats' reads
            # follow the previous update (both touch the same variable).
            with tf.control_dependencies([gradient]):
                weights = tf.convert_to_tensor(variable)
            gradient = gradient + weight_decay * weights
            # In place, in PyTorch's operation order (buf * momentum + g, then
            # w - lr * buf), so float64 runs agree bit for bit: one kernel
            # and no temporaries instead of four operations and two copies.
            tf.raw_ops.ResourceApplyMomentum(var=variable.handle, accum=buf_var.handle, lr=lr,
                                             grad=gradient, momentum=momentum)

    def get_config(self):
        config = super().get_config()
        config.update({
            "momentum": self.momentum,
            "weight_decay": self.coupled_weight_decay,
        })
        return config


@keras.saving.register_keras_serializable(package="advent_tf")
class TorchAdam(keras.optimizers.Adam):
    """Adam with PyTorch's epsilon placement, as `torch.optim.Adam` (the discriminators').

    Keras folds the bias corrections into the step size,
    ``w -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)``, which
    amounts to an epsilon of ``eps / sqrt(1 - b2^t)`` in PyTorch's form
    (10x larger at the first step with beta_2 = 0.99). PyTorch corrects v
    first and then adds epsilon:

        m <- m + (1 - b1) * (g - m);  v <- b2 * v + (1 - b2) * g^2
        w <- w - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

    The discriminators' small gradients make the difference visible after
    one step (tests/test_reference_iteration.py). Same slots as Keras' Adam,
    so checkpoints of either restore into the other.

    Args:
      learning_rate, beta_1, beta_2, epsilon, name, **kwargs: as
        `keras.optimizers.Adam`; ``amsgrad`` is not supported.
    """

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 name="torch_adam", **kwargs):
        if kwargs.get("amsgrad"):
            raise ValueError("TorchAdam does not implement amsgrad.")
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                         epsilon=epsilon, name=name, **kwargs)

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = tf.cast(learning_rate, dtype)
        gradient = tf.cast(gradient, dtype)
        step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        index = self._get_variable_index(variable)
        m = self._momentums[index]
        v = self._velocities[index]
        # Not before the gradient exists (v * beta_2 would be computed at the
        # start of the step and held through it): see `TorchSGD.update_step`.
        with tf.control_dependencies([gradient]):
            m_now, v_now = tf.convert_to_tensor(m), tf.convert_to_tensor(v)
        self.assign_add(m, (gradient - m_now) * (1 - beta_1))
        self.assign(v, v_now * beta_2 + (1 - beta_2) * gradient * gradient)
        denom = (tf.sqrt(tf.convert_to_tensor(v)) / tf.sqrt(1 - tf.pow(beta_2, step))
                 + tf.cast(self.epsilon, dtype))
        self.assign_sub(variable, lr / (1 - tf.pow(beta_1, step)) * m / denom)
