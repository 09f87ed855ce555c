"""Trains a segmenter with source-only, MinEnt (+ER, +CP) or AdvEnt (+CP).

    python -m advent_tf.train --flagfile=configs/gta.flags

Every option is an absl flag; configs/*.flags hold the paper's experiments.
The flags are parsed once into a `config.ExperimentConfig`, which the run
records in --train_dir (config.json and run.flags). A rerun of the same
command resumes from the newest checkpoint in --train_dir.
"""

import dataclasses
import os
import shutil
import sys

import keras
import tensorflow as tf
from absl import app
from absl import flags
from absl import logging

from advent_tf.experiment import segmenter_weights
from advent_tf.experiment import config as config_lib
from advent_tf.inference import evaluation_protocol
from advent_tf.experiment import factory
from advent_tf.core import hardware
from advent_tf.core import host_memory
from advent_tf.core import metrics
from advent_tf import models
from advent_tf.data import demo
from advent_tf.data import labels as labels_lib
from advent_tf.data import manifest as manifest_lib
from advent_tf.data import pipeline
from advent_tf.training import callbacks
from advent_tf.training import checkpointing
from advent_tf.experiment import run_dir

_DEFAULT = config_lib.ExperimentConfig()
# TensorFlow reads it when it starts: "0" replaces oneDNN's CPU kernels by its own.
ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"


def _size_default(size):
    return [str(v) for v in size]


# Every flag sets the `config` field of its name; defaults are the config's.
# -- Data ------------------------------------------------------------------
flags.DEFINE_string("source_pattern", None, "Glob of the source TFRecord shards (labelled).")
flags.DEFINE_string("target_pattern", None, "Glob of the target TFRecord shards.")
flags.DEFINE_list("source_size", _size_default(_DEFAULT.data.source_size),
                  "Source training size WIDTH,HEIGHT (reference GTA5: 1280,720).")
flags.DEFINE_list("target_size", _size_default(_DEFAULT.data.target_size),
                  "Target training size WIDTH,HEIGHT (reference: 1024,512).")
flags.DEFINE_bool("augment", _DEFAULT.data.augment,
                  "Random scale/crop/flip (off in the reference).")
flags.DEFINE_string("demo_data_dir", None,
                    "If set, the built-in demo data is generated there when missing.")
flags.DEFINE_string("eval_pattern", None,
                    "Labelled target split to score once training ends (optional).")
flags.DEFINE_integer("eval_every", _DEFAULT.data.eval_every,
                     "Also score --eval_pattern every this many steps (0 = only at the end); "
                     "mIoU goes to TensorBoard.", lower_bound=0)
flags.DEFINE_list("eval_size", _size_default(_DEFAULT.data.eval_size),
                  "Evaluation input size WIDTH,HEIGHT (reference: 1024,512); evaluate, "
                  "predict and export read it from the run.")

# -- Model -----------------------------------------------------------------
flags.DEFINE_enum("backbone", _DEFAULT.model.backbone, list(models.BACKBONES), "Backbone.")
flags.DEFINE_integer("num_classes", _DEFAULT.model.num_classes,
                     "Number of classes: 19 (GTA5), 16 (SYNTHIA), or any count from 2 of "
                     "your own data (its manifest's class names are used).", lower_bound=2)
flags.DEFINE_bool("multi_level", _DEFAULT.model.multi_level,
                  "Auxiliary head on layer3 (reference).")
flags.DEFINE_enum("bn_mode", _DEFAULT.model.bn_mode, list(config_lib.BN_MODES),
                  "reference: batch statistics in training, affine frozen; "
                  "frozen: running statistics always.")
flags.DEFINE_string(
    "init_checkpoint", None, "Initial segmenter weights: a .weights.h5 of "
    "tools/convert_pytorch_checkpoint.py (the ImageNet initialisation or a released model), "
    "or a training checkpoint (a ckpt-N prefix or a train_dir: its newest). Every weight of "
    "the segmenter must be in it. Ignored when --train_dir already holds a checkpoint.")

# -- Method ----------------------------------------------------------------
flags.DEFINE_enum("method", _DEFAULT.method.method, list(config_lib.METHODS), "Training method.")
flags.DEFINE_float(
    "entropy_top_fraction", None, "MinEnt+ER: keep this fraction of highest-entropy target "
    "pixels per sample (0.3 in the paper); unset = plain MinEnt.")
flags.DEFINE_string("class_prior", None,
                    "JSON class-ratio prior p_s (tools/compute_class_prior.py): "
                    "enables CP (eq. 10); MinEnt or AdvEnt only.")
flags.DEFINE_float("prior_mu", _DEFAULT.method.prior_mu,
                   "mu of the class-ratio prior (eq. 10); needs --class_prior.", lower_bound=0.0)
for _name, _help in (("seg_main", "source cross-entropy, main head"),
                     ("seg_aux", "source cross-entropy, auxiliary head"),
                     ("ent_main", "MinEnt entropy, main head (minent only)"),
                     ("ent_aux", "MinEnt entropy, auxiliary head (minent only)"),
                     ("adv_main", "AdvEnt adversarial term, main head (advent only)"),
                     ("adv_aux", "AdvEnt adversarial term, auxiliary head (advent only)"),
                     ("cp", "class-ratio prior (needs --class_prior)")):
    flags.DEFINE_float(f"lambda_{_name}", getattr(_DEFAULT.method, f"lambda_{_name}"),
                       f"Loss weight: {_help}.", lower_bound=0.0)

# -- Optimisation -----------------------------------------------------------
flags.DEFINE_float("learning_rate", _DEFAULT.optim.learning_rate, "Segmenter SGD base LR.",
                   lower_bound=0.0)
flags.DEFINE_float("learning_rate_d", _DEFAULT.optim.learning_rate_d,
                   "Discriminator Adam base LR (advent only).", lower_bound=0.0)
flags.DEFINE_float("momentum", _DEFAULT.optim.momentum, "SGD momentum.", lower_bound=0.0,
                   upper_bound=1.0)
flags.DEFINE_float("weight_decay", _DEFAULT.optim.weight_decay,
                   "SGD weight decay (PyTorch-style, coupled).", lower_bound=0.0)
flags.DEFINE_float("power", _DEFAULT.optim.power, "Poly schedule power.", lower_bound=0.0)
flags.DEFINE_integer("lr_horizon", _DEFAULT.optim.lr_horizon, "Poly schedule horizon (steps).",
                     lower_bound=1)
flags.DEFINE_float("head_lr_multiplier", _DEFAULT.optim.head_lr_multiplier,
                   "LR multiplier of the ASPP heads.", lower_bound=0.0)
flags.DEFINE_string(
    "backbone_update_repeats", _DEFAULT.optim.backbone_update_repeats,
    "SGD updates per step of each backbone tensor. 'reference' (the paper configs) "
    "reproduces the published runs: the reference's duplicated parameter list under torch "
    "0.4.1, each tensor updated as often as it is listed (stem conv 1, block convs 3, "
    "projection convs 4; ResNet only). 'deduplicated' (= 1, the default) updates each "
    "tensor once, as a parameter list without duplicates does; an integer applies that "
    "many updates to every backbone tensor.")
flags.DEFINE_integer("batch_size", _DEFAULT.optim.batch_size,
                     "Global batch (source and target each).", lower_bound=1)

# -- Run -------------------------------------------------------------------
flags.DEFINE_string("train_dir", None, "Checkpoints, TensorBoard logs and the run's record "
                    "(config.json, run.flags) that evaluate, predict and export read.")
flags.DEFINE_integer("num_steps", _DEFAULT.run.num_steps,
                     "Training stops here (reference: 120000).", lower_bound=1)
flags.DEFINE_integer("checkpoint_every", _DEFAULT.run.checkpoint_every,
                     "Checkpoint period (steps).", lower_bound=1)
flags.DEFINE_integer("keep_checkpoints", _DEFAULT.run.keep_checkpoints,
                     "Checkpoints kept (0 = all, for --mode=best).", lower_bound=0)
flags.DEFINE_integer("log_every", _DEFAULT.run.log_every, "Log/scalar period (steps).",
                     lower_bound=1)
flags.DEFINE_integer("image_summary_every", _DEFAULT.run.image_summary_every,
                     "TensorBoard image period (steps), 0 = never.", lower_bound=0)
flags.DEFINE_enum("strategy", _DEFAULT.run.strategy, list(config_lib.STRATEGIES),
                  "tf.distribute strategy (multi_worker reads TF_CONFIG).")
flags.DEFINE_bool("jit_compile", _DEFAULT.run.jit_compile, "XLA-compile the whole train step.")
flags.DEFINE_enum("mixed_precision", _DEFAULT.run.mixed_precision, list(config_lib.PRECISIONS),
                  "Keras dtype policy.")
flags.DEFINE_bool("allow_emulated_precision", _DEFAULT.run.allow_emulated_precision,
                  "Run --mixed_precision even on a device without native arithmetic for its "
                  "16-bit type (TensorFlow emulates it, several times slower than float32); "
                  "without it such a run is refused.")
flags.DEFINE_bool("compact_host_memory", _DEFAULT.run.compact_host_memory,
                  "Give freed host memory back to the system at once (TensorFlow's system "
                  "allocator instead of its BFC allocator for CPU tensors; glibc: 128 KiB mmap "
                  "threshold, one arena). A smaller peak resident set on CPU (full-resolution "
                  "AdvEnt: 1.5 GiB less), but time in page faults (1.2-1.3x the time with "
                  "oneDNN, 1.5x without it); figures in advent_tf/core/host_memory.py. No effect "
                  "on GPU memory. Without it, CPU-only runs use one malloc arena (free of cost "
                  "where measured).")
flags.DEFINE_integer("seed", _DEFAULT.run.seed, "Random seed (weights init and data order).")
flags.DEFINE_bool("compare_source_only", _DEFAULT.run.compare_source_only,
                  "Also train the source-only baseline with the same data, steps and seed in "
                  "TRAIN_DIR/source_only, and report its target mIoU next to the adapted "
                  "model's, with the gain (the demo does).")
flags.DEFINE_bool("deterministic", _DEFAULT.run.deterministic,
                  "Bit-identical reruns on one machine: TF's op determinism, and TF's own "
                  "kernels instead of oneDNN's (the command restarts itself with "
                  f"{ONEDNN_VARIABLE}=0 if needed); a little slower.")

flags.mark_flags_as_required(["source_pattern", "target_pattern", "train_dir"])

_SIZE_FLAGS = ("source_size", "target_size", "eval_size")


def config_from_flags():
    """The `config.ExperimentConfig` of the parsed flags (class names still unset).

    Raises:
      app.UsageError: a malformed size or a combination that cannot apply,
        naming the flags.
    """
    values = {}
    try:
        for name in config_lib.field_names():
            if name in _SIZE_FLAGS:
                values[name] = config_lib.parse_size(flags.FLAGS[name].value, name)
            elif name in flags.FLAGS:
                values[name] = flags.FLAGS[name].value
        cfg = config_lib.from_values(values)
        config_lib.validate(cfg)
    except config_lib.ConfigError as error:
        raise app.UsageError(str(error)) from error
    return cfg


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


def _validate_data(cfg):
    """Checks shards exist and that their manifests agree with --num_classes.

    Returns:
      The config with the class names of the labelled source split (or the
      default names of its class count when the split has no manifest).
    """
    num_classes = cfg.model.num_classes
    class_names = None
    for flag, pattern in (("source_pattern", cfg.data.source_pattern),
                          ("target_pattern", cfg.data.target_pattern),
                          ("eval_pattern", cfg.data.eval_pattern)):
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
        if manifest["has_labels"] and manifest["num_classes"] != num_classes:
            raise app.UsageError(
                f"--{flag} data has {manifest['num_classes']} classes (manifest of {pattern}) "
                f"but --num_classes={num_classes}")
        if flag == "source_pattern" and manifest["has_labels"]:
            class_names = manifest["class_names"]
    names = tuple(class_names or labels_lib.default_class_names(num_classes))
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, class_names=names))


def _resuming(train_dir):
    """Whether --train_dir holds a checkpoint to resume from (the chief's, for every worker)."""
    ckpt_dir = checkpointing.chief_checkpoint_dir(train_dir)
    return bool(tf.io.gfile.glob(os.path.join(ckpt_dir, "ckpt-*.index")))


def _init_segmenter(segmenter, path, model):
    try:
        segmenter_weights.load_weights(segmenter, path)
    except segmenter_weights.CheckpointError as error:
        raise app.UsageError(
            f"--init_checkpoint: {error} (the segmenter of these flags is {model.backbone}, "
            f"{model.num_classes} classes, {'multi' if model.multi_level else 'single'}"
            "-level)") from error


def _config_markdown(cfg):
    return "\n".join(f"    {line}" for line in config_lib.to_flag_lines(cfg))


def run(cfg):
    """Trains the run of an `ExperimentConfig`.

    Returns:
      (the trained method, the target evaluation summary or None without
      --eval_pattern).
    """
    train_dir = cfg.run.train_dir
    _check_precision(cfg.run)
    if cfg.data.demo_data_dir:
        demo.ensure_demo_data(cfg.data.demo_data_dir)
    resuming = _resuming(train_dir)
    # A resumed run restores its checkpoint over any initialisation: the
    # init file is not needed then (it may have been moved since).
    init_checkpoint = None
    if cfg.run.init_checkpoint and not resuming:
        try:
            init_checkpoint = segmenter_weights.resolve(cfg.run.init_checkpoint)
        except FileNotFoundError as error:
            raise app.UsageError(f"--init_checkpoint: {error}") from error
    cfg = _validate_data(cfg)
    if resuming and checkpointing.is_chief():
        try:
            run_dir.check_resume(train_dir, cfg)
        except config_lib.ConfigError as error:
            raise app.UsageError(str(error)) from error
    model_cfg = cfg.model
    class_prior = (load_class_prior(cfg.method.class_prior, model_cfg.num_classes)
                   if cfg.method.class_prior else None)
    keras.mixed_precision.set_global_policy(cfg.run.mixed_precision)
    if cfg.run.deterministic:
        tf.config.experimental.enable_op_determinism()

    strategy = make_strategy(cfg.run.strategy)
    batch_size = cfg.optim.batch_size
    if batch_size % strategy.num_replicas_in_sync:
        raise app.UsageError(f"--batch_size={batch_size} must be a multiple of the "
                             f"{strategy.num_replicas_in_sync} replicas")
    with strategy.scope():
        method = factory.build_method(cfg, class_prior)
        if init_checkpoint:
            _init_segmenter(method.segmenter, init_checkpoint, model_cfg)
        checkpoint = checkpointing.make_checkpoint(method)
    manager = tf.train.CheckpointManager(checkpoint, checkpointing.checkpoint_dir(train_dir),
                                         max_to_keep=cfg.run.keep_checkpoints or None)
    # Every worker restores the chief's newest checkpoint (the other workers'
    # own saves are scratch copies), so all start from the same state: with
    # several machines, --train_dir must be a path every worker can read.
    restore_from = manager if checkpointing.is_chief() else tf.train.CheckpointManager(
        checkpoint, checkpointing.chief_checkpoint_dir(train_dir), max_to_keep=None)
    try:
        checkpointing.restore_latest(checkpoint, restore_from,
                                     set_aside=checkpointing.is_chief())
    except (checkpointing.CheckpointMismatchError,
            checkpointing.NoReadableCheckpointError) as error:
        raise app.UsageError(f"--train_dir={train_dir}: {error}") from error
    # Recorded only now: a run refused above must not replace the record.
    if checkpointing.is_chief():
        run_dir.write(train_dir, cfg)

    start = int(method.optimizer.iterations.numpy())
    num_steps = cfg.run.num_steps
    if start >= num_steps:
        logging.info("Already trained to step %d (--num_steps=%d).", start, num_steps)
    else:
        # Resuming reseeds the streams with the step: the order differs from an
        # uninterrupted run's, but no sample sequence is replayed (see README).
        dataset = pipeline.make_train_dataset(
            cfg.data.source_pattern, cfg.data.target_pattern, config_lib.hw(cfg.data.source_size),
            config_lib.hw(cfg.data.target_size), batch_size, seed=cfg.run.seed + start,
            augment=cfg.data.augment)
        try:
            # shuffle=False: the streams shuffle themselves (Keras would warn it ignores True).
            method.fit(dataset, epochs=1, steps_per_epoch=None, verbose=0, shuffle=False,
                       callbacks=_callbacks(cfg, method, manager, next(iter(dataset))))
        except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError) as error:
            if cfg.run.strategy != "multi_worker":
                raise
            # TensorFlow's health check of the collectives noticed a worker that
            # stopped answering and aborted the step.
            raise SystemExit(
                f"error: training stopped, a worker of the cluster is gone "
                f"({type(error).__name__}: {str(error).splitlines()[0][:300]}). Relaunch every "
                f"worker with the same command: the run resumes from the chief's newest "
                f"checkpoint in {checkpointing.chief_checkpoint_dir(train_dir)}.") from error
    if not checkpointing.is_chief():
        # A worker's checkpoints only take part in the collective save; the
        # chief's copy is the run's.
        shutil.rmtree(manager.directory, ignore_errors=True)
    summary = _final_evaluation(method, cfg) if cfg.data.eval_pattern else None
    if cfg.run.compare_source_only:
        _, baseline = run(source_only_baseline(cfg))
        _report_gain(cfg, summary, baseline)
    return method, summary


def _check_precision(run_cfg):
    """Refuses (or, when allowed, warns about) a 16-bit policy this machine only emulates."""
    problem = hardware.precision_problem(run_cfg.mixed_precision)
    if problem is None:
        return
    if not run_cfg.allow_emulated_precision:
        raise app.UsageError(f"--mixed_precision={run_cfg.mixed_precision} refused: {problem}. "
                             f"Train in float32 here, or add --allow_emulated_precision to run "
                             f"it anyway.")
    logging.warning("--allow_emulated_precision: %s.", problem)


def source_only_baseline(cfg):
    """The source-only run of `cfg`: same data, network, schedule, steps and seed."""
    defaults = config_lib.MethodConfig()
    return dataclasses.replace(
        cfg, method=dataclasses.replace(defaults, method="source_only",
                                        lambda_seg_main=cfg.method.lambda_seg_main,
                                        lambda_seg_aux=cfg.method.lambda_seg_aux),
        run=dataclasses.replace(cfg.run, train_dir=os.path.join(cfg.run.train_dir, "source_only"),
                                compare_source_only=False),
        data=dataclasses.replace(cfg.data, eval_every=0))


def _report_gain(cfg, adapted, baseline):
    gain = adapted["miou"] - baseline["miou"]
    print(f"\nTarget mIoU ({cfg.data.eval_pattern}), same data, steps and seed:\n"
          f"  source-only  {baseline['miou']:6.2f}\n"
          f"  {cfg.method.method:<11s}  {adapted['miou']:6.2f}\n"
          f"  gain         {gain:+6.2f}", flush=True)


def _callbacks(cfg, method, manager, sample):
    """The callbacks of `fit`, in the order they must run."""
    run_cfg = cfg.run
    cbs = [callbacks.NonFiniteGuard(manager.directory),
           checkpointing.CheckpointCallback(manager, run_cfg.checkpoint_every, method.weights),
           callbacks.ProgressLogger(run_cfg.num_steps, run_cfg.log_every)]
    if checkpointing.is_chief():
        # One summary writer per run: training scalars, images and evaluation_protocol.
        writer = tf.summary.create_file_writer(os.path.join(run_cfg.train_dir, "logs"))
        cbs.append(callbacks.TensorBoardSummaries(
            writer, sample, run_cfg.log_every, run_cfg.image_summary_every,
            _config_markdown(cfg), cfg.model.num_classes))
        if cfg.data.eval_every:
            cbs.append(callbacks.PeriodicEvaluation(
                cfg.data.eval_every, lambda: _eval_dataset(cfg), cfg.model.class_names, writer))
    # Keras distributes the dataset itself over the strategy the model was built in.
    # The dataset is infinite and the epoch open-ended: StopAtStep ends it
    # at --num_steps applied updates (float16 loss scaling may skip some).
    cbs.append(callbacks.StopAtStep(run_cfg.num_steps))
    cbs.append(callbacks.ReleaseFreeHeap())
    return cbs


def _eval_dataset(cfg):
    return pipeline.make_eval_dataset(cfg.data.eval_pattern, config_lib.hw(cfg.data.eval_size))


def _final_evaluation(method, cfg):
    """Scores the trained segmenter on --eval_pattern; prints the table; returns the summary."""
    hist = evaluation_protocol.evaluate([(method.segmenter, 1.0)], _eval_dataset(cfg),
                                        cfg.model.num_classes)
    table = metrics.format_iou_table(hist, cfg.model.class_names)
    print(f"\nTarget evaluation ({cfg.data.eval_pattern}) after {cfg.method.method}:\n{table}",
          flush=True)
    return evaluation_protocol.summarize(hist, cfg.model.class_names)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    cfg = config_from_flags()
    if cfg.run.deterministic and os.environ.get(ONEDNN_VARIABLE) != "0":
        _restart_without_onednn()
    # Before TensorFlow's threads allocate (a thread keeps the arena it got)
    # and before its first tensor (which fixes its CPU allocator).
    host_memory.configure_command(compact=cfg.run.compact_host_memory)
    run(cfg)


def _restart_without_onednn():
    """Restarts this command with TensorFlow's own CPU kernels instead of oneDNN's.

    Op determinism does not cover oneDNN: its kernels split a sum by the
    threads that are free at the moment, so the same run gives different
    round-off whenever other work competes for the cores (measured: four
    concurrent 20-step demo AdvEnt runs gave 3 different results with
    oneDNN, 1 without), and the adversarial game turns that into different
    models. The switch is read when TensorFlow starts, hence the restart.
    """
    logging.info("--deterministic: restarting with %s=0 (TensorFlow's own CPU kernels).",
                 ONEDNN_VARIABLE)
    logging.flush()
    os.environ[ONEDNN_VARIABLE] = "0"
    os.execv(sys.executable, [sys.executable, "-m", "advent_tf.train", *sys.argv[1:]])


if __name__ == "__main__":
    app.run(main)
