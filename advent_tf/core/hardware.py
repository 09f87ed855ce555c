"""What the machine can compute natively: CPU features, GPU compute capability, precisions.

A Keras mixed policy only pays where the device computes its 16-bit type in
hardware. Elsewhere TensorFlow emulates it: measured on a 2-core AMD EPYC
with AVX2/FMA only (2026-11-29), a ResNet-101 source-only iteration under
mixed_bfloat16 took over 60 s against 10.5 s in float32. `precision_problem`
says so before a run starts, and `describe_cpu` puts the features that
decide it next to every benchmark figure.
"""

import os
import platform

# The CPU feature flags (as /proc/cpuinfo spells them) that decide the speed
# of float32, bfloat16 and float16 convolutions and matrix products.
RELEVANT_CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile",
                         "amx_bf16", "amx_fp16")
# Native CPU arithmetic per 16-bit type: any one of these flags.
_NATIVE_CPU_FEATURES = {"bfloat16": ("avx512_bf16", "amx_bf16"),
                        "float16": ("avx512_fp16", "amx_fp16")}
# Lowest GPU compute capability with tensor cores for the type (Volta: float16; Ampere: bfloat16).
_NATIVE_GPU_CAPABILITY = {"bfloat16": (8, 0), "float16": (7, 0)}
_POLICY_DTYPE = {"mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}
# Single-precision FLOP per cycle and core of the widest FMA unit (2 FMA ports).
_FLOP_PER_CYCLE = (("avx512f", 64), ("fma", 32), ("avx", 16))
# AMD's first AVX-512 cores (Zen 4, family 25) run a 512-bit FMA as two
# halves on their 256-bit units: AVX2's rate per cycle.
_HALF_RATE_AVX512 = {("AuthenticAMD", 25)}
# An AMX tile unit's 16-bit FLOP per cycle and core (Intel: 1024 bfloat16 or
# float16 operations per cycle).
_AMX_FLOP_PER_CYCLE = 1024


def cpu_info(cpuinfo_path="/proc/cpuinfo"):
    """The CPU's model name, feature flags and clock, from /proc/cpuinfo (Linux).

    Args:
      cpuinfo_path: where to read; elsewhere than Linux the file is absent.

    Returns:
      dict: model (str), vendor (str or None), family (int or None), flags
      (frozenset of str, empty when unknown), mhz (float or None: the
      current clock of the first core, as reported), logical_cores (int),
      known (whether the flags could be read).
    """
    model, flags, mhz = platform.processor() or platform.machine(), frozenset(), None
    vendor = family = None
    try:
        with open(cpuinfo_path, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name" and model != value:
            model = value
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
        elif key == "cpu MHz" and mhz is None:
            mhz = float(value)
        elif key == "vendor_id" and vendor is None:
            vendor = value
        elif key == "cpu family" and family is None and value.isdigit():
            family = int(value)
    return {"model": model, "vendor": vendor, "family": family, "flags": flags, "mhz": mhz,
            "logical_cores": os.cpu_count() or 1, "known": bool(flags)}


def describe_cpu(info=None):
    """One line: model, cores and which of `RELEVANT_CPU_FEATURES` it has (and lacks)."""
    info = info or cpu_info()
    if not info["known"]:
        return f"{info['model']}, {info['logical_cores']} logical cores (features unknown)"
    have = [f for f in RELEVANT_CPU_FEATURES if f in info["flags"]]
    lack = [f for f in RELEVANT_CPU_FEATURES if f not in info["flags"]]
    return (f"{info['model']}, {info['logical_cores']} logical cores, has "
            f"{'/'.join(have) or 'none of them'}; lacks {'/'.join(lack) or 'none'}")


def cpu_peak_gflops(info=None, cores=None, dtype="float32"):
    """Theoretical peak of `dtype` arithmetic: cores x clock x FLOP per cycle of its widest unit.

    float32: the widest FMA. A 16-bit type: its native unit
    (`_NATIVE_CPU_FEATURES`), AMX's tiles if present, else AVX-512's 16-bit
    instructions at twice float32's FLOP per cycle (twice the lanes, or two
    products per lane). The clock is /proc/cpuinfo's current one, so boost and
    throttling move it; a measured matrix product is the practical ceiling,
    this the bound above it.

    Args:
      info: `cpu_info()` (read when None).
      cores: cores to count (all logical cores when None).
      dtype: "float32", "bfloat16" or "float16".

    Returns:
      (GFLOP/s, how it was computed) or (None, why not): a 16-bit type
      without a native unit is emulated in float32 and has no peak of its own.
    """
    info = info or cpu_info()
    cores = cores or info["logical_cores"]
    if not info["known"] or not info["mhz"]:
        return None, "unknown CPU features or clock"
    per_cycle = next((n for flag, n in _FLOP_PER_CYCLE if flag in info["flags"]), 2)
    if "avx512f" in info["flags"] and (info.get("vendor"), info.get("family")) in _HALF_RATE_AVX512:
        per_cycle //= 2
    if dtype != "float32":
        avx512, amx = _NATIVE_CPU_FEATURES[dtype]
        if amx in info["flags"]:
            per_cycle = _AMX_FLOP_PER_CYCLE
        elif avx512 in info["flags"]:
            per_cycle *= 2
        else:
            return None, f"no native {dtype} arithmetic ({avx512} or {amx}): emulated in float32"
    return (cores * info["mhz"] / 1e3 * per_cycle,
            f"{cores} cores x {info['mhz'] / 1e3:.2f} GHz x {per_cycle} FLOP/cycle")


def gpu_capabilities():
    """[(name, (major, minor) or None)] of the GPUs TensorFlow sees."""
    import tensorflow as tf

    found = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        found.append((details.get("device_name", gpu.name), details.get("compute_capability")))
    return found


def precision_problem(policy, gpus=None, info=None):
    """Why `policy` would run emulated on this machine, or None when it is native.

    Args:
      policy: a Keras policy name ("float32", "mixed_bfloat16", "mixed_float16").
      gpus: `gpu_capabilities()` (looked up when None); with GPUs, they decide.
      info: `cpu_info()` (read when None).

    Returns:
      None, or a sentence naming the policy, the device and what it lacks.
    """
    dtype = _POLICY_DTYPE.get(policy)
    if dtype is None:
        return None
    gpus = gpu_capabilities() if gpus is None else gpus
    if gpus:
        need = _NATIVE_GPU_CAPABILITY[dtype]
        slow = [f"{name} (compute capability {'.'.join(map(str, cap)) if cap else 'unknown'})"
                for name, cap in gpus if not cap or tuple(cap) < need]
        if not slow:
            return None
        return (f"{policy}: {', '.join(slow)} has no {dtype} tensor cores (compute capability "
                f"{need[0]}.{need[1]} or later has them); 16-bit arithmetic there is no faster "
                f"than float32, or slower")
    info = info or cpu_info()
    native = _NATIVE_CPU_FEATURES[dtype]
    if any(flag in info["flags"] for flag in native):
        return None
    known = "" if info["known"] else " (its features could not be read)"
    return (f"{policy}: the CPU ({info['model']}){known} has no native {dtype} arithmetic "
            f"({' or '.join(native)}), so TensorFlow emulates it: several times slower than "
            f"float32 (measured on a 2-core AMD EPYC with AVX2/FMA only, 2026-11-29: a "
            f"ResNet-101 source-only iteration over 60 s in bfloat16 against 10.5 s in "
            f"float32)")
