"""The experiment configuration: one typed, frozen record of everything a run is.

`train` parses its absl flags into an `ExperimentConfig` once, in `main()`,
and passes it down; no library function reads a flag. The run directory keeps
it as ``config.json`` (human-readable) next to ``run.flags``, and
`evaluate`, `predict` and `export` read the network, the class names and the
evaluation size from there (`advent_tf.runs.run_dir`).

Every field is named like the flag that sets it, so a config, its JSON and
its flagfile say the same thing in the same words. Each field is marked with
what a change means when a run is resumed (`RESUME_*`): the resume policy is
a diff of two configs (`diff`), not a list of flag names.

Sizes are stored as the flags write them, ``(width, height)``; `hw` gives
TensorFlow's ``(height, width)``.
"""

import dataclasses
import json
import math
import typing

# A change on resume of an "experiment" field is refused: it changes what is
# learnt (method, loss weights, network), and the checkpoint cannot tell.
RESUME_EXPERIMENT = "experiment"
# "execution" fields say how the run executes (logging, checkpoint period,
# num_steps, strategy, XLA, evaluation): they change silently.
RESUME_EXECUTION = "execution"
# Any other change (schedule, data, precision) resumes with a warning.
RESUME_WARN = "warn"

FORMAT_VERSION = 1
METHODS = ("source_only", "minent", "advent")
STRATEGIES = ("default", "mirrored", "multi_worker")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
BN_MODES = ("reference", "frozen")


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the flags to change."""


def _field(default, resume=RESUME_WARN, flag=True):
    """A config field; `flag=False` marks one derived from the data, not set by a flag."""
    return dataclasses.field(default=default, metadata={"resume": resume, "flag": flag})


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What is read: training streams, sizes (WIDTH, HEIGHT) and the evaluation split."""

    source_pattern: typing.Optional[str] = _field(None)
    target_pattern: typing.Optional[str] = _field(None)
    source_size: tuple = _field((1280, 720))
    target_size: tuple = _field((1024, 512))
    augment: bool = _field(False)
    demo_data_dir: typing.Optional[str] = _field(None, RESUME_EXECUTION)
    eval_pattern: typing.Optional[str] = _field(None, RESUME_EXECUTION)
    eval_every: int = _field(0, RESUME_EXECUTION)
    eval_size: tuple = _field((1024, 512), RESUME_EXECUTION)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The segmenter: everything needed to rebuild it from a checkpoint."""

    backbone: str = _field("resnet101", RESUME_EXPERIMENT)
    num_classes: int = _field(19, RESUME_EXPERIMENT)
    # Names of the train ids, in order: from the source split's manifest, or
    # the Cityscapes names for 19 and 16 classes (`labels.class_names`).
    class_names: tuple = _field((), RESUME_EXPERIMENT, flag=False)
    multi_level: bool = _field(True, RESUME_EXPERIMENT)
    bn_mode: str = _field("reference", RESUME_EXPERIMENT)


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """The training method and its loss weights (paper eq. 3, 4, 7-10)."""

    method: str = _field("advent", RESUME_EXPERIMENT)
    entropy_top_fraction: typing.Optional[float] = _field(None, RESUME_EXPERIMENT)
    class_prior: typing.Optional[str] = _field(None, RESUME_EXPERIMENT)
    prior_mu: float = _field(0.5, RESUME_EXPERIMENT)
    lambda_seg_main: float = _field(1.0, RESUME_EXPERIMENT)
    lambda_seg_aux: float = _field(0.1, RESUME_EXPERIMENT)
    lambda_ent_main: float = _field(1e-3, RESUME_EXPERIMENT)
    lambda_ent_aux: float = _field(2e-4, RESUME_EXPERIMENT)
    lambda_adv_main: float = _field(1e-3, RESUME_EXPERIMENT)
    lambda_adv_aux: float = _field(2e-4, RESUME_EXPERIMENT)
    lambda_cp: float = _field(1e-3, RESUME_EXPERIMENT)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """SGD of the segmenter, Adam of the discriminators, the poly schedule, the batch."""

    learning_rate: float = _field(2.5e-4)
    learning_rate_d: float = _field(1e-4)
    momentum: float = _field(0.9)
    weight_decay: float = _field(5e-4)
    power: float = _field(0.9)
    lr_horizon: int = _field(250000)
    head_lr_multiplier: float = _field(10.0)
    # "reference", "deduplicated" (= "1") or a positive integer, as a string
    # (the flag's form); see `factory.segmenter_optimizer`.
    backbone_update_repeats: str = _field("1")
    batch_size: int = _field(1)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Where and how the run executes."""

    train_dir: typing.Optional[str] = _field(None, RESUME_EXECUTION)
    init_checkpoint: typing.Optional[str] = _field(None, RESUME_EXECUTION)
    num_steps: int = _field(120000, RESUME_EXECUTION)
    checkpoint_every: int = _field(2000, RESUME_EXECUTION)
    keep_checkpoints: int = _field(0, RESUME_EXECUTION)
    log_every: int = _field(10, RESUME_EXECUTION)
    image_summary_every: int = _field(500, RESUME_EXECUTION)
    strategy: str = _field("default", RESUME_EXECUTION)
    jit_compile: bool = _field(False, RESUME_EXECUTION)
    mixed_precision: str = _field("float32")
    # Run a 16-bit policy even where the device only emulates it (slow).
    allow_emulated_precision: bool = _field(False, RESUME_EXECUTION)
    # CPU tensors from malloc, handed back at once (smaller peak, slower).
    compact_host_memory: bool = _field(False, RESUME_EXECUTION)
    seed: int = _field(1234)
    deterministic: bool = _field(False, RESUME_EXECUTION)
    # Also train the source-only baseline (same data, steps, seed) in
    # TRAIN_DIR/source_only and report both target mIoUs and the gain.
    compare_source_only: bool = _field(False, RESUME_EXECUTION)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """A whole run: `data`, `model`, `method`, `optim`, `run`."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    method: MethodConfig = MethodConfig()
    optim: OptimConfig = OptimConfig()
    run: RunConfig = RunConfig()


SECTIONS = {f.name: f.type for f in dataclasses.fields(ExperimentConfig)}


def parse_size(values, name):
    """A WIDTH,HEIGHT flag value (list of two strings) -> (width, height) ints.

    The flags and the config read like the reference's configs (1280,720);
    `hw` gives the (height, width) TensorFlow works in.

    Raises:
      ConfigError: not two positive integers, naming the flag.
    """
    try:
        width, height = (int(v) for v in values)
    except (ValueError, TypeError):
        raise ConfigError(f"--{name} must be WIDTH,HEIGHT with two integers, got {values}")
    if width < 1 or height < 1:
        raise ConfigError(f"--{name} must be positive, got {values}")
    return width, height


def hw(size):
    """A (width, height) size of the config -> TensorFlow's (height, width)."""
    width, height = size
    return int(height), int(width)


def fields():
    """(section name, `dataclasses.Field`) of every leaf field, in declaration order."""
    return [(section, field) for section, cls in SECTIONS.items()
            for field in dataclasses.fields(cls)]


def field_names():
    """The flag name of every field (each is unique across sections)."""
    return [field.name for _, field in fields()]


def from_values(values):
    """An `ExperimentConfig` from a flat {field name: value} mapping (missing = default).

    Lists become tuples so that the config stays hashable and compares equal
    to its JSON round trip.

    Raises:
      ConfigError: a name that is no field.
    """
    unknown = set(values) - set(field_names())
    if unknown:
        raise ConfigError(f"unknown configuration fields: {', '.join(sorted(unknown))}")
    sections = {}
    for section, cls in SECTIONS.items():
        kwargs = {}
        for field in dataclasses.fields(cls):
            if field.name in values:
                value = values[field.name]
                kwargs[field.name] = tuple(value) if isinstance(value, list) else value
        sections[section] = cls(**kwargs)
    return ExperimentConfig(**sections)


def flat(config):
    """{field name: value} of every field of `config`."""
    return {field.name: getattr(getattr(config, section), field.name)
            for section, field in fields()}


def to_json(config):
    """The config as indented JSON, one object per section."""
    content = {"format_version": FORMAT_VERSION}
    content.update(dataclasses.asdict(config))
    return json.dumps(content, indent=1) + "\n"


def from_json(text, source="config"):
    """Parses `to_json` output.

    Raises:
      ConfigError: not a config of this format, naming `source`.
    """
    try:
        content = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{source}: not JSON ({e})") from e
    if not isinstance(content, dict) or content.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{source}: not an advent_tf config of format {FORMAT_VERSION}")
    values = {}
    for section in SECTIONS:
        values.update(content.get(section, {}))
    try:
        return from_values(values)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from e


def to_flag_lines(config):
    """The config as absl flagfile lines (``--name=value``, ``--name``, ``--noname``).

    Unset (None) fields are left out; a run relaunched with these lines has
    the same config.
    """
    lines = []
    derived = {field.name for _, field in fields() if not field.metadata["flag"]}
    for name, value in flat(config).items():
        if value is None or name in derived:
            continue
        if isinstance(value, bool):
            lines.append(f"--{name}" if value else f"--no{name}")
        elif isinstance(value, tuple):
            lines.append(f"--{name}={','.join(str(v) for v in value)}")
        else:
            lines.append(f"--{name}={value}")
    return lines


def _parse_flag_value(text, hint):
    """A flagfile value -> the field's type (`hint`: its annotation)."""
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
    if base is tuple:
        return tuple(int(v) for v in text.split(","))
    return base(text)


def from_flag_lines(lines, source="run.flags"):
    """Parses `to_flag_lines` output (or a run.flags of an earlier release) into a config.

    Lines that are no config field (e.g. a flag of an older release) are ignored.

    Raises:
      ConfigError: a value that does not parse, naming `source` and the line.
    """
    hints = {field.name: typing.get_type_hints(SECTIONS[section])[field.name]
             for section, field in fields()}
    values = {}
    for line in lines:
        line = line.strip()
        if not line.startswith("--"):
            continue
        name, has_value, text = line[2:].partition("=")
        if not has_value:
            if name in hints:
                values[name] = True
            elif name.startswith("no") and name[2:] in hints:
                values[name[2:]] = False
            continue
        if name not in hints:
            continue
        try:
            values[name] = _parse_flag_value(text, hints[name])
        except ValueError as e:
            raise ConfigError(f"{source}: cannot read {line!r} ({e})") from e
    return from_values(values)


@dataclasses.dataclass(frozen=True)
class Change:
    """One field that differs between two configs."""

    name: str
    old: typing.Any
    new: typing.Any
    resume: str


def diff(old, new):
    """The fields whose values differ, each with its resume policy, in declaration order."""
    old_values, new_values = flat(old), flat(new)
    return [Change(field.name, old_values[field.name], new_values[field.name],
                   field.metadata["resume"])
            for _, field in fields() if old_values[field.name] != new_values[field.name]]


def _differs(value, default):
    if isinstance(value, float) and isinstance(default, float):
        return not math.isclose(value, default, rel_tol=1e-12, abs_tol=0.0)
    return value != default


def has_reference_listing(backbone):
    """Whether the reference code lists `backbone`'s parameters (its ResNets only).

    `--backbone_update_repeats=reference` needs that listing.
    """
    return backbone.startswith("resnet")


def validate(config):
    """Refuses options that cannot apply to the configured run, before anything is built.

    Args:
      config: an `ExperimentConfig`.

    Raises:
      ConfigError: every problem found, each naming its flags.
    """
    problems = []
    method, model, optim, data = config.method, config.model, config.optim, config.data
    defaults = from_values({})
    name = method.method
    if name not in METHODS:
        problems.append(f"--method={name}: one of {', '.join(METHODS)}")
    if method.entropy_top_fraction is not None:
        if name != "minent":
            problems.append("--entropy_top_fraction (MinEnt+ER) applies to --method=minent "
                            f"only, not {name}")
        if not 0.0 < method.entropy_top_fraction <= 1.0:
            problems.append(f"--entropy_top_fraction={method.entropy_top_fraction}: must be "
                            "in (0, 1] (0.3 in the paper); leave it unset for plain MinEnt")
    if method.class_prior is not None and name == "source_only":
        problems.append("--class_prior (CP, eq. 10) is a target-domain term: it does not "
                        "apply to --method=source_only")
    if method.class_prior is None and _differs(method.prior_mu, defaults.method.prior_mu):
        problems.append(f"--prior_mu={method.prior_mu} without --class_prior: mu weighs "
                        "the class-ratio prior, which is off")
    if method.class_prior is None and _differs(method.lambda_cp, defaults.method.lambda_cp):
        problems.append(f"--lambda_cp={method.lambda_cp} without --class_prior: the "
                        "class-ratio prior is off")

    def changed(field):
        return _differs(getattr(method, field), getattr(defaults.method, field))

    if name != "minent":
        ent = [f"--{f}" for f in ("lambda_ent_main", "lambda_ent_aux") if changed(f)]
        if ent:
            problems.append(f"{', '.join(ent)}: entropy weights apply to --method=minent "
                            f"only (AdvEnt's target terms are --lambda_adv_*), not {name}")
    if name != "advent":
        adv = [f"--{f}" for f in ("lambda_adv_main", "lambda_adv_aux") if changed(f)]
        if _differs(optim.learning_rate_d, defaults.optim.learning_rate_d):
            adv.append("--learning_rate_d")
        if adv:
            problems.append(f"{', '.join(adv)}: the discriminators exist with "
                            f"--method=advent only, not {name}")
    if not model.multi_level:
        aux = [f"--{f}" for f in ("lambda_seg_aux", "lambda_ent_aux", "lambda_adv_aux")
               if changed(f)]
        if aux:
            problems.append(f"{', '.join(aux)}: auxiliary-head weights need --multi_level")
    if config.run.num_steps > optim.lr_horizon:
        problems.append(f"--num_steps={config.run.num_steps} is past --lr_horizon="
                        f"{optim.lr_horizon}: the poly learning rate is 0 there (the "
                        "reference's lr_poly is undefined); stop at the horizon")
    if config.run.compare_source_only and (name == "source_only" or not data.eval_pattern):
        problems.append("--compare_source_only needs an adaptation method (minent or advent) "
                        "and --eval_pattern to score both on")
    if data.eval_every and not data.eval_pattern:
        problems.append(f"--eval_every={data.eval_every} without --eval_pattern: there is "
                        "nothing to evaluate on")
    if model.num_classes < 2:
        problems.append(f"--num_classes={model.num_classes}: at least 2")
    if model.class_names and len(model.class_names) != model.num_classes:
        problems.append(f"{len(model.class_names)} class names for --num_classes="
                        f"{model.num_classes}")
    if len(set(model.class_names)) != len(model.class_names):
        problems.append(f"class names must be distinct, got {list(model.class_names)}")
    if model.backbone == "vgg16" and model.multi_level:
        problems.append("--backbone=vgg16 is single-level (the paper's VGG-16): pass "
                        "--nomulti_level")
    repeats = optim.backbone_update_repeats
    if repeats not in ("reference", "deduplicated") and not (
            str(repeats).isdigit() and int(repeats) >= 1):
        problems.append(f"--backbone_update_repeats={repeats}: 'reference', 'deduplicated' "
                        "or a positive integer")
    if repeats == "reference" and not has_reference_listing(model.backbone):
        problems.append("--backbone_update_repeats=reference: the reference code has no "
                        f"{model.backbone} (its parameter listing is the ResNet's)")
    if problems:
        raise ConfigError("; ".join(problems))
