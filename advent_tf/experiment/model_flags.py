"""The flags by which evaluate, predict and export name a trained model, and its loading.

A model is named by its run: ``--train_dir=RUN`` (its newest checkpoint) or
``--checkpoints=RUN/checkpoints/ckpt-N,...`` (several = an ensemble). The
network (backbone, classes and their names, multi-level) and the
evaluation size are read from the run's record (``config.json``, written by
`advent_tf.train`). ``--backbone``, ``--num_classes`` and ``--multi_level``
are needed only for files outside a run (converted ``.weights.h5``); given
for a run, they must agree with it.
"""

import dataclasses

from absl import app
from absl import flags

from advent_tf.experiment import segmenter_weights
from advent_tf.experiment import config as config_lib
from advent_tf.data import labels as labels_lib
from advent_tf.models.builder import BACKBONES
from advent_tf.experiment import run_dir

_DEFAULT = config_lib.ExperimentConfig()

TRAIN_DIR = flags.DEFINE_string(
    "train_dir", None,
    "A training run: its newest checkpoint is the model (unless --checkpoints is given), and "
    "its network, class names and evaluation size are read from its config.json.")
CHECKPOINTS = flags.DEFINE_list(
    "checkpoints", None,
    "Comma-separated checkpoints: a training checkpoint prefix (train_dir/checkpoints/ckpt-N), "
    "a train_dir (its newest checkpoint) or a converted .weights.h5. Several = an ensemble "
    "averaging their upsampled main logits.")
ENSEMBLE_WEIGHTS = flags.DEFINE_list(
    "ensemble_weights", None,
    "One positive weight per checkpoint (default: equal; the paper's AdvEnt+MinEnt: 0.5,0.5).")
BACKBONE = flags.DEFINE_enum(
    "backbone", None, list(BACKBONES),
    f"Backbone of a .weights.h5 outside a run (default {_DEFAULT.model.backbone}); for a run "
    "it is read from the run and this flag must agree.")
NUM_CLASSES = flags.DEFINE_integer(
    "num_classes", None,
    f"Classes of a .weights.h5 outside a run (default {_DEFAULT.model.num_classes}); for a "
    "run it is read from the run and this flag must agree.", lower_bound=2)
MULTI_LEVEL = flags.DEFINE_bool(
    "multi_level", None,
    "Whether a .weights.h5 outside a run has the auxiliary head (default: yes); for a run it "
    "is read from the run and this flag must agree.")


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """What the commands need of a model.

    Attributes:
      members: list of (segmenter, weight); one model is [(model, 1.0)].
      sources: the resolved checkpoint file of each member.
      model: the `config.ModelConfig` of the members (class names included:
        the run's, else `labels.default_class_names`).
      run_config: the `config.ExperimentConfig` of the first member's run,
        or None for a file outside a run.
    """

    members: list
    sources: list
    model: config_lib.ModelConfig
    run_config: object


def input_size(run_config, flag_value, flag_name):
    """(height, width) the network sees: the flag's, else the run's eval_size, else 1024x512.

    Args:
      run_config: the model's `config.ExperimentConfig`, or None.
      flag_value, flag_name: the command's size flag (WIDTH,HEIGHT) and its name.
    """
    if flag_value:
        try:
            return config_lib.hw(config_lib.parse_size(flag_value, flag_name))
        except config_lib.ConfigError as e:
            raise app.UsageError(str(e)) from e
    size = run_config.data.eval_size if run_config is not None else _DEFAULT.data.eval_size
    return config_lib.hw(size)


_OVERRIDES = (("backbone", BACKBONE), ("num_classes", NUM_CLASSES),
              ("multi_level", MULTI_LEVEL))


def model_config(path):
    """(The `config.ModelConfig` to load `path` into, its run's config or None).

    Raises:
      app.UsageError: a network flag that disagrees with the run, or a run
        record that cannot be read.
    """
    train_dir = (None if path.endswith(segmenter_weights.WEIGHTS_SUFFIX)
                 else run_dir.find_train_dir(path))
    try:
        recorded = run_dir.read_config(train_dir) if train_dir else None
    except config_lib.ConfigError as e:
        raise app.UsageError(str(e)) from e
    model = recorded.model if recorded is not None else _DEFAULT.model
    for name, holder in _OVERRIDES:
        if holder.value is None:
            continue
        if recorded is not None and holder.value != getattr(model, name):
            raise app.UsageError(
                f"--{name}={holder.value}: {path} belongs to the run {train_dir}, trained with "
                f"--{name}={getattr(model, name)} (leave the flag out: it is read from the run)")
        model = dataclasses.replace(model, **{name: holder.value})
    if len(model.class_names) != model.num_classes:
        model = dataclasses.replace(
            model, class_names=tuple(labels_lib.default_class_names(model.num_classes)))
    return model, recorded


def checkpoint_paths():
    """--checkpoints, or the --train_dir (its newest checkpoint) when not given."""
    if CHECKPOINTS.value:
        return list(CHECKPOINTS.value)
    if TRAIN_DIR.value:
        return [TRAIN_DIR.value]
    raise app.UsageError("name the model: --train_dir=RUN or --checkpoints=...")


def load_members():
    """Loads the named model (or ensemble) as a `LoadedModel`.

    Every member is built with its own run's network; all must have the same
    number of classes.

    Raises:
      app.UsageError: missing, damaged or mismatched checkpoints, bad weights,
        members with different class counts.
    """
    paths = checkpoint_paths()
    try:
        weights = None if ENSEMBLE_WEIGHTS.value is None else [
            float(w) for w in ENSEMBLE_WEIGHTS.value]
        if weights is not None and len(weights) != len(paths):
            raise ValueError(f"{len(weights)} ensemble weights for {len(paths)} checkpoints")
        weights = weights or [1.0 / len(paths)] * len(paths)
        if any(not w > 0 for w in weights):
            raise ValueError(f"ensemble weights must be positive, got {weights}")
        members, sources, first = [], [], None
        for path, weight in zip(paths, weights):
            model, recorded = model_config(path)
            if first is None:
                first = (model, recorded)
            elif model.num_classes != first[0].num_classes:
                raise ValueError(f"{path} has {model.num_classes} classes, {paths[0]} "
                                 f"{first[0].num_classes}: an ensemble needs one class set")
            segmenter, source = segmenter_weights.load_segmenter(
                path, model.backbone, model.num_classes, model.multi_level)
            members.append((segmenter, weight))
            sources.append(source)
    except (ValueError, FileNotFoundError) as e:
        raise app.UsageError(str(e))
    return LoadedModel(members, sources, first[0], first[1])
