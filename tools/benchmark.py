r"""Times the real training iterations and inference of the multi-level network.

Seconds per training iteration of source-only, MinEnt and AdvEnt (the
`advent_tf.methods` classes, compiled as `advent_tf.train` compiles them, run
through Keras' own train function) and seconds per evaluation-size inference,
with and without XLA, plus peak memory and achieved GFLOP/s:

  python tools/benchmark.py                       # ResNet-101, reference sizes
  python tools/benchmark.py --jit=off --methods=advent --output_json=/tmp/b.json
  python tools/benchmark.py --jit=off --pytorch --rounds=2   # side by side with PyTorch

--pytorch also times the official code's iterations and inference in PyTorch
(tools/pytorch_reference.py: the same network, sizes and random inputs, the
same optimizer listing and update count, the Keras dtype policy as
torch.autocast), each right after ours and alternating round by round, so
that the ours/PyTorch ratio comes from one run on one machine state.

Nothing is remembered from another machine. The run prints the CPU (model,
cores, the features that decide float32/bfloat16/float16 speed) and measures
its own ceiling: the best GFLOP/s of a 4096x4096 matrix product in the
policy's compute type, by TensorFlow and (when installed) PyTorch, the
faster of the two being the ceiling of the "%ceil" column, with the
theoretical peak of that compute type printed beside it (the widest FMA for
float32; AMX or AVX-512's 16-bit instructions for a 16-bit type). A 16-bit
policy that this machine only emulates is flagged before the table.

Inputs are random preprocessed images and labels held in memory (the input
pipeline has its own benchmark, tools/benchmark_input.py). Each measurement
runs in a fresh subprocess by default (--isolate), so that its peak memory is
its own and a crash of one configuration (an XLA compilation abort, say)
cannot take the others with it; an error is printed in its row and the
benchmark goes on.

Peak memory: on CPU the process's peak resident set (`resource.getrusage`),
which includes the framework's runtime itself and, without --isolate, every
earlier measurement of the process; on GPU the allocator's peak on GPU:0
(`tf.config.experimental.get_memory_info`), reset before each measurement.
"net MiB" subtracts the idle runtime of the framework, measured in the same
run: the peak of a fresh process that imported it (and, for ours, the
package) and ran one tiny convolution, so that the two frameworks' fixed
costs (TensorFlow's is the larger) do not decide the comparison.
"tensors" (--tensor_memory, CPU) is the peak of live tensors over one call,
weights, optimizer state and inputs included: the bytes the tensors need,
free of either runtime and of the C allocator's slack. Ours is summed from
the memory events of TensorFlow's BFC allocator (a fresh process, since the
allocator is fixed when TensorFlow starts; `tf_tensor_peak`), PyTorch's from
torch.profiler's (`torch_tensor_peak`). "BFC MiB" is ours as the BFC
allocator counts it: the chunks that held those tensors, which it hands out
whole when they are less than twice the request, as its GPU version does.
--profile (CPU) adds, per measurement, the seconds of one call by op family,
ours beside PyTorch's, and the convolutions' GFLOP/s against the ceiling:
where the time goes, and how far the kernels are from the machine's best.

GFLOP: the Conv2D multiply-adds (x2) of the traced networks at the benchmark
sizes. A training iteration counts 3x the forward cost of each pass through
a network (forward, input gradient, weight gradient): the source pass; for
MinEnt and AdvEnt the target pass; for AdvEnt also, per output head, the
frozen discriminator on the target map in the generator pass (forward and
input gradient, 2x) and the discriminator update on the source and target
maps (3x each). Inference counts one forward pass.
"""

import contextlib
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import time
import traceback

from absl import app
from absl import flags
import numpy as np

# Neither imports TF: TF stays unimported in the parent process.
from advent_tf.core import constants
from advent_tf.experiment import config as config_lib

_BACKBONE = flags.DEFINE_string("backbone", "resnet101",
                                "Backbone (see advent_tf.models.BACKBONES).")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 19, "Classes of the segmenter.", lower_bound=2)
_SOURCE_SIZE = flags.DEFINE_list("source_size", ["640", "360"],
                                 "Source training size WIDTH,HEIGHT.")
_TARGET_SIZE = flags.DEFINE_list("target_size", ["512", "256"],
                                 "Target training size WIDTH,HEIGHT.")
_EVAL_SIZE = flags.DEFINE_list("eval_size", ["1024", "512"], "Inference size WIDTH,HEIGHT.")
_METHODS = flags.DEFINE_list("methods", ["source_only", "minent", "advent"],
                             "Training methods to time (source_only, minent, advent).")
_INFERENCE = flags.DEFINE_bool("inference", True, "Also time inference at --eval_size.")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed calls first (tracing, XLA compilation).",
                               lower_bound=0)
_ITERATIONS = flags.DEFINE_integer("iterations", 3, "Timed calls.", lower_bound=1)
_JIT = flags.DEFINE_enum("jit", "both", ["both", "on", "off"],
                         "XLA compilation of the train step / inference function.")
_PRECISION = flags.DEFINE_enum("mixed_precision", "float32",
                               ["float32", "mixed_bfloat16", "mixed_float16"],
                               "Keras dtype policy.")
_BATCH = flags.DEFINE_integer("batch_size", 1, "Source and target images per iteration.",
                              lower_bound=1)
_OUTPUT_JSON = flags.DEFINE_string("output_json", None,
                                   "Also write the figures here (rewritten after each row).")
_ISOLATE = flags.DEFINE_bool("isolate", True,
                             "Run each measurement in a fresh subprocess (own peak memory, "
                             "crash-proof). Without it all run in this process, under the CPU "
                             "allocator its first row fixed: the inference row then cannot use "
                             "the system allocator as evaluate does.")
_TIMEOUT = flags.DEFINE_integer("measurement_timeout", 1800,
                                "Seconds before an isolated measurement is abandoned.",
                                lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 1234, "Random seed (weights and inputs).")
_COMPACT = flags.DEFINE_bool("compact_host_memory", False,
                             "Ours as train --compact_host_memory runs (the system allocator, "
                             "glibc returns freed memory at once); without it, as train runs by "
                             "default (on CPU, one malloc arena), and the inference as evaluate "
                             "runs (on CPU, one arena, the system allocator and a 16 MiB mmap "
                             "threshold).")
_CEILING_SIZE = flags.DEFINE_integer("ceiling_size", 4096,
                                     "Side of the square matrix product that measures the "
                                     "ceiling (0: skip the ceiling).", lower_bound=0)
_PYTORCH = flags.DEFINE_bool(
    "pytorch", False,
    "Also time the official code's iterations and inference in PyTorch "
    "(tools/pytorch_reference.py, same network, sizes, inputs and dtype policy via "
    "torch.autocast), each right after ours, for a ratio measured in the same run. "
    "Needs torch; CPU only.")
_TENSORS = flags.DEFINE_bool(
    "tensor_memory", True,
    "On CPU, also measure each training and inference row's peak of live tensors (weights, "
    "optimizer state and inputs included): the bytes the tensors need, without either "
    "framework's runtime or its C allocator's slack. Ours: one more subprocess under "
    "TensorFlow's BFC allocator and its profiler (also the allocator's own count, \"BFC "
    "MiB\"); PyTorch: one more pair of calls under torch.profiler's memory events.")
_PROFILE = flags.DEFINE_bool(
    "profile", False,
    "Also profile one call of each training and inference row and print where its time goes "
    "by op family (convolutions with their GFLOP/s against the ceiling, batch norm, "
    "elementwise, layout, resize and pooling, softmax and loss, other). Ours: one more "
    "subprocess, TensorFlow's profiler with one op at a time (inter-op parallelism 1, so that "
    "op times add up); PyTorch: torch.profiler's self times.")
_ROUNDS = flags.DEFINE_integer(
    "rounds", 1, "Measure each configuration this many times, alternating with PyTorch "
    "under --pytorch; the timed calls of all rounds are pooled.", lower_bound=1)
# Internal: a subprocess started by --isolate runs one measurement and writes it here.
_MEASURE = flags.DEFINE_string("measure", None,
                               "Internal: KIND,on|off[,pytorch|tensors] to measure alone (KIND: a "
                               "method, inference, ceiling or idle).")
_RESULT_FILE = flags.DEFINE_string("result_file", None, "Internal: where --measure writes.")

METHODS = ("source_only", "minent", "advent")
INFERENCE = "inference"
CEILING = "ceiling"
IDLE = "idle"
OURS = "advent_tf"
PYTORCH = "pytorch"
# Ours again, in a process whose CPU tensors TensorFlow's BFC allocator counts.
OUR_TENSORS = "tensors"
# Ours again, one call traced by TensorFlow's profiler.
OUR_PROFILE = "profile"
# Op families of a profile, first match wins; the patterns see TensorFlow op
# types and PyTorch's aten names alike (lower case).
OP_FAMILIES = (
    ("convolution", r"conv|matmul|^aten::(mm|addmm|bmm)$"),
    ("batch norm", r"batch_?norm"),
    ("resize, pool", r"resize|upsample|pool"),
    ("softmax, loss", r"softmax|log|entropy|nll|exp"),
    ("layout", r"pad|spacetobatch|batchtospace|transpose|concat|split|slice|copy|reshape|gather"
               r"|tile|pack|stack|index|nonzero|permute|cat$|select"),
    ("elementwise", r"add|mul|sub|div|relu|threshold|where|sqrt|square|max|min|sum|mean|neg"
                    r"|cast|fill|zero|pow|greater|less|equal|sign|abs|clip|bias|sgd|adam"),
)
BFC_VARIABLE = "TF_CPU_ALLOCATOR_USE_BFC"
# The trace annotation around the call whose live tensors are counted.
MEASURED_CALL = "benchmark_measured_call"
COMPUTE_DTYPE = {"float32": "float32", "mixed_bfloat16": "bfloat16",
                 "mixed_float16": "float16"}


def _size(values, name):
    """A WIDTH,HEIGHT flag -> (height, width); a usage error naming the flag if malformed."""
    try:
        return config_lib.hw(config_lib.parse_size(values, name))
    except config_lib.ConfigError as e:
        raise app.UsageError(str(e)) from e


def _config():
    """The benchmark settings shared by the parent and its measurement subprocesses."""
    return {
        "backbone": _BACKBONE.value,
        "num_classes": _NUM_CLASSES.value,
        "batch_size": _BATCH.value,
        "source_size": _size(_SOURCE_SIZE.value, "source_size"),
        "target_size": _size(_TARGET_SIZE.value, "target_size"),
        "eval_size": _size(_EVAL_SIZE.value, "eval_size"),
        "mixed_precision": _PRECISION.value,
        "warmup": _WARMUP.value,
        "iterations": _ITERATIONS.value,
        "seed": _SEED.value,
        "ceiling_size": _CEILING_SIZE.value,
        "compact_host_memory": _COMPACT.value,
        "tensor_memory": _TENSORS.value,
        "profile": _PROFILE.value,
    }


# -- Building the real training objects --------------------------------------
def experiment_config(name, config, jit_compile):
    """The `advent_tf.experiment.config.ExperimentConfig` of a benchmarked method.

    The reference hyper-parameters (the config's defaults: `TorchSGD` with
    momentum 0.9 and coupled weight decay 5e-4 on a poly schedule, ASPP heads
    at 10x; for AdvEnt one Adam per discriminator; dynamic loss scaling under
    mixed_float16), with the benchmark's network, precision and seed, and
    the official code's update count: `--backbone_update_repeats=reference`
    (each backbone tensor updated as often as the reference lists it, as
    the paper configs and the PyTorch side do).
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; expected one of {METHODS}")
    return config_lib.from_values(dict(
        method=name, backbone=config["backbone"], num_classes=config["num_classes"],
        multi_level=True, bn_mode="reference", mixed_precision=config["mixed_precision"],
        backbone_update_repeats=("reference" if config_lib.has_reference_listing(config["backbone"])
                                 else "1"),
        seed=config["seed"], jit_compile=jit_compile))


def build_method(name, config, jit_compile):
    """Builds and compiles a training method exactly as `advent_tf.train` does (the factory).

    Args:
      name: "source_only", "minent" or "advent".
      config: `_config()`.
      jit_compile: bool, passed to `compile`.

    Returns:
      The compiled `advent_tf.methods.DomainAdaptationModel`.
    """
    from advent_tf.experiment import factory

    return factory.build_method(experiment_config(name, config, jit_compile))


def random_arrays(config):
    """Random preprocessed source/target images (NHWC) and source labels, as numpy arrays."""
    rng = np.random.default_rng(config["seed"])
    batch = config["batch_size"]

    def image(size):
        # BGR minus the ImageNet mean: roughly [-123, 151].
        return rng.uniform(-120.0, 135.0, (batch, *size, 3)).astype(np.float32)

    return {constants.SOURCE_IMAGE: image(config["source_size"]),
            constants.SOURCE_LABEL: rng.integers(0, config["num_classes"],
                                                 (batch, *config["source_size"])).astype(np.int32),
            constants.TARGET_IMAGE: image(config["target_size"])}


def random_batch(config):
    """`random_arrays` as the tensors the training pipeline yields."""
    import tensorflow as tf

    return {key: tf.constant(value) for key, value in random_arrays(config).items()}


def random_eval_images(config):
    """Random preprocessed NHWC images at the inference size."""
    return np.random.default_rng(config["seed"]).uniform(
        -120.0, 135.0, (config["batch_size"], *config["eval_size"], 3)).astype(np.float32)


# -- FLOP counting -----------------------------------------------------------
def conv_gflop(model, shape):
    """GFLOP (2 x multiply-adds) of the Conv2D ops of one inference-mode forward pass.

    Args:
      model: a Keras model on NHWC inputs.
      shape: full input shape [B, H, W, C].

    Returns:
      float GFLOP, from the statically shaped traced graph.
    """
    import tensorflow as tf

    graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec(shape, tf.float32)).graph
    total = 0
    for op in graph.get_operations():
        if op.type == "Conv2D":
            kernel = op.inputs[1].shape.as_list()  # [kh, kw, in, out]
            total += 2 * int(np.prod(op.outputs[0].shape.as_list())) * int(np.prod(kernel[:3]))
    return total / 1e9


def iteration_gflop(method, name, config):
    """Approximate GFLOP of one training iteration (see the module docstring)."""
    batch, classes = config["batch_size"], config["num_classes"]
    source = [batch, *config["source_size"]]
    target = [batch, *config["target_size"]]
    total = 3 * conv_gflop(method.segmenter, source + [3])
    if name in ("minent", "advent"):
        total += 3 * conv_gflop(method.segmenter, target + [3])
    if name == "advent":
        for disc in (method.discriminator_main, method.discriminator_aux):
            d_target = conv_gflop(disc, target + [classes])
            total += 2 * d_target + 3 * d_target + 3 * conv_gflop(disc, source + [classes])
    return total


# -- One measurement ---------------------------------------------------------
def _peak_memory(on_gpu):
    """(bytes, kind) of the peak memory so far."""
    if on_gpu:
        import tensorflow as tf

        return int(tf.config.experimental.get_memory_info("GPU:0")["peak"]), "gpu_peak"
    # Linux: the high-water mark of this process image. ru_maxrss would also
    # count the parent's resident set at the fork (Linux carries it over
    # exec), so a small measurement started from the parent (600 MiB with
    # TensorFlow loaded) read as at least that.
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024, "process_rss_peak"
    except OSError:
        pass
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    scale = 1 if platform.system() == "Darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, "process_rss_peak"


def _time_calls(call, warmup, iterations, after_warmup=None):
    """Runs `call` warmup + iterations times; `call` must return once its work is done.

    `after_warmup`, if given, runs untimed between the two.

    Returns:
      The timing fields of a measurement: seconds (mean of the timed calls),
      seconds_min, seconds_all and first_call_seconds.
    """
    def run():
        start = time.perf_counter()
        call()
        return time.perf_counter() - start

    warm = [run() for _ in range(warmup)]
    if after_warmup is not None:
        after_warmup()
    times = [run() for _ in range(iterations)]
    return {"seconds": float(np.mean(times)), "seconds_min": float(np.min(times)),
            "seconds_all": [float(t) for t in times],
            "first_call_seconds": float(warm[0] if warm else times[0])}


def _fetched(call):
    """`call` followed by copying its TensorFlow outputs to the host (which waits for them)."""
    import tensorflow as tf

    return lambda: tf.nest.map_structure(lambda t: t.numpy(), call())


def measure(kind, jit, config):
    """Times one method's training iteration or the inference, in this process.

    Args:
      kind: a method name or "inference".
      jit: bool, XLA compilation.
      config: `_config()`.

    Returns:
      A JSON-serialisable dict: seconds (mean of the timed calls), seconds_min,
      seconds_all, first_call_seconds (tracing and compilation included),
      jit_applied (what Keras actually used), gflop, peak_memory_bytes and
      memory_kind (the report adds gflop_per_s and the ratios).
    """
    import tensorflow as tf

    from advent_tf.core import host_memory

    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    # As train (evaluate, for the inference) does.
    host_memory.configure(config["compact_host_memory"], on_gpu, inference=kind == INFERENCE)
    if on_gpu:
        tf.config.experimental.reset_memory_stats("GPU:0")
    with _policy(config):
        call, jit_applied, gflop = _our_call(kind, jit, config)
        # As train does after its first step (`callbacks.ReleaseFreeHeap`).
        trim = None if kind == INFERENCE else host_memory.release_free_heap
        timing = _time_calls(call, config["warmup"], config["iterations"], after_warmup=trim)
    peak, memory_kind = _peak_memory(on_gpu)
    return {**timing, "jit_applied": jit_applied, "gflop": gflop,
            "peak_memory_bytes": peak, "memory_kind": memory_kind}


@contextlib.contextmanager
def _policy(config):
    """Keras' global dtype policy set to the configured one, float32 again on exit."""
    import keras

    keras.mixed_precision.set_global_policy(config["mixed_precision"])
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _warmed_call(kind, jit, config):
    """`_our_call`'s call, already run the warm-up count of times (at least once)."""
    call, _, _ = _our_call(kind, jit, config)
    for _ in range(max(config["warmup"], 1)):
        call()
    return call


def _our_call(kind, jit, config):
    """(call, jit_applied, gflop): one training iteration or inference of ours, fetched."""
    import tensorflow as tf

    from advent_tf.inference import evaluation_protocol

    if kind == INFERENCE:
        import keras

        from advent_tf import models

        keras.utils.set_random_seed(config["seed"])
        segmenter = models.build_segmenter(config["backbone"], config["num_classes"], True,
                                           "reference")
        images = tf.constant(random_eval_images(config))

        # The evaluation path: main logits upsampled (align_corners) to the
        # input size and their argmax, a block of rows at a time as evaluate does.
        @tf.function(jit_compile=jit)
        def infer(x):
            return evaluation_protocol.ensemble_prediction([(segmenter, 1.0)], x,
                                                           tf.shape(x)[1:3])

        gflop = conv_gflop(segmenter, [config["batch_size"], *config["eval_size"], 3])
        return _fetched(lambda: infer(images)), jit, gflop
    method = build_method(kind, config, jit)
    iterator = iter(tf.data.Dataset.from_tensors(random_batch(config)).repeat())
    method.make_train_function()
    # Keras downgrades jit_compile=True to False for models it deems unfit.
    return (_fetched(lambda: method.train_function(iterator)), bool(method.jit_compile),
            iteration_gflop(method, kind, config))


def measure_tensors(kind, jit, config):
    """Peak bytes of our live CPU tensors during one call after the warm-up.

    See `tf_tensor_peak`. Must run in a fresh process that set `BFC_VARIABLE`
    first: the allocator is chosen when TensorFlow makes its first device.

    Returns:
      dict: tensor_peak_bytes, allocator_peak_bytes.
    """
    with _policy(config):
        return tf_tensor_peak(lambda: _warmed_call(kind, jit, config))


def tf_tensor_peak(setup):
    """Peaks of TensorFlow's live CPU tensors during one call.

    Two figures, both from the memory events that TensorFlow's BFC allocator
    gives its profiler (with oneDNN, TensorFlow's default CPU allocator is a
    BFC allocator only for blocks of 256 KiB and more and hands smaller ones to
    malloc; `BFC_VARIABLE` puts every tensor in one BFC allocator): the bytes
    the live tensors asked for, like for like with `torch_tensor_peak`'s count
    (PyTorch's CPU allocator gives each tensor exactly its size); and the
    bytes of the allocator's chunks that held them, which BFC counts as in
    use (`get_memory_info`'s peak). They differ
    because BFC hands out a free chunk whole unless it is at least twice the
    request (or 128 MiB larger): which chunk a tensor gets depends on what
    was freed before, so the second is larger and moves more between runs of
    the same step (full-resolution AdvEnt over six runs: 7001-7167 MiB asked
    for, 7382-7713 in chunks; README *Speed*). A GPU's BFC allocator does the
    same, so the second is closer to what a GPU would hold, the first to what
    the tensors need.

    The profiler runs from before `setup` builds anything, so every
    allocation alive during the call is in its log; the call is marked with
    a trace annotation on the same clock.

    Args:
      setup: builds and warms up; returns the call to measure.

    Returns:
      dict: tensor_peak_bytes (asked for), allocator_peak_bytes (BFC chunks).
    """
    import tempfile

    import tensorflow as tf

    if os.environ.get(BFC_VARIABLE) != "true":
        raise RuntimeError(f"tf_tensor_peak needs {BFC_VARIABLE}=true from the process start")
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        try:
            call = setup()
            with tf.profiler.experimental.Trace(MEASURED_CALL):
                call()
        finally:
            tf.profiler.experimental.stop()
        events, (start, end) = _memory_events(_read_xspace(logdir), MEASURED_CALL)
    requested, allocated = live_tensor_peaks(events, start, end)
    return {"tensor_peak_bytes": requested, "allocator_peak_bytes": allocated}


def _read_xspace(logdir):
    """The XSpace (TensorFlow profiler's trace) that one session wrote under `logdir`."""
    import glob

    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(glob.glob(os.path.join(logdir, "plugins", "profile", "*",
                                     "*.xplane.pb"))[0], "rb") as f:
        space.ParseFromString(f.read())
    return space


def _memory_events(space, marker):
    """The allocator's events of a trace and the interval of the event named `marker`.

    Returns:
      (events, (start, end)): events as `live_tensor_peaks` takes them, times
      in picoseconds on the trace's clock.
    """
    events, interval = [], None
    kinds = {"MemoryAllocation": True, "MemoryDeallocation": False}
    for plane in space.planes:
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        stat_names = {key: meta.name for key, meta in plane.stat_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                name = names.get(event.metadata_id)
                when = line.timestamp_ns * 1000 + event.offset_ps
                if name == marker:
                    interval = (when, when + event.duration_ps)
                if name not in kinds:
                    continue
                stats = {stat_names.get(stat.metadata_id): stat for stat in event.stats}
                events.append((when, kinds[name], _stat_int(stats["addr"]),
                               _stat_int(stats["requested_bytes"]),
                               _stat_int(stats["allocation_bytes"])))
    if interval is None or not events:
        raise RuntimeError(f"the trace has no {marker!r} event or no allocator events "
                           f"(is {BFC_VARIABLE}=true?)")
    return events, interval


def _stat_int(stat):
    """An XStat's integer, whichever of its fields holds it."""
    return int(getattr(stat, stat.WhichOneof("value")))


def live_tensor_peaks(events, start, end):
    """Peaks of the live bytes over [start, end], from an allocator's event log.

    Args:
      events: (time, is_allocation, address, requested_bytes, allocated_bytes)
        for every allocation and free since before the first tensor, in any
        order; a free names its block by address.
      start: beginning of the interval, on the events' clock.
      end: its end.

    Returns:
      (requested, allocated): the largest sums, at one instant of the
      interval, of the bytes the live blocks asked for and of the bytes the
      allocator gave them.
    """
    live = {}
    now = (0, 0)
    peaks = None
    for when, is_allocation, address, asked, given in sorted(events, key=lambda e: e[0]):
        if when > end:
            break
        if when >= start and peaks is None:
            peaks = now  # What was alive when the interval began.
        if is_allocation:
            live[address] = (asked, given)
        else:
            asked, given = live.pop(address, (0, 0))
            asked, given = -asked, -given
        now = (now[0] + asked, now[1] + given)
        if peaks is not None:
            peaks = (max(peaks[0], now[0]), max(peaks[1], now[1]))
    return now if peaks is None else peaks


def op_family(name):
    """The `OP_FAMILIES` name of a TensorFlow op type or PyTorch op name ("other" if none)."""
    import re

    lowered = name.lower()
    return next((family for family, pattern in OP_FAMILIES if re.search(pattern, lowered)),
                "other")


def _family_seconds(seconds_by_op):
    """{family: seconds} from {op type or name: seconds}."""
    families = {}
    for name, seconds in seconds_by_op.items():
        family = op_family(name)
        families[family] = families.get(family, 0.0) + seconds
    return families


def measure_profile(kind, jit, config):
    """Seconds per op family over one traced call of ours, ops run one at a time.

    TensorFlow runs independent ops side by side (inter-op parallelism), so
    their traced durations would overlap and not add up to the call; with
    one inter-op thread they do, while each op still uses every core.
    Must run in a fresh process (the thread setting is fixed when TensorFlow
    starts).

    Returns:
      dict: profile ({family: seconds}), profile_wall_seconds (the traced
      call).
    """
    import tempfile

    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(1)
    with _policy(config):
        call = _warmed_call(kind, jit, config)
        with tempfile.TemporaryDirectory() as logdir:
            tf.profiler.experimental.start(logdir)
            start = time.perf_counter()
            call()
            wall = time.perf_counter() - start
            tf.profiler.experimental.stop()
            space = _read_xspace(logdir)
    seconds_by_op = {}
    for plane in space.planes:
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        # The executor runs the graph's kernels on its inter-op threads
        # ("tf_Compute/..."), traced as "scope/name:OpType" (runtime events
        # use "Class::method"); the Python thread only holds the call that
        # spans them all.
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = names.get(event.metadata_id, "")
                if ":" not in name or "::" in name:
                    continue
                op_type = name.rsplit(":", 1)[1].strip()
                if "PartitionedCall" in op_type or op_type.startswith("__inference"):
                    continue
                seconds_by_op[op_type] = seconds_by_op.get(op_type, 0.0) + event.duration_ps / 1e12
    return {"profile": _family_seconds(seconds_by_op), "profile_wall_seconds": wall}


def torch_profile(call):
    """{family: seconds} of one `call` from torch.profiler's self CPU times."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        start = time.perf_counter()
        call()
        wall = time.perf_counter() - start
    seconds_by_op = {event.key: event.self_cpu_time_total / 1e6
                     for event in profiler.key_averages()}
    return _family_seconds(seconds_by_op), wall


def torch_tensor_peak(call, persistent):
    """Peak bytes of PyTorch's live CPU tensors during one `call`.

    torch.profiler reports every CPU allocation and free made while it runs,
    but not the frees of blocks allocated before it started (the previous
    step's gradients, say). So two calls are profiled: the first makes those
    blocks under the profiler; over the second, the live bytes are the
    tensors alive at its start (`persistent()`: every distinct storage of the
    weights, gradients, buffers, optimizer states and inputs) plus the running
    sum of its allocations and frees.

    Args:
      call: one training iteration or inference.
      persistent: returns the tensors alive between calls.

    Returns:
      int bytes.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        call()
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                    for t in persistent() if t is not None}
        start = time.time_ns()  # The profiler's clock: nanoseconds since the epoch.
        call()
    changes = sorted((event.start_ns(), event.nbytes())
                     for event in profiler.profiler.kineto_results.events()
                     if event.name() == "[memory]" and event.start_ns() > start)
    live = peak = 0
    for _, change in changes:
        live += change
        peak = max(peak, live)
    return sum(storages.values()) + peak


def measure_pytorch(kind, config):
    """Times the official code's iteration or inference in PyTorch, in this process.

    The network, discriminators, optimisers and iterations of
    tools/pytorch_reference.py on the inputs ours gets (transposed to NCHW);
    a mixed policy becomes `torch.autocast` with its compute dtype.

    Args:
      kind: a method name or "inference".
      config: `_config()`.

    Returns:
      `measure`'s dict without the GFLOP figures (the networks are the same:
      the parent takes ours), plus torch_version and torch_threads.
    """
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import pytorch_reference
    import torch

    if config["backbone"] not in pytorch_reference.BACKBONES:
        raise ValueError(f"no PyTorch counterpart for backbone {config['backbone']!r}")
    autocast = {"float32": None, "mixed_bfloat16": torch.bfloat16,
                "mixed_float16": torch.float16}[config["mixed_precision"]]
    torch.manual_seed(config["seed"])
    model = pytorch_reference.build_resnet(config["backbone"], config["num_classes"])

    def nchw(array):
        return torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2)))

    if kind == INFERENCE:
        images = nchw(random_eval_images(config))
        call = lambda: pytorch_reference.inference(model, images, autocast)  # noqa: E731
        modules, optimizers, inputs = [model], [], [images]
    else:
        arrays = random_arrays(config)
        trainer = pytorch_reference.ReferenceTrainer(kind, model, config["num_classes"],
                                                     autocast)
        source, target = nchw(arrays[constants.SOURCE_IMAGE]), nchw(arrays[constants.TARGET_IMAGE])
        labels = torch.from_numpy(arrays[constants.SOURCE_LABEL])
        call = lambda: trainer.step(source, labels, target)  # noqa: E731
        modules = [m for m in (model, trainer.d_main, trainer.d_aux) if m is not None]
        optimizers = [trainer.optimizer] + ([trainer.optimizer_d_main, trainer.optimizer_d_aux]
                                            if trainer.d_main is not None else [])
        inputs = [source, labels, target]

    def persistent():
        tensors = list(inputs)
        for module in modules:
            tensors += [t for p in module.parameters() for t in (p, p.grad)]
            tensors += list(module.buffers())
        for optimizer in optimizers:
            tensors += [v for state in optimizer.state.values() for v in state.values()
                        if torch.is_tensor(v)]
        return tensors

    # Synchronous on CPU: losses are fetched with .item(), maps are returned.
    timing = _time_calls(call, config["warmup"], config["iterations"])
    peak, memory_kind = _peak_memory(False)
    result = {**timing, "jit_applied": False, "peak_memory_bytes": peak,
              "memory_kind": memory_kind, "torch_version": torch.__version__,
              "torch_threads": torch.get_num_threads()}
    if config["tensor_memory"]:
        result["tensor_peak_bytes"] = torch_tensor_peak(call, persistent)
    if config["profile"]:
        result["profile"], result["profile_wall_seconds"] = torch_profile(call)
    return result


def measure_ceiling(implementation, config, calls=3):
    """GFLOP/s of a square matrix product in the policy's compute type, in this process.

    The practical ceiling of the convolutions: the framework's best kernel
    for the densest operation there is.

    Args:
      implementation: OURS (TensorFlow's kernel) or PYTORCH (torch.mm).
      config: `_config()` (ceiling_size, mixed_precision).
      calls: timed products after one untimed; the fastest counts.

    Returns:
      dict: gflop_per_s (of the fastest call), seconds_all, dtype, size.
    """
    size, dtype = config["ceiling_size"], COMPUTE_DTYPE[config["mixed_precision"]]
    if implementation == PYTORCH:
        import torch

        a, b = (torch.rand(size, size).to(getattr(torch, dtype)) for _ in range(2))
        call = lambda: torch.mm(a, b)  # noqa: E731  (synchronous on CPU)
    else:
        import tensorflow as tf

        a, b = (tf.cast(tf.random.uniform([size, size]), dtype) for _ in range(2))
        # The sum makes the product finish before the host has its one number.
        product = tf.function(lambda: tf.reduce_sum(tf.cast(tf.matmul(a, b), tf.float32)))
        call = lambda: product().numpy()  # noqa: E731
    timing = _time_calls(call, 1, calls)
    return {"gflop_per_s": 2 * size ** 3 / timing["seconds_min"] / 1e9,
            "seconds_all": timing["seconds_all"], "dtype": dtype, "size": size}


def measure_idle(implementation):
    """Peak RSS of a process that loaded the framework and ran one tiny convolution.

    What the framework costs before any model: subtracted from the
    measurements' peaks ("net MiB") so that each side is charged for its
    work, not for its runtime.
    """
    if implementation == PYTORCH:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import pytorch_reference  # noqa: F401  (what measure_pytorch loads)
        import torch

        torch.nn.functional.conv2d(torch.ones(1, 3, 8, 8), torch.ones(4, 3, 3, 3))
    else:
        import tensorflow as tf

        from advent_tf import methods  # noqa: F401  (what measure loads)
        tf.nn.conv2d(tf.ones([1, 8, 8, 3]), tf.ones([3, 3, 3, 4]), 1, "SAME").numpy()
    peak, memory_kind = _peak_memory(False)
    return {"peak_memory_bytes": peak, "memory_kind": memory_kind}


def _measure_isolated(kind, jit, implementation):
    """Runs `measure` (`measure_pytorch`, `measure_tensors`) in a fresh subprocess, same flags.

    Returns:
      The measurement dict, or {"error": first line of the failure}.
    """
    import tempfile

    spec = f"{kind},{'on' if jit else 'off'}" + ("" if implementation == OURS
                                                 else f",{implementation}")
    with tempfile.TemporaryDirectory() as scratch:
        result_file = os.path.join(scratch, "result.json")
        command = [sys.executable, os.path.abspath(__file__), *sys.argv[1:],
                   f"--measure={spec}", f"--result_file={result_file}", "--output_json="]
        try:
            process = subprocess.run(command, capture_output=True, text=True,
                                     timeout=_TIMEOUT.value)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {_TIMEOUT.value} s"}
        if os.path.exists(result_file):
            with open(result_file, encoding="utf-8") as f:
                return json.load(f)
        lines = [line for line in process.stderr.splitlines() if line.strip()]
        cause = next((line for line in reversed(lines) if "Error" in line),
                     lines[-1] if lines else "no output")
        return {"error": f"exit status {process.returncode}: {cause.strip()}"}


def _measure_in_process(kind, jit, implementation):
    """`measure` or `measure_pytorch` here; an exception becomes the row's error."""
    try:
        if kind == CEILING:
            return measure_ceiling(implementation, _config())
        if kind == IDLE:
            return measure_idle(implementation)
        if implementation == PYTORCH:
            return measure_pytorch(kind, _config())
        if implementation == OUR_TENSORS:
            return measure_tensors(kind, jit, _config())
        if implementation == OUR_PROFILE:
            return measure_profile(kind, jit, _config())
        return measure(kind, jit, _config())
    except Exception as e:  # One failing configuration must not stop the others.
        traceback.print_exc()
        return {"error": _error_line(e)}


def _pool_rounds(results):
    """One result from the rounds of a measurement: timed calls pooled, first round's 1st call."""
    good = [r for r in results if "error" not in r]
    if not good:
        return results[0]
    times = [t for r in good for t in r["seconds_all"]]
    pooled = {**good[0], "seconds": float(np.mean(times)), "seconds_min": float(np.min(times)),
              "seconds_all": times, "rounds": len(good),
              "peak_memory_bytes": max(r["peak_memory_bytes"] for r in good)}
    if all("tensor_peak_bytes" in r for r in good):
        pooled["tensor_peak_bytes"] = max(r["tensor_peak_bytes"] for r in good)
    if len(good) < len(results):
        pooled["failed_rounds"] = len(results) - len(good)
    return pooled


def _error_line(exception):
    text = str(exception).strip().splitlines()
    return f"{type(exception).__name__}: {text[0] if text else ''}"


def _run_child(spec):
    """--measure: one measurement in this process, written to --result_file."""
    kind, jit, *implementation = spec.split(",")
    if implementation == [OUR_TENSORS]:
        # Before TensorFlow makes its first device, which fixes the allocator.
        os.environ[BFC_VARIABLE] = "true"
    result = _measure_in_process(kind, jit == "on", implementation[0] if implementation else OURS)
    with open(_RESULT_FILE.value, "w", encoding="utf-8") as f:
        json.dump(result, f)


# -- Report ------------------------------------------------------------------
_HEADER = (f"{'measurement':<12} {'impl':<7} {'XLA':<4} {'s/call':>8} {'min':>8} "
           f"{'1st call':>9} {'GFLOP':>8} {'GFLOP/s':>8} {'%ceil':>6} {'peak MiB':>9} "
           f"{'net MiB':>8} {'tensors':>8} {'BFC MiB':>8} {'/torch':>7}")
_SHORT_NAME = {OURS: "ours", PYTORCH: "pytorch"}


def format_row(row):
    """One table line for a result row (or its error)."""
    xla = "-" if row["implementation"] == PYTORCH else ("on" if row["jit"] else "off")
    head = f"{row['name']:<12} {_SHORT_NAME[row['implementation']]:<7} {xla:<4}"
    if "error" in row:
        return f"{head} FAILED: {row['error']}"

    def optional(value, spec, width):
        return f"{'-':>{width}}" if value is None else f"{value:>{width}{spec}}"

    note = ("" if row["implementation"] == PYTORCH or row["jit_applied"] == row["jit"]
            else f"  (Keras applied jit_compile={row['jit_applied']})")
    net = row.get("net_memory_bytes")
    tensors = row.get("tensor_peak_bytes")
    chunks = row.get("allocator_peak_bytes")
    return (f"{head} {row['seconds']:>8.3f} {row['seconds_min']:>8.3f} "
            f"{row['first_call_seconds']:>9.2f} {optional(row.get('gflop'), '.1f', 8)} "
            f"{optional(row.get('gflop_per_s'), '.1f', 8)} "
            f"{optional(row.get('percent_of_ceiling'), '.1f', 6)} "
            f"{row['peak_memory_bytes'] / 2**20:>9.0f} "
            f"{optional(None if net is None else net / 2**20, '.0f', 8)} "
            f"{optional(None if tensors is None else tensors / 2**20, '.0f', 8)} "
            f"{optional(None if chunks is None else chunks / 2**20, '.0f', 8)} "
            f"{optional(row.get('ratio_to_pytorch'), '.2f', 7)}{note}")


def _annotate(row, ceiling, idle, gflop=None, pytorch_row=None):
    """Adds GFLOP/s, % of the measured ceiling, net memory and the ratio to PyTorch.

    Args:
      row: a result row.
      ceiling: the ceiling's GFLOP/s measured in this run, or None.
      idle: {implementation: idle peak bytes} measured in this run.
      gflop: for a PyTorch row, the GFLOP of our row of the same measurement.
      pytorch_row: for our row, the PyTorch row of the same measurement, if any.
    """
    if "error" in row:
        return row
    if gflop is not None:
        row["gflop"] = gflop
    if "gflop" in row:
        row["gflop_per_s"] = row["gflop"] / row["seconds"]
        if ceiling:
            row["percent_of_ceiling"] = 100.0 * row["gflop_per_s"] / ceiling
    if idle.get(row["implementation"]) and row["memory_kind"] == "process_rss_peak":
        row["net_memory_bytes"] = row["peak_memory_bytes"] - idle[row["implementation"]]
    if pytorch_row is not None and "error" not in pytorch_row:
        row["ratio_to_pytorch"] = row["seconds"] / pytorch_row["seconds"]
    return row


def _write_json(path, report):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)


def _machine(config, gpus, measure_one):
    """The machine part of the report: CPU, theoretical peak, measured ceilings, idle runtimes.

    Prints each figure as it comes. On a GPU the CPU ceiling means nothing
    and is skipped.
    """
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from advent_tf.core import hardware

    info = hardware.cpu_info()
    dtype = COMPUTE_DTYPE[config["mixed_precision"]]
    peak, how = hardware.cpu_peak_gflops(info, dtype=dtype)
    machine = {"cpu": hardware.describe_cpu(info), "cpu_peak_gflop_per_s": peak,
               "cpu_peak_how": how, "ceilings": {}, "ceiling_gflop_per_s": None,
               "idle_memory_bytes": {},
               "precision_problem": hardware.precision_problem(config["mixed_precision"],
                                                               info=info)}
    print(f"CPU: {machine['cpu']}", flush=True)
    if machine["precision_problem"]:
        print(f"WARNING: {machine['precision_problem']}", flush=True)
    implementations = [OURS] + ([PYTORCH] if _PYTORCH.value or _torch_available() else [])
    if config["ceiling_size"] and not gpus:
        for implementation in implementations:
            result = measure_one(CEILING, False, implementation)
            machine["ceilings"][implementation] = result
            if "error" not in result:
                print(f"ceiling: {config['ceiling_size']}x{config['ceiling_size']} "
                      f"{result['dtype']} matrix product, {_SHORT_NAME[implementation]}: "
                      f"{result['gflop_per_s']:.1f} GFLOP/s", flush=True)
        good = [r["gflop_per_s"] for r in machine["ceilings"].values() if "error" not in r]
        machine["ceiling_gflop_per_s"] = max(good) if good else None
        print(f"theoretical {dtype} peak: "
              + (f"{peak:.1f} GFLOP/s ({how})" if peak else f"unknown ({how})"), flush=True)
    if not gpus:
        for implementation in [OURS] + ([PYTORCH] if _PYTORCH.value else []):
            result = measure_one(IDLE, False, implementation)
            if "error" not in result:
                machine["idle_memory_bytes"][implementation] = result["peak_memory_bytes"]
                print(f"idle runtime, {_SHORT_NAME[implementation]}: "
                      f"{result['peak_memory_bytes'] / 2**20:.0f} MiB", flush=True)
    return machine


def _torch_available():
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def run_benchmark():
    """Runs every requested measurement, prints the table, writes --output_json.

    Returns:
      The report dict (also the JSON content).
    """
    import keras
    import tensorflow as tf

    config = _config()
    unknown = sorted(set(_METHODS.value) - set(METHODS))
    if unknown:
        raise app.UsageError(f"--methods: unknown {unknown}; expected some of {METHODS}")
    jits = {"both": (False, True), "on": (True,), "off": (False,)}[_JIT.value]
    kinds = list(_METHODS.value) + ([INFERENCE] if _INFERENCE.value else [])
    gpus = tf.config.list_physical_devices("GPU")
    if _PYTORCH.value and gpus:
        raise app.UsageError("--pytorch compares on the CPU only; hide the GPUs "
                             "(CUDA_VISIBLE_DEVICES=) to run it")
    device = (tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
              if gpus else f"CPU ({os.cpu_count()} cores)")

    def measure_one(kind, jit, implementation):
        if _ISOLATE.value:
            return _measure_isolated(kind, jit, implementation)
        result = _measure_in_process(kind, jit, implementation)
        keras.backend.clear_session()
        gc.collect()
        return result

    height, width = config["source_size"]
    t_height, t_width = config["target_size"]
    e_height, e_width = config["eval_size"]
    print(f"{config['backbone']} multi-level, batch {config['batch_size']}, "
          f"source {width}x{height} + target {t_width}x{t_height}, inference "
          f"{e_width}x{e_height}, {config['mixed_precision']}, {device}, "
          f"TF {tf.__version__} / Keras {keras.__version__}, warmup {config['warmup']}, "
          f"{config['iterations']} timed calls", flush=True)
    machine = _machine(config, gpus, measure_one)
    report = {"config": {**config, "jit": _JIT.value, "isolate": _ISOLATE.value,
                         "pytorch": _PYTORCH.value, "rounds": _ROUNDS.value,
                         "device": device, "tensorflow": tf.__version__,
                         "keras": keras.__version__},
              "machine": machine, "results": []}
    print(_HEADER, flush=True)
    pytorch_rows = {}
    annotate = dict(ceiling=machine["ceiling_gflop_per_s"], idle=machine["idle_memory_bytes"])

    def emit(row):
        report["results"].append(row)
        print(format_row(row), flush=True)
        if _OUTPUT_JSON.value:
            _write_json(_OUTPUT_JSON.value, report)

    for jit in jits:
        for kind in kinds:
            # PyTorch has no XLA switch: timed once per measurement, next to our
            # first pass, alternating round by round so both see the same load.
            with_pytorch = _PYTORCH.value and kind not in pytorch_rows
            ours, theirs = [], []
            for _ in range(_ROUNDS.value):
                ours.append(measure_one(kind, jit, OURS))
                if with_pytorch:
                    theirs.append(measure_one(kind, False, PYTORCH))
            row = {"name": kind, "implementation": OURS, "jit": jit, **_pool_rounds(ours)}
            # CPU only (on a GPU the peak above is already the allocator's, and
            # kernels run on its streams, not the executor's threads), and always
            # a fresh process: the allocator and the thread setting are fixed
            # when TensorFlow starts. Each child returns only the keys it adds.
            extras = [(implementation, failure) for implementation, failure, wanted in (
                (OUR_TENSORS, "tensor peak not measured", config["tensor_memory"]),
                (OUR_PROFILE, "not profiled", config["profile"])) if wanted]
            for implementation, failure in extras if not gpus and "error" not in row else []:
                extra = _measure_isolated(kind, jit, implementation)
                if "error" in extra:
                    print(f"{kind}: {failure}: {extra['error']}", flush=True)
                else:
                    row.update(extra)
            if with_pytorch:
                pytorch_rows[kind] = _annotate(
                    {"name": kind, "implementation": PYTORCH, "jit": False,
                     **_pool_rounds(theirs)}, gflop=row.get("gflop"), **annotate)
            emit(_annotate(row, pytorch_row=pytorch_rows.get(kind), **annotate))
            if with_pytorch:
                emit(pytorch_rows[kind])
    memory = ("peak MiB: GPU:0 allocator peak per measurement" if gpus else
              "peak MiB: process RSS peak (runtime included"
              + (", per measurement subprocess); net MiB: minus the framework's idle runtime"
                 if _ISOLATE.value else ", cumulative over the process)")
              + ("; tensors: peak MiB of live tensors over one call (weights, optimizer state "
                 "and inputs included; ours from the memory events of TensorFlow's BFC allocator "
                 "in a fresh process, PyTorch's from torch.profiler's); BFC MiB: ours as that "
                 "allocator counts it (its chunks, some larger than the tensor they hold)"
                 if config["tensor_memory"] else ""))
    ceiling = machine["ceiling_gflop_per_s"]
    print(f"s/call: mean of the timed calls; 1st call: tracing and compilation included; "
          f"{memory}; %ceil: of "
          + (f"the fastest {config['ceiling_size']} matrix product measured above "
             f"({ceiling:.1f} GFLOP/s)" if ceiling else "no ceiling (GPU, or not measured)")
          + "; /torch: ours over the PyTorch row of this run.", flush=True)
    if config["profile"]:
        print_profiles(report["results"], ceiling)
    if _OUTPUT_JSON.value:
        _write_json(_OUTPUT_JSON.value, report)
    return report


def print_profiles(results, ceiling):
    """Per profiled measurement: seconds per op family, ours beside PyTorch's.

    The convolutions' GFLOP/s is the row's convolution GFLOP over the
    convolution family's seconds, and "%ceil" its share of the ceiling.
    """
    families = [name for name, _ in OP_FAMILIES] + ["other"]
    for row in results:
        if "profile" not in row or row["implementation"] != OURS:
            continue
        theirs = next((r for r in results if r["implementation"] == PYTORCH
                       and r["name"] == row["name"] and "profile" in r), None)
        sides = [("ours", row)] + ([("pytorch", theirs)] if theirs else [])
        print(f"\nprofile of one {row['name']} call (XLA {'on' if row['jit'] else 'off'}), "
              "seconds per op family:", flush=True)
        print(f"{'family':<14}" + "".join(f"{side:>10}" for side, _ in sides))
        for family in families:
            seconds = [r["profile"].get(family, 0.0) for _, r in sides]
            print(f"{family:<14}" + "".join(f"{s:>10.3f}" for s in seconds))
        totals = [sum(r["profile"].values()) for _, r in sides]
        print(f"{'sum of ops':<14}" + "".join(f"{s:>10.3f}" for s in totals))
        print(f"{'wall':<14}" + "".join(f"{r['profile_wall_seconds']:>10.3f}" for _, r in sides))
        for side, r in sides:
            conv = r["profile"].get("convolution")
            if conv and row.get("gflop"):
                rate = row["gflop"] / conv
                print(f"{side}: convolutions {row['gflop']:.1f} GFLOP at {rate:.1f} GFLOP/s"
                      + (f" ({100 * rate / ceiling:.1f}% of the ceiling)" if ceiling else ""),
                      flush=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _MEASURE.value:
        _run_child(_MEASURE.value)
        return
    run_benchmark()


if __name__ == "__main__":
    app.run(main)
