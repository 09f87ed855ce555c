"""Host memory: where CPU tensors come from, and how glibc's malloc holds on to them.

With oneDNN on (TensorFlow's default on x86 Linux), CPU tensors of 256 KiB and
more come from TensorFlow's own BFC allocator, which keeps its regions
(doubling: 2, 4, ... MiB; the pages its chunks have used stay resident);
glibc's malloc serves the rest: small tensors, the traced graph in its
several copies, the runtime's and oneDNN's own buffers (without oneDNN, as
under `train --deterministic`, every tensor). With glibc's defaults freed
memory mostly stays in the process: each thread that allocates gets an arena
of its own (up to 8 per core), whose free blocks no other thread reuses;
large blocks come from a heap that can only shrink from its top; and the
mmap threshold rises with every large free.

The settings, measured on a 2-core AMD EPYC (Zen 4, AVX-512, 2026-11-30/12-01;
figures and commands in README, *Allocators*):

- One arena (`share_one_arena`): all threads reuse each other's free
  blocks. No step got slower beyond the noise (ResNet-101 MinEnt and
  inference with oneDNN, the demo's network with it, the demo's training
  without it), and resident sets were smaller: by 126 MiB for a MinEnt
  step, 35-100 MiB for the demo, 5-30 MiB for inference. `train` applies
  it to every CPU-only run (`configure`); where a GPU is visible it changes
  nothing, so that a many-core host's input pipeline keeps its per-thread
  arenas.
- The system allocator (`use_system_allocator`): every tensor from
  glibc's malloc instead of the BFC allocator, which frees at once what a
  step frees, but each large block is fresh memory to fault in. ResNet-101
  1024x512 inference (`evaluate` and `predict` on CPU): the forward pass
  492-522 MiB net instead of 606-607, 6-7% slower; the whole `evaluate`
  command (4 images, Cityscapes' 2048x1024 labels) 1346-1391 MiB peak
  instead of 1388-1389, its peak being set with the label-size logits and
  the input pipeline as well. Training: at 640x360 + 512x256 the same
  for source-only, 265-395 MiB more for MinEnt and AdvEnt (glibc's heap
  keeps blocks under its 32 MiB mmap threshold); full-resolution AdvEnt
  0.4-1.4 GiB less at 1.21-1.22x the time (two runs, of two and of three
  calls; why they differ so much was not traced). So alone it is for inference only.
- For inference, with the system allocator, blocks of 16 MiB and more in
  mappings of their own (`large_blocks_mapped`): fewer holes in the heap,
  ~80 MiB off the forward pass's peak (a mean of four rounds) at about
  the same time.
- Compact (`return_freed_memory` and the system allocator,
  `train --compact_host_memory`): also blocks of 128 KiB and more in
  mappings of their own, unmapped when freed, so the resident set follows
  the live tensors: full-resolution AdvEnt 7406 MiB net instead of 8915
  (1.32x the time), at 640x360 + 512x256 230-250 MiB less than the default
  (1.24x the time); without oneDNN (every tensor through glibc anyway) the
  demo under --deterministic took 1.56x the time. So it is opt-in.

And once, after the first training step (`release_free_heap`, run by
`train`'s `callbacks.ReleaseFreeHeap`): the free pages inside glibc's heaps
go back to the system. A ResNet-101 MinEnt step's peak resident set was
36 MiB lower on average (four alternating pairs, Zen 4, 2026-12-01); the
call took 7 ms after a source-only step.

A process that sets ``MALLOC_ARENA_MAX`` or ``TF_ONEDNN_USE_SYSTEM_ALLOCATOR``
itself keeps its own choice.
"""

import ctypes
import ctypes.util
import os

# mallopt parameters (glibc's malloc.h).
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 128 * 1024
# Inference: blocks of 16 MiB and more mapped on their own (measured in
# `large_blocks_mapped`).
INFERENCE_MMAP_THRESHOLD_BYTES = 16 << 20
ONE_ARENA = "one_arena"
COMPACT = "compact"
SYSTEM_ALLOCATOR = "system_allocator"
LARGE_BLOCKS_MAPPED = "large_blocks_mapped"
# Read by TensorFlow once, at its first CPU tensor (any size), when oneDNN is on.
SYSTEM_ALLOCATOR_VARIABLE = "TF_ONEDNN_USE_SYSTEM_ALLOCATOR"


def _glibc_function(name):
    """glibc's function `name` through ctypes, or None outside glibc."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def _mallopt(*settings):
    """Applies glibc ``mallopt(param, value)`` pairs; True if every one applied."""
    mallopt = _glibc_function("mallopt")
    if mallopt is None:
        return False
    # A list, not a generator: every setting is tried even if one fails.
    return all([mallopt(param, value) == 1 for param, value in settings])


def _environment_sets(variable, tunable):
    """True if the environment already sets a glibc malloc setting (glibc reads it at start).

    Args:
      variable: its environment variable, e.g. ``MALLOC_ARENA_MAX``.
      tunable: its name in ``GLIBC_TUNABLES``, e.g. ``arena_max``.
    """
    return variable in os.environ or tunable in os.environ.get("GLIBC_TUNABLES", "")


def share_one_arena():
    """Makes all threads allocate from one glibc arena; True if it applies here.

    Call it before the threads that allocate start (TensorFlow's pools, tf.data);
    a thread that already has an arena keeps it. It changes nothing outside
    glibc (macOS, musl) or where ``MALLOC_ARENA_MAX`` is set, and then returns
    False.
    """
    return not _environment_sets("MALLOC_ARENA_MAX", "arena_max") and _mallopt((_M_ARENA_MAX, 1))


def return_freed_memory():
    """Makes glibc give freed memory back at once; True if it applies here.

    Blocks of 128 KiB and more (every activation that glibc serves) get
    their own mapping, unmapped when freed, and all threads share one arena
    (unless ``MALLOC_ARENA_MAX`` says otherwise), so that small blocks do
    not pin large free regions in per-thread heaps. Call it before the first
    large allocation; it changes nothing outside glibc (macOS, musl), where
    it returns False.
    """
    settings = [(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)]
    if not _environment_sets("MALLOC_ARENA_MAX", "arena_max"):
        settings.append((_M_ARENA_MAX, 1))
    return _mallopt(*settings)


def large_blocks_mapped():
    """Maps blocks of 16 MiB and more on their own, unmapped when freed; True if it applies.

    For inference with the system allocator: glibc's mmap threshold rises
    with every large free up to 32 MiB, so the activations under that
    (ResNet-101 at 1024x512: maps of 4-32 MiB) come from the heap, and the
    executor's order, which changes from call to call, fragments it: the
    peak grew over the first calls (1040 -> 1119 MiB over three). A fixed
    threshold keeps the larger ones out of it, each fresh block costing page
    faults. Measured on the benchmark's inference row (ResNet-101, 1024x512,
    the evaluation argmax; Zen 4, 2026-12-01, alternating with glibc's
    dynamic threshold, PyTorch beside each): 16 MiB 456-520 MiB net (mean
    490) against 525-615 (mean 569) over four rounds each, 4.21-4.77 s
    against 4.22-5.36; 8 MiB 456-460 MiB but 6-8% slower (two rounds),
    which would cost inference most of its lead over the official code.
    Transparent huge pages for the mapped blocks (``glibc.malloc.hugetlb=1``)
    did not cut that cost. It changes nothing outside glibc or where the
    environment sets the threshold (``MALLOC_MMAP_THRESHOLD_``,
    ``GLIBC_TUNABLES``), and then returns False.
    """
    return not _environment_sets("MALLOC_MMAP_THRESHOLD_", "mmap_threshold") and _mallopt(
        (_M_MMAP_THRESHOLD, INFERENCE_MMAP_THRESHOLD_BYTES))


def use_system_allocator():
    """Makes TensorFlow's CPU tensors come from malloc, not its BFC allocator; True if so.

    Must run before TensorFlow's first CPU tensor (importing it and listing
    devices are fine): TensorFlow reads the choice once. Without oneDNN every
    tensor goes through malloc anyway. A value already in the environment is
    kept; the return value then says whether it asks for the system allocator.
    """
    value = os.environ.setdefault(SYSTEM_ALLOCATOR_VARIABLE, "1")
    return value.strip().lower() in ("1", "true")


def release_free_heap():
    """Gives the free pages inside glibc's heaps back to the system (``malloc_trim(0)``).

    glibc shrinks a heap on its own only from its top: free blocks below a
    block still in use stay resident. After the first call of ResNet-101
    MinEnt's traced step the heap held ~100 MiB of them (what tracing and
    instantiating the function freed), which the later steps, whose tensors
    come from TensorFlow's own allocator, barely reuse. Pages used again
    later are faulted back in.

    Returns:
      True if it ran (glibc), False elsewhere.
    """
    trim = _glibc_function("malloc_trim")
    if trim is None:
        return False
    trim(0)
    return True


def resident_bytes():
    """This process's resident set in bytes (Linux), or None where it cannot be read."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def configure(compact, on_gpu, inference=False):
    """Applies what the commands run with; returns the names of the settings applied.

    Call it before TensorFlow's first tensor (see `use_system_allocator`).

    Args:
      compact: ``train --compact_host_memory``: `return_freed_memory` and
        `use_system_allocator`, anywhere.
      on_gpu: a GPU is visible; without ``compact`` nothing changes then.
      inference: ``evaluate`` and ``predict``: on CPU, `use_system_allocator`
        too (their peak is a forward pass, and the BFC allocator's doubled
        region for its activations would stay resident), and with it
        `large_blocks_mapped`.

    Returns:
      A tuple of `COMPACT` or `ONE_ARENA`, then `SYSTEM_ALLOCATOR`, then
      `LARGE_BLOCKS_MAPPED`, each where it applied; empty for glibc's and
      TensorFlow's defaults.
    """
    applied = []
    if compact:
        if return_freed_memory():
            applied.append(COMPACT)
    elif not on_gpu and share_one_arena():
        applied.append(ONE_ARENA)
    if (compact or (inference and not on_gpu)) and use_system_allocator():
        applied.append(SYSTEM_ALLOCATOR)
        if not compact and large_blocks_mapped():
            applied.append(LARGE_BLOCKS_MAPPED)
    return tuple(applied)


def configure_command(compact=False, inference=False):
    """`configure` for this machine, logged: what `train`, `evaluate` and `predict` run first.

    Args:
      compact: ``train --compact_host_memory``.
      inference: an inference command (``evaluate``, ``predict``).

    Returns:
      `configure`'s tuple.
    """
    import tensorflow as tf  # Listing devices allocates no tensor.
    from absl import logging

    settings = configure(compact, bool(tf.config.list_physical_devices("GPU")), inference)
    logging.info("Host memory: %s.",
                 ", ".join(settings) or "glibc's and TensorFlow's default allocators")
    return settings
