"""Host memory: hand what glibc's malloc frees back to the system.

With oneDNN on (TensorFlow's default on x86 Linux), CPU tensors of 4 KiB and
more come from TensorFlow's own BFC allocator, which keeps its regions;
glibc's malloc serves the rest: small tensors, the traced graph in its
several copies, the runtime's and oneDNN's own buffers (without oneDNN, every
tensor). With glibc's defaults freed memory mostly stays in the process:
large blocks come from a heap that can only shrink from its top, the mmap
threshold rises with every large free, and each thread that allocates gets
its own arena. Measured on a 2-core AMD EPYC (AVX2/FMA, 2026-11-29, before the
traced steps' control edges were cut, see `methods.base.waiting_for`),
ResNet-101 multi-level MinEnt at 640x360 + 512x256, batch 1, peak resident set
of a step: 4922 MiB with glibc's defaults, 4726 with a fixed 128 KiB mmap
threshold, 4379 with that and one arena (the official PyTorch code: 3199);
but the step took about 30% longer (page faults: each block glibc maps is
fresh memory), and the demo's small network ran at two thirds of its speed,
so it is opt-in (`train --compact_host_memory`), for CPU runs short of memory.
After the single gate, on a Zen 4 (2026-11-30), it cost that step no time
and brought its resident set to the official code's (README, *Allocators*).
"""

import ctypes
import ctypes.util

# mallopt parameters (glibc's malloc.h).
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 128 * 1024


def return_freed_memory():
    """Makes glibc give freed tensor memory back at once; True if it applies here.

    Blocks of 128 KiB and more (every activation) get their own mapping,
    unmapped when freed, and all threads share one arena, so that small
    blocks do not pin large free regions in per-thread heaps. Call it before
    the first large allocation; it changes nothing outside glibc (macOS,
    musl), where it returns False.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return (mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
            and mallopt(_M_ARENA_MAX, 1) == 1)
