"""What the benchmarks record about the machine: speed results are only comparable with it."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name and the vector extensions TensorFlow's convolutions depend on
    (convolutions ran 5x slower on a CPU with AVX2 but not AVX-512)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    lines = info.splitlines()
    name = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")
    flags = next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), [])
    vector = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    return f"{name or platform.machine()} ({', '.join(vector) or 'no AVX2'})"


def cpus() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0))
