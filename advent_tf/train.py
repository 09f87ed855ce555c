"""Trains a segmenter with source-only, MinEnt (+ER, +CP) or AdvEnt (+CP).

    python -m advent_tf.train --flagfile=configs/gta.flags

Every option is an absl flag; configs/*.flags hold the paper's experiments.
A rerun of the same command resumes from the newest checkpoint in --train_dir.
"""

import os

import keras
import tensorflow as tf
from absl import app
from absl import flags
from absl import logging

from advent_tf import checkpoint_io
from advent_tf import cli
from advent_tf import evaluation
from advent_tf import metrics
from advent_tf import methods
from advent_tf import models
from advent_tf import optimizers
from advent_tf import schedules
from advent_tf.data import demo
from advent_tf.data import manifest as manifest_lib
from advent_tf.data import pipeline
from advent_tf.training import callbacks
from advent_tf.training import checkpoints
from advent_tf.training import run_flags

# -- Data ------------------------------------------------------------------
_SOURCE = flags.DEFINE_string("source_pattern", None, "Glob of the source TFRecord shards (labelled).")
_TARGET = flags.DEFINE_string("target_pattern", None, "Glob of the target TFRecord shards.")
_SOURCE_SIZE = flags.DEFINE_list("source_size", ["1280", "720"],
                                 "Source training size WIDTH,HEIGHT (reference GTA5: 1280,720).")
_TARGET_SIZE = flags.DEFINE_list("target_size", ["1024", "512"],
                                 "Target training size WIDTH,HEIGHT (reference: 1024,512).")
_AUGMENT = flags.DEFINE_bool("augment", False, "Random scale/crop/flip (off in the reference).")
_DEMO_DIR = flags.DEFINE_string(
    "demo_data_dir", None, "If set, the built-in demo data is generated there when missing.")
_EVAL_PATTERN = flags.DEFINE_string(
    "eval_pattern", None, "Labelled target split to score once training ends (optional).")
_EVAL_EVERY = flags.DEFINE_integer(
    "eval_every", 0, "Also score --eval_pattern every this many steps (0 = only at the end); "
    "mIoU goes to TensorBoard.", lower_bound=0)
_EVAL_SIZE = flags.DEFINE_list("eval_size", ["1024", "512"],
                               "Evaluation input size WIDTH,HEIGHT (reference: 1024,512).")

# -- Model -----------------------------------------------------------------
_BACKBONE = flags.DEFINE_enum("backbone", "resnet101",
                              list(models.BACKBONES), "Backbone.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 19, "19 (GTA5) or 16 (SYNTHIA).", lower_bound=2)
_MULTI_LEVEL = flags.DEFINE_bool("multi_level", True, "Auxiliary head on layer3 (reference).")
_BN_MODE = flags.DEFINE_enum("bn_mode", "reference", ["reference", "frozen"],
                             "reference: batch statistics in training, affine frozen; "
                             "frozen: running statistics always.")
_INIT = flags.DEFINE_string(
    "init_checkpoint", None, "Initial segmenter weights: a .weights.h5 of "
    "tools/convert_pytorch_checkpoint.py (the ImageNet initialisation or a released model), "
    "or a training checkpoint (a ckpt-N prefix or a train_dir: its newest). Every weight of "
    "the segmenter must be in it. Ignored when --train_dir already holds a checkpoint.")

# -- Method ----------------------------------------------------------------
_METHOD = flags.DEFINE_enum("method", "advent", ["source_only", "minent", "advent"],
                            "Training method.")
_TOP_FRACTION = flags.DEFINE_float(
    "entropy_top_fraction", None, "MinEnt+ER: keep this fraction of highest-entropy target "
    "pixels per sample (0.3 in the paper); unset = plain MinEnt.", lower_bound=0.0,
    upper_bound=1.0)
_PRIOR = flags.DEFINE_string("class_prior", None,
                             "JSON class-ratio prior p_s (tools/compute_class_prior.py): "
                             "enables CP (eq. 10).")
_MU = flags.DEFINE_float("prior_mu", 0.5, "mu of the class-ratio prior (eq. 10).", lower_bound=0.0)
_LAMBDAS = {name: flags.DEFINE_float(f"lambda_{name}", getattr(methods.LossWeights, name),
                                     f"Loss weight {name}.", lower_bound=0.0)
            for name in ("seg_main", "seg_aux", "ent_main", "ent_aux", "adv_main", "adv_aux",
                         "cp")}

# -- Optimisation -----------------------------------------------------------
_LR = flags.DEFINE_float("learning_rate", 2.5e-4, "Segmenter SGD base LR.", lower_bound=0.0)
_LR_D = flags.DEFINE_float("learning_rate_d", 1e-4, "Discriminator Adam base LR.", lower_bound=0.0)
_MOMENTUM = flags.DEFINE_float("momentum", 0.9, "SGD momentum.", lower_bound=0.0, upper_bound=1.0)
_WD = flags.DEFINE_float("weight_decay", 5e-4, "SGD weight decay (PyTorch-style, coupled).",
                         lower_bound=0.0)
_POWER = flags.DEFINE_float("power", 0.9, "Poly schedule power.", lower_bound=0.0)
_HORIZON = flags.DEFINE_integer("lr_horizon", 250000, "Poly schedule horizon (steps).",
                                lower_bound=1)
_STEPS = flags.DEFINE_integer("num_steps", 120000, "Training stops here (reference: 120000).",
                              lower_bound=1)
_HEAD_MULT = flags.DEFINE_float("head_lr_multiplier", 10.0, "LR multiplier of the ASPP heads.",
                                lower_bound=0.0)
_REPEATS = flags.DEFINE_string(
    "backbone_update_repeats", "1",
    "SGD updates per step of each backbone tensor. 'reference' emulates the reference's "
    "duplicated parameter list under torch 0.4.1 exactly: each tensor updated as often as "
    "it is listed (stem conv 1, block convs 3, projection convs 4; ResNet only); a positive "
    "integer applies that many to every backbone tensor; 1 is current PyTorch with each "
    "tensor listed once.")
flags.register_validator(
    "backbone_update_repeats",
    lambda value: value == "reference" or (value.isdigit() and int(value) >= 1),
    message="--backbone_update_repeats must be 'reference' or a positive integer")
_BATCH = flags.DEFINE_integer("batch_size", 1, "Global batch (source and target each).",
                              lower_bound=1)

# -- Run -------------------------------------------------------------------
_TRAIN_DIR = flags.DEFINE_string("train_dir", None, "Checkpoints and TensorBoard logs.")
_CKPT_EVERY = flags.DEFINE_integer("checkpoint_every", 2000, "Checkpoint period (steps).",
                                   lower_bound=1)
_KEEP = flags.DEFINE_integer("keep_checkpoints", 0, "Checkpoints kept (0 = all, for --mode=best).",
                             lower_bound=0)
_LOG_EVERY = flags.DEFINE_integer("log_every", 10, "Log/scalar period (steps).", lower_bound=1)
_IMAGE_EVERY = flags.DEFINE_integer("image_summary_every", 500,
                                    "TensorBoard image period (steps), 0 = never.", lower_bound=0)
_STRATEGY = flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker"],
                              "tf.distribute strategy (multi_worker reads TF_CONFIG).")
_JIT = flags.DEFINE_bool("jit_compile", False, "XLA-compile the whole train step.")
_PRECISION = flags.DEFINE_enum("mixed_precision", "float32",
                               ["float32", "mixed_bfloat16", "mixed_float16"],
                               "Keras dtype policy.")
_SEED = flags.DEFINE_integer("seed", 1234, "Random seed (weights init and data order).")
_DETERMINISTIC = flags.DEFINE_bool(
    "deterministic", False, "Deterministic TF ops (tf.config.experimental."
    "enable_op_determinism); a little slower.")

flags.mark_flags_as_required(["source_pattern", "target_pattern", "train_dir"])

_ALL_FLAGS = [holder for holder in list(globals().values()) + list(_LAMBDAS.values())
              if isinstance(holder, flags.FlagHolder)]
# A resumed run must keep these: they define what is learnt (the checkpoint
# alone cannot tell MinEnt from source-only, or one loss weighting from another).
_EXPERIMENT_FLAGS = [_METHOD, _TOP_FRACTION, _PRIOR, _MU, *_LAMBDAS.values(), _BACKBONE,
                     _NUM_CLASSES, _MULTI_LEVEL, _BN_MODE]
# These say how a run executes, not what it learns: they change on resume silently
# (--init_checkpoint is overridden by the restored checkpoint anyway). Any
# other change (schedule, data, precision) is allowed with a warning.
_EXECUTION_FLAGS = [_TRAIN_DIR, _DEMO_DIR, _INIT, _STEPS, _CKPT_EVERY, _KEEP, _LOG_EVERY,
                    _IMAGE_EVERY, _EVAL_PATTERN, _EVAL_EVERY, _EVAL_SIZE, _STRATEGY, _JIT,
                    _DETERMINISTIC]


def load_class_prior(path, num_classes):
    """Reads p_s (tools/compute_class_prior.py output or a manifest) and checks its length."""
    try:
        prior = manifest_lib.load_class_prior(path)
    except (OSError, ValueError, KeyError) as e:
        raise app.UsageError(f"--class_prior {path}: {e}")
    if prior.shape != (num_classes,):
        raise app.UsageError(f"--class_prior {path} has {prior.size} classes, "
                             f"--num_classes is {num_classes}")
    return prior


def make_strategy(name):
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def _poly(base_lr, multiplier=1.0):
    return schedules.PolySchedule(base_lr, horizon=_HORIZON.value, power=_POWER.value,
                                  multiplier=multiplier)


def _maybe_loss_scale(optimizer):
    """float16 needs dynamic loss scaling; bfloat16 and float32 do not."""
    if _PRECISION.value == "mixed_float16":
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def build_method(class_prior, init_checkpoint=None):
    """Builds segmenter, discriminators, optimizers and the compiled method.

    Must be called inside the strategy scope.

    Args:
      class_prior: p_s for the class-ratio prior, or None.
      init_checkpoint: initial segmenter weights (a path `checkpoint_io.resolve`
        returned), or None for the random initialisation.
    """
    keras.utils.set_random_seed(_SEED.value)
    segmenter = models.build_segmenter(_BACKBONE.value, _NUM_CLASSES.value, _MULTI_LEVEL.value,
                                       _BN_MODE.value)
    if init_checkpoint:
        try:
            checkpoint_io.load_weights(segmenter, init_checkpoint)
        except checkpoint_io.CheckpointError as error:
            raise app.UsageError(
                f"--init_checkpoint: {error} (the segmenter of these flags is "
                f"{_BACKBONE.value}, {_NUM_CLASSES.value} classes, "
                f"{'multi' if _MULTI_LEVEL.value else 'single'}-level)") from error
    sgd = optimizers.TorchSGD(learning_rate=_poly(_LR.value), momentum=_MOMENTUM.value,
                              weight_decay=_WD.value)
    sgd.set_lr_multiplier(models.head_variables(segmenter), _HEAD_MULT.value)
    if _REPEATS.value == "reference":
        for variable, count in models.reference_update_repeats(segmenter):
            sgd.set_update_repeats([variable], count)
    else:
        sgd.set_update_repeats(models.backbone_variables(segmenter), int(_REPEATS.value))
    kwargs = dict(weights=methods.LossWeights(**{k: v.value for k, v in _LAMBDAS.items()}),
                  class_prior=class_prior, prior_mu=_MU.value)
    compile_kwargs = dict(jit_compile=_JIT.value)
    if _METHOD.value == "advent":
        def discriminator_and_adam(name):
            # Reference: Adam(lr 1e-4, betas (0.9, 0.99)) on the same poly schedule.
            return (models.build_discriminator(_NUM_CLASSES.value, name=name),
                    _maybe_loss_scale(optimizers.TorchAdam(_poly(_LR_D.value), beta_1=0.9,
                                                            beta_2=0.99, epsilon=1e-8)))
        d_main, adam_main = discriminator_and_adam("discriminator_main")
        d_aux, adam_aux = (discriminator_and_adam("discriminator_aux") if _MULTI_LEVEL.value
                           else (None, None))
        method = methods.AdvEnt(segmenter, d_main, d_aux, **kwargs)
        method.compile(_maybe_loss_scale(sgd), adam_main, adam_aux, **compile_kwargs)
    else:
        if _METHOD.value == "minent":
            method = methods.MinEnt(segmenter, entropy_top_fraction=_TOP_FRACTION.value, **kwargs)
        else:
            method = methods.SourceOnly(segmenter, **kwargs)
        method.compile(_maybe_loss_scale(sgd), **compile_kwargs)
    return method


def _validate_data():
    """Checks shards exist and that their manifests agree with --num_classes."""
    for flag, pattern in (("source_pattern", _SOURCE.value), ("target_pattern", _TARGET.value),
                          ("eval_pattern", _EVAL_PATTERN.value)):
        if pattern is None:
            continue
        if not tf.io.gfile.glob(pattern):
            raise app.UsageError(f"--{flag}={pattern} matches no file")
        try:
            manifest = manifest_lib.read_manifest(pattern)
        except FileNotFoundError:
            logging.warning("--%s=%s has no manifest: class count not checked", flag, pattern)
            continue
        # An unlabelled target split carries no class ids to disagree with.
        if manifest["has_labels"] and manifest["num_classes"] != _NUM_CLASSES.value:
            raise app.UsageError(
                f"--{flag} data has {manifest['num_classes']} classes (manifest of {pattern}) "
                f"but --num_classes={_NUM_CLASSES.value}")


def _resuming():
    """Whether --train_dir holds a checkpoint to resume from."""
    ckpt_dir = checkpoints.checkpoint_dir(_TRAIN_DIR.value)
    return bool(tf.io.gfile.glob(os.path.join(ckpt_dir, "ckpt-*.index")))


def _check_resumed_flags():
    """Refuses to resume --train_dir as another experiment (before anything is built)."""
    if checkpoints.is_chief():
        try:
            run_flags.check_resume(_TRAIN_DIR.value, _ALL_FLAGS,
                                   [h.name for h in _EXPERIMENT_FLAGS],
                                   [h.name for h in _EXECUTION_FLAGS])
        except run_flags.FlagChangeError as error:
            raise app.UsageError(f"--train_dir={_TRAIN_DIR.value}: {error}") from error


def _flags_markdown():
    return "\n".join(f"    {line}" for line in flags.FLAGS.flags_into_string().splitlines()
                     if not line.startswith("--flagfile"))


def run():
    """Trains according to the parsed flags; returns the trained method."""
    if _DEMO_DIR.value:
        demo.ensure_demo_data(_DEMO_DIR.value)
    if _METHOD.value != "minent" and _TOP_FRACTION.value is not None:
        raise app.UsageError("--entropy_top_fraction (ER) applies to --method=minent only")
    if _REPEATS.value == "reference" and not _BACKBONE.value.startswith("resnet"):
        raise app.UsageError("--backbone_update_repeats=reference: the reference code has no "
                             f"{_BACKBONE.value} (its parameter listing is the ResNet's)")
    resuming = _resuming()
    # A resumed run restores its checkpoint over any initialisation: the
    # init file is not needed then (it may have been moved since).
    init_checkpoint = None
    if _INIT.value and not resuming:
        try:
            init_checkpoint = checkpoint_io.resolve(_INIT.value)
        except FileNotFoundError as error:
            raise app.UsageError(f"--init_checkpoint: {error}") from error
    _validate_data()
    if resuming:
        _check_resumed_flags()
    class_prior = load_class_prior(_PRIOR.value, _NUM_CLASSES.value) if _PRIOR.value else None
    source_size = cli.parse_size(_SOURCE_SIZE.value, "source_size")
    target_size = cli.parse_size(_TARGET_SIZE.value, "target_size")
    keras.mixed_precision.set_global_policy(_PRECISION.value)
    if _DETERMINISTIC.value:
        tf.config.experimental.enable_op_determinism()

    strategy = make_strategy(_STRATEGY.value)
    if _BATCH.value % strategy.num_replicas_in_sync:
        raise app.UsageError(f"--batch_size={_BATCH.value} must be a multiple of the "
                             f"{strategy.num_replicas_in_sync} replicas")
    with strategy.scope():
        method = build_method(class_prior, init_checkpoint)
        checkpoint = checkpoints.make_checkpoint(method)
    manager = tf.train.CheckpointManager(checkpoint, checkpoints.checkpoint_dir(_TRAIN_DIR.value),
                                         max_to_keep=_KEEP.value or None)
    try:
        checkpoints.restore_latest(checkpoint, manager)
    except (checkpoints.CheckpointMismatchError, checkpoints.NoReadableCheckpointError) as error:
        raise app.UsageError(f"--train_dir={_TRAIN_DIR.value}: {error}") from error
    # Recorded only now: a run refused above must not replace the record.
    if checkpoints.is_chief():
        run_flags.write(_TRAIN_DIR.value, _ALL_FLAGS)

    def step():
        return int(method.optimizer.iterations.numpy())

    start = step()
    if start >= _STEPS.value:
        logging.info("Already trained to step %d (--num_steps=%d).", start, _STEPS.value)
    else:
        # Resuming reseeds the streams with the step: the order differs from an
        # uninterrupted run's, but no sample sequence is replayed (see README).
        dataset = pipeline.make_train_dataset(
            _SOURCE.value, _TARGET.value, source_size, target_size, _BATCH.value,
            seed=_SEED.value + start, augment=_AUGMENT.value)
        sample = next(iter(dataset))
        log_dir = os.path.join(_TRAIN_DIR.value, "logs")
        cbs = [callbacks.NonFiniteGuard(step, manager.directory),
               checkpoints.CheckpointCallback(manager, _CKPT_EVERY.value, step,
                                           method.weights),
               callbacks.ProgressLogger(step, _STEPS.value, _LOG_EVERY.value)]
        if checkpoints.is_chief():
            cbs.append(callbacks.TensorBoardSummaries(log_dir, step, sample, _LOG_EVERY.value,
                                                      _IMAGE_EVERY.value, _flags_markdown()))
            if _EVAL_EVERY.value and _EVAL_PATTERN.value:
                cbs.append(callbacks.PeriodicEvaluation(
                    _EVAL_EVERY.value, _eval_dataset, _NUM_CLASSES.value, log_dir, step))
        cbs.append(callbacks.StopAtStep(step, _STEPS.value))
        # Keras distributes the dataset itself over the strategy the model was built in.
        # The dataset is infinite and the epoch open-ended: StopAtStep ends it
        # at --num_steps applied updates (float16 loss scaling may skip some).
        method.fit(dataset, epochs=1, steps_per_epoch=None, verbose=0, callbacks=cbs)
    if _EVAL_PATTERN.value:
        _final_evaluation(method)
    return method


def _eval_dataset():
    return pipeline.make_eval_dataset(_EVAL_PATTERN.value,
                                      cli.parse_size(_EVAL_SIZE.value, "eval_size"))


def _final_evaluation(method):
    hist = evaluation.evaluate([(method.segmenter, 1.0)], _eval_dataset(), _NUM_CLASSES.value)
    names = manifest_lib.read_manifest(_EVAL_PATTERN.value)["class_names"]
    table = metrics.format_iou_table(hist, names)
    print(f"\nTarget evaluation ({_EVAL_PATTERN.value}) after {_METHOD.value}:\n{table}",
          flush=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    run()


if __name__ == "__main__":
    app.run(main)
