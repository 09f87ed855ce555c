"""Freed tensor memory goes back to the system; later passes of a step wait for earlier ones."""

import os
import platform
import subprocess
import sys

import pytest
import tensorflow as tf

from advent_tf.core import constants
from advent_tf.experiment import config as config_lib
from advent_tf.experiment import factory
import graph_helpers

# The start of both scripts below: glibc's malloc from Python, and whether
# an address lies in the main arena's heap (the "[heap]" mapping) or in a
# mapping of its own.
_MALLOC = """
import ctypes, os, sys, threading
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def in_heap(address):
    with open("/proc/self/maps") as f:
        for line in f:
            low, high = (int(x, 16) for x in line.split()[0].split("-"))
            if low <= address < high:
                return line.rstrip().endswith("[heap]")
"""

# Where glibc puts a 1 MiB block once a freed 8 MiB block has raised its
# dynamic mmap threshold: in the heap by default (it stays resident when
# freed, pinned by whatever small block lies above it), in a mapping of its
# own (unmapped at free) after `return_freed_memory`.
_PLACEMENT = _MALLOC + """
from advent_tf.core import host_memory
if sys.argv[1] == "return":
    assert host_memory.return_freed_memory()
libc.free(libc.malloc(8 << 20))
print("heap" if in_heap(libc.malloc(1 << 20)) else "own mapping")
"""

# Where a block that a new thread allocates lies: in the main arena's heap
# once all threads share it, in the thread's own arena (a mapping of its own)
# by default; argv: the `configure` arguments, then the environment's
# MALLOC_ARENA_MAX ("-": unset).
_THREAD_PLACEMENT = _MALLOC + """
if sys.argv[3] != "-":
    os.environ["MALLOC_ARENA_MAX"] = sys.argv[3]  # As if set before the start.
from advent_tf.core import host_memory
settings = host_memory.configure(compact=sys.argv[1] == "compact", on_gpu=sys.argv[2] == "gpu",
                                 inference=len(sys.argv) > 4)
print(",".join(settings) or "None")
blocks = []
thread = threading.Thread(target=lambda: blocks.append(libc.malloc(4096)))
thread.start()
thread.join()
print("main heap" if in_heap(blocks[0]) else "own arena")
"""

# Where an 8 MiB and a 20 MiB block lie after `configure` for CPU inference
# ("inference") or training ("train") and a freed 24 MiB block, which raises
# glibc's dynamic mmap threshold to 24 MiB: the settings' names, then "heap" or
# "own" per block. argv[2]: the environment's MALLOC_MMAP_THRESHOLD_ ("-": unset).
_INFERENCE_PLACEMENT = _MALLOC + """
if sys.argv[2] != "-":
    os.environ["MALLOC_MMAP_THRESHOLD_"] = sys.argv[2]  # As if set before the start.
from advent_tf.core import host_memory
settings = host_memory.configure(compact=False, on_gpu=False, inference=sys.argv[1] == "inference")
libc.free(libc.malloc(24 << 20))
print(",".join(settings),
      *("heap" if in_heap(libc.malloc(mib << 20)) else "own" for mib in (8, 20)))
"""

# Which allocator holds a 32 MiB tensor made after `configure_command`: the
# names it applied, then TensorFlow's BFC allocator's peak in MiB (0: the
# tensor came from malloc). argv: "compact", "inference" or "train"; the
# environment's TF_ONEDNN_USE_SYSTEM_ALLOCATOR ("-": unset); the command's
# module, imported first as `python -m` does (TensorFlow fixes its allocator at
# its first CPU tensor of any size, so importing it must make none).
_TENSOR_ALLOCATOR = """
import importlib, os, sys
if sys.argv[2] != "-":
    os.environ["TF_ONEDNN_USE_SYSTEM_ALLOCATOR"] = sys.argv[2]  # As if set before the start.
importlib.import_module(sys.argv[3])
import tensorflow as tf
from advent_tf.core import host_memory
settings = host_memory.configure_command(compact=sys.argv[1] == "compact",
                                         inference=sys.argv[1] == "inference")
tensor = tf.ones([8 << 20]) + 1.0
print(",".join(settings), tf.config.experimental.get_memory_info("CPU:0")["peak"] >> 20)
"""


# How much of 64 MiB of small blocks, freed below one still in use, is
# resident before and after `release_free_heap` (MiB), and its return value.
_FREED_BELOW_TOP = _MALLOC + """
from advent_tf.core import host_memory
# Resident as they come: glibc writes each block's header.
blocks = [libc.malloc(1024) for _ in range(64 * 1024)]
top = libc.malloc(1024)  # Pins the heap's top: glibc's own trimming cannot shrink it.
resident = lambda: host_memory.resident_bytes() >> 20
for block in blocks:
    libc.free(block)
before = resident()
released = host_memory.release_free_heap()
print(before, resident(), released)
"""


def _run(script, *args):
    """The script's standard output, run in a fresh interpreter (glibc's settings are global)."""
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                          text=True, timeout=120, check=True).stdout


def _placement(mode):
    return _run(_PLACEMENT, mode).strip()


def _thread_placement(*args):
    return _run(_THREAD_PLACEMENT, *args).split()


def test_large_blocks_get_their_own_mapping():
    if not sys.platform.startswith("linux"):
        return  # glibc only; elsewhere the call is a documented no-op.
    assert _placement("return") == "own mapping"
    assert _placement("default") == "heap"  # What the setting changes.


def test_cpu_runs_share_one_arena_and_gpu_runs_keep_glibcs_defaults():
    if not sys.platform.startswith("linux"):
        return  # glibc only; elsewhere `configure` is a documented no-op.
    assert _thread_placement("default", "cpu", "-") == ["one_arena", "main", "heap"]
    compact = _thread_placement("compact", "gpu", "-")
    assert compact == ["compact,system_allocator", "main", "heap"]
    # What the setting changes: a new thread's block in an arena of its own.
    assert _thread_placement("default", "gpu", "-") == ["None", "own", "arena"]
    # GPU inference keeps TensorFlow's allocators too.
    assert _thread_placement("default", "gpu", "-", "inference") == ["None", "own", "arena"]
    # A user's MALLOC_ARENA_MAX is kept (glibc would read it at start).
    assert _thread_placement("default", "cpu", "8") == ["None", "own", "arena"]


def _tensor_allocator(*args):
    settings, bfc_peak_mib = _run(_TENSOR_ALLOCATOR, *args).split()
    return settings, int(bfc_peak_mib)


def test_inference_and_compact_runs_put_tensors_in_malloc_on_cpu():
    if os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "0" or platform.machine() != "x86_64":
        pytest.skip("needs oneDNN's CPU allocator (TensorFlow's default on x86 Linux)")
    # The 32 MiB tensor and its sum: 64 MiB at the BFC allocator's peak, or none.
    assert _tensor_allocator("train", "-", "advent_tf.train") == ("one_arena", 64)
    assert _tensor_allocator("compact", "-", "advent_tf.train") == ("compact,system_allocator", 0)
    for command in ("advent_tf.evaluate", "advent_tf.predict"):
        assert _tensor_allocator("inference", "-", command) == (
            "one_arena,system_allocator,large_blocks_mapped", 0)
    # A user's choice is kept.
    assert _tensor_allocator("inference", "0", "advent_tf.evaluate") == ("one_arena", 64)


def test_cpu_inference_maps_blocks_of_16_mib_and_more_on_their_own():
    if not sys.platform.startswith("linux"):
        return  # glibc only; elsewhere `configure` is a documented no-op.
    assert _run(_INFERENCE_PLACEMENT, "inference", "-").split() == [
        "one_arena,system_allocator,large_blocks_mapped", "heap", "own"]
    # What the setting changes: under the raised dynamic threshold, the heap.
    assert _run(_INFERENCE_PLACEMENT, "train", "-").split() == ["one_arena", "heap", "heap"]
    # A user's threshold is kept (glibc would read it at start).
    assert _run(_INFERENCE_PLACEMENT, "inference", str(32 << 20)).split() == [
        "one_arena,system_allocator", "heap", "heap"]


def test_free_heap_pages_below_a_block_in_use_go_back():
    if not sys.platform.startswith("linux"):
        return  # glibc only; elsewhere the call is a documented no-op.
    before, after, released = _run(_FREED_BELOW_TOP).split()
    assert released == "True"
    # glibc's headers keep a few bytes of each free page; the pages go back.
    assert int(before) - int(after) >= 48, (before, after)


def _traced_train_step(method_name):
    """(method, graph of its traced train_step) for multi-level resnet_mini on 32x32 images."""
    cfg = config_lib.from_values(dict(method=method_name, backbone="resnet_mini",
                                      multi_level=True, seed=1))
    method = factory.build_method(cfg)
    batch = {constants.SOURCE_IMAGE: tf.zeros([1, 32, 32, 3]),
             constants.SOURCE_LABEL: tf.zeros([1, 32, 32], tf.int32),
             constants.TARGET_IMAGE: tf.zeros([1, 32, 32, 3])}
    return method, tf.function(method.train_step).get_concrete_function(batch).graph


def test_target_pass_starts_after_the_source_gradients():
    """MinEnt's traced step: each kernel gradient is computed before the target forward or after it.

    The target pass's first op (its stem convolution) must follow each
    gradient of the source backward: none may run beside the target
    forward, which would then hold both passes' activations at once.
    """
    _, graph = _traced_train_step("minent")
    stems = [op for op in graph.get_operations() if op.type == "Conv2D"
             and "/conv1" in op.name and not op.name.startswith("gradient_tape")]
    assert len(stems) == 2  # the source and the target call of the network
    kernel_gradients = {op: graph_helpers.ancestors(op) for op in graph.get_operations()
                        if op.type == "Conv2DBackpropFilter"}
    for stem in stems:
        before = graph_helpers.ancestors(stem)
        after = {op for op, ancestors in kernel_gradients.items() if stem in ancestors}
        # The source stem precedes every gradient; the target stem follows
        # the source backward's and precedes its own.
        assert len(after) in (len(kernel_gradients), len(kernel_gradients) // 2), stem.name
        concurrent = [op.name for op in kernel_gradients if op not in before | after]
        assert not concurrent, (stem.name, concurrent[:5])


@pytest.mark.parametrize("method_name", ["minent", "advent"])
def test_passes_wait_through_one_op_not_one_control_input_per_gradient(method_name):
    """The traced step has fewer control inputs than ops.

    Gating a pass with `tf.control_dependencies(gradients)` gives each op
    created in it without an input from inside (constants, variable reads)
    a control input per gradient: ResNet-101 MinEnt's step had ~170 on each
    of ~4,500 ops, 30.5 MB of FunctionDef and ~750 MiB more host memory.
    """
    method, graph = _traced_train_step(method_name)
    operations = graph.get_operations()
    num_grads = len(method.segmenter.trainable_variables)
    control_inputs = sum(len(op.control_inputs) for op in operations)
    assert control_inputs < len(operations), (control_inputs, len(operations))
    # The gates themselves (and the function's final NoOp) list them all.
    fan_in = [op.name for op in operations if len(op.control_inputs) >= num_grads]
    assert len(fan_in) <= 3, fan_in[:10]


def test_discriminator_steps_start_after_the_segmenter_gradients():
    """AdvEnt's traced step: D's pass on the detached source maps waits for F's backward.

    Those maps exist right after the source forward; without the dependency
    the executor runs D on them during F's passes and holds D's activations
    and gradients on top of F's peak. "After F's backward" is checked as
    depending on the gradient of the first conv's kernel in both of F's
    passes, the last gradient each backward computes.
    """
    _, graph = _traced_train_step("advent")
    stem_gradients = {op for op in graph.get_operations()
                      if op.type == "Conv2DBackpropFilter" and "/conv1" in op.name}
    assert len(stem_gradients) == 2  # source and target backward

    steps = [op for op in graph.get_operations() if op.name.startswith("discriminator_step_")
             and op.type in ("Conv2D", "ResizeBilinear")]
    assert {op.name.split("/")[0] for op in steps} == {
        "discriminator_step_aux", "discriminator_step_main"}
    late = [op.name for op in steps
            if not stem_gradients <= graph_helpers.ancestors(op)]
    assert not late, late[:5]
