"""CPU/GPU capability detection and the mixed-precision verdict, on given machines."""

import pytest

from advent_tf.core import hardware

_CPUINFO = """processor\t: 0
vendor_id\t: {vendor}
cpu family\t: {family}
model name\t: {model}
cpu MHz\t\t: 2450.000
flags\t\t: fpu sse2 avx {flags}

processor\t: 1
model name\t: {model}
cpu MHz\t\t: 1800.000
flags\t\t: fpu sse2 avx {flags}
"""


def _info(tmp_path, model, flags, vendor="x", family=6):
    path = tmp_path / "cpuinfo"
    path.write_text(_CPUINFO.format(vendor=vendor, family=family, model=model, flags=flags))
    return hardware.cpu_info(str(path))


def test_cpu_info_reads_model_flags_and_first_clock(tmp_path):
    info = _info(tmp_path, "AMD EPYC 7B13", "avx2 fma")
    assert info["model"] == "AMD EPYC 7B13"
    assert {"avx2", "fma", "avx"} <= info["flags"] and "avx512f" not in info["flags"]
    assert info["mhz"] == 2450.0 and info["known"]
    line = hardware.describe_cpu(info)
    assert "AMD EPYC 7B13" in line and "has avx2/fma;" in line and "lacks avx512f/" in line


def test_peak_uses_the_widest_fma_unit(tmp_path):
    avx2 = _info(tmp_path, "A", "avx2 fma")
    assert hardware.cpu_peak_gflops(avx2, cores=2)[0] == pytest.approx(2 * 2.45 * 32)
    avx512 = _info(tmp_path, "B", "avx2 fma avx512f")
    assert hardware.cpu_peak_gflops(avx512, cores=2)[0] == pytest.approx(2 * 2.45 * 64)
    # Zen 4 (AMD family 25) splits a 512-bit FMA over its 256-bit units; Zen 5 does not.
    zen4 = _info(tmp_path, "C", "avx2 fma avx512f avx512_bf16", vendor="AuthenticAMD", family=25)
    assert (zen4["vendor"], zen4["family"]) == ("AuthenticAMD", 25)
    assert hardware.cpu_peak_gflops(zen4, cores=2)[0] == pytest.approx(2 * 2.45 * 32)
    zen5 = _info(tmp_path, "D", "avx2 fma avx512f avx512_bf16", vendor="AuthenticAMD", family=26)
    assert hardware.cpu_peak_gflops(zen5, cores=2)[0] == pytest.approx(2 * 2.45 * 64)
    unknown = hardware.cpu_info(str(tmp_path / "absent"))
    assert not unknown["known"] and hardware.cpu_peak_gflops(unknown)[0] is None


@pytest.mark.parametrize("flags, vendor, family, dtype, per_cycle", [
    # Twice float32's rate on AVX-512's 16-bit instructions, Zen 4's halving included.
    ("avx2 fma avx512f avx512_bf16", "AuthenticAMD", 25, "bfloat16", 64),
    ("avx2 fma avx512f avx512_bf16", "GenuineIntel", 6, "bfloat16", 128),
    ("avx2 fma avx512f avx512_bf16 avx512_fp16", "GenuineIntel", 6, "float16", 128),
    # AMX's tiles where present.
    ("avx2 fma avx512f avx512_bf16 amx_tile amx_bf16", "GenuineIntel", 6, "bfloat16", 1024),
    ("avx2 fma avx512f avx512_fp16 amx_tile amx_fp16", "GenuineIntel", 6, "float16", 1024),
    # Emulated: no 16-bit peak.
    ("avx2 fma", "AuthenticAMD", 23, "bfloat16", None),
    ("avx2 fma avx512f avx512_bf16", "AuthenticAMD", 25, "float16", None),
])
def test_16_bit_peak_is_its_native_units(flags, vendor, family, dtype, per_cycle, tmp_path):
    info = _info(tmp_path, "A", flags, vendor=vendor, family=family)
    peak, how = hardware.cpu_peak_gflops(info, cores=2, dtype=dtype)
    if per_cycle is None:
        assert peak is None and f"no native {dtype}" in how
    else:
        assert peak == pytest.approx(2 * 2.45 * per_cycle)
        assert f"x {per_cycle} FLOP/cycle" in how


@pytest.mark.parametrize("flags, policy, native", [
    ("avx2 fma", "mixed_bfloat16", False),
    ("avx2 fma avx512f", "mixed_bfloat16", False),
    ("avx2 fma avx512f avx512_bf16", "mixed_bfloat16", True),
    ("avx2 fma amx_tile amx_bf16", "mixed_bfloat16", True),
    ("avx2 fma avx512f avx512_bf16", "mixed_float16", False),
    ("avx2 fma avx512f avx512_fp16", "mixed_float16", True),
    ("avx2 fma", "float32", True),
])
def test_cpu_precision_verdict(flags, policy, native, tmp_path):
    problem = hardware.precision_problem(policy, gpus=[], info=_info(tmp_path, "CPU X", flags))
    assert (problem is None) == native, problem
    if problem:
        assert problem.startswith(policy) and "CPU X" in problem and "emulates" in problem


@pytest.mark.parametrize("gpus, policy, slow", [
    ([("Tesla T4", (7, 5))], "mixed_float16", None),
    ([("Tesla T4", (7, 5))], "mixed_bfloat16", "Tesla T4 (compute capability 7.5)"),
    ([("A100", (8, 0))], "mixed_bfloat16", None),
    ([("GTX 1080 Ti", (6, 1))], "mixed_float16", "GTX 1080 Ti (compute capability 6.1)"),
    ([("A100", (8, 0)), ("P100", (6, 0))], "mixed_float16", "P100 (compute capability 6.0)"),
])
def test_gpus_decide_when_present(gpus, policy, slow, tmp_path):
    # The CPU would allow bfloat16: the GPUs that run the model decide.
    cpu = _info(tmp_path, "CPU X", "avx512_bf16 avx512_fp16")
    problem = hardware.precision_problem(policy, gpus=gpus, info=cpu)
    if slow is None:
        assert problem is None
    else:
        assert slow in problem and "A100" not in problem
