"""Builds what an `ExperimentConfig` describes: segmenter, discriminators, optimizers, method.

The one place where a configuration becomes Keras objects: `train`, the
benchmark and the tests all build their methods here, so what the parity
tests check is what `train` runs.
"""

import keras

from advent_tf import methods
from advent_tf import models
from advent_tf.core import optimizers
from advent_tf.core import schedules


def build_segmenter(model_config):
    """The DeepLab-V2 segmenter of a `config.ModelConfig`."""
    return models.build_segmenter(model_config.backbone, model_config.num_classes,
                                  model_config.multi_level, model_config.bn_mode)


def loss_weights(method_config):
    """The `methods.LossWeights` of a `config.MethodConfig`."""
    return methods.LossWeights(**{
        name: getattr(method_config, f"lambda_{name}")
        for name in ("seg_main", "seg_aux", "ent_main", "ent_aux", "adv_main", "adv_aux", "cp")})


def _poly(optim, base_lr, multiplier=1.0):
    return schedules.PolySchedule(base_lr, horizon=optim.lr_horizon, power=optim.power,
                                  multiplier=multiplier)


def _maybe_loss_scale(optimizer, precision):
    """float16 needs dynamic loss scaling; bfloat16 and float32 do not."""
    if precision == "mixed_float16":
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def segmenter_optimizer(config, segmenter):
    """The reference's SGD of F: poly schedule, heads at `head_lr_multiplier`, repeats.

    `backbone_update_repeats`: "reference" updates each backbone tensor as
    often as the reference's optimizer listing names it (what torch 0.4.1
    did with the paper's code); "deduplicated" (or 1) once per step; an
    integer that many times.
    """
    optim = config.optim
    sgd = optimizers.TorchSGD(learning_rate=_poly(optim, optim.learning_rate),
                              momentum=optim.momentum, weight_decay=optim.weight_decay)
    sgd.set_lr_multiplier(models.head_variables(segmenter), optim.head_lr_multiplier)
    if optim.backbone_update_repeats == "reference":
        for variable, count in models.reference_update_repeats(segmenter):
            sgd.set_update_repeats([variable], count)
    else:
        repeats = optim.backbone_update_repeats
        sgd.set_update_repeats(models.backbone_variables(segmenter),
                               1 if repeats == "deduplicated" else int(repeats))
    return sgd


def discriminator_optimizer(config):
    """The reference's Adam of a discriminator: betas (0.9, 0.99), PyTorch's epsilon rule."""
    return optimizers.TorchAdam(_poly(config.optim, config.optim.learning_rate_d),
                                beta_1=0.9, beta_2=0.99, epsilon=1e-8)


def build_method(config, class_prior=None, segmenter=None, discriminators=None):
    """Builds and compiles the training method of `config`.

    Must be called inside the strategy scope. The random initialisation is
    seeded with `config.run.seed`.

    Args:
      config: an `ExperimentConfig` (already `config.validate`d).
      class_prior: p_s [num_classes] for the class-ratio prior, or None.
      segmenter: a segmenter to train instead of a fresh one (e.g. with
        weights already loaded).
      discriminators: for AdvEnt, (main, aux or None) to use instead of fresh
        ones.

    Returns:
      The compiled `methods.DomainAdaptationModel`.
    """
    keras.utils.set_random_seed(config.run.seed)
    if segmenter is None:
        segmenter = build_segmenter(config.model)
    precision = config.run.mixed_precision
    sgd = _maybe_loss_scale(segmenter_optimizer(config, segmenter), precision)
    kwargs = dict(weights=loss_weights(config.method), class_prior=class_prior,
                  prior_mu=config.method.prior_mu)
    jit = dict(jit_compile=config.run.jit_compile)
    name = config.method.method
    if name == "advent":
        multi_level = config.model.multi_level
        if discriminators is None:
            # The discriminators compute in float32 under every policy: at the
            # start of training their gradient is the small difference of a
            # source and a target term that 16-bit arithmetic rounds away
            # (measured on a fresh AdvEnt: bfloat16 gradients orthogonal to
            # float32's, exactly 0 for one D). They cost a few % of a step.
            def discriminator(name):
                return models.build_discriminator(config.model.num_classes, name=name,
                                                  dtype="float32")
            discriminators = (discriminator("discriminator_main"),
                              discriminator("discriminator_aux") if multi_level else None)
        d_main, d_aux = discriminators
        method = methods.AdvEnt(segmenter, d_main, d_aux, **kwargs)
        adam_aux = (_maybe_loss_scale(discriminator_optimizer(config), precision)
                    if d_aux is not None else None)
        method.compile(sgd, _maybe_loss_scale(discriminator_optimizer(config), precision),
                       adam_aux, **jit)
    elif name == "minent":
        method = methods.MinEnt(segmenter, entropy_top_fraction=config.method.entropy_top_fraction,
                                **kwargs)
        method.compile(sgd, **jit)
    else:
        method = methods.SourceOnly(segmenter, **kwargs)
        method.compile(sgd, **jit)
    return method
