"""The machine a training or a measurement ran on: speed results are only comparable with it."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

# The vector extensions TensorFlow's and ONNX Runtime's convolutions depend on (convolutions ran
# 5x slower on a CPU with AVX2 but not AVX-512): the ones a table names, of all those recorded.
KEY_EXTENSIONS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")


def _cpuinfo() -> tuple[str, list[str]]:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine(), []
    name = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")
    flags = next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), [])
    return name or platform.machine(), flags


def vector_extensions() -> list[str]:
    """Every SIMD extension the CPU reports (FMA, AVX, AVX-512, AMX families), in its order."""
    return [f for f in _cpuinfo()[1] if f == "fma" or f.startswith(("avx", "amx"))]


def cpu_model() -> str:
    """The CPU's model name and its key vector extensions, e.g. `AMD EPYC 7B13 (avx2, avx512f)`."""
    key = [f for f in KEY_EXTENSIONS if f in vector_extensions()]
    return f"{_cpuinfo()[0]} ({', '.join(key) or 'no AVX2'})"


def trained_on() -> str:
    """One line for a run's record: `AMD EPYC 7B13 (avx2), 2 CPUs, 23.5 GiB`."""
    return f"{cpu_model()}, {cpus()} CPUs, {ram_gib()} GiB"


def cpus() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0))


def ram_gib() -> float:
    """Physical memory in GiB."""
    return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)


def slug(name: str, n_cpus: int) -> str:
    """A file-name-safe machine name: `Intel(R) Xeon(R) Processor`, 2 -> `intel-xeon-processor-2cpu`."""
    words = re.sub(r"\((R|TM)\)|CPU|@.*", " ", name, flags=re.IGNORECASE)
    return "-".join([*re.findall(r"[a-z0-9]+", words.lower()), f"{n_cpus}cpu"])


def describe() -> dict:
    """What a result file records about the machine."""
    name = _cpuinfo()[0]
    return {
        "slug": slug(name, cpus()),
        "cpu": name,
        "vector_extensions": vector_extensions(),
        "cpus": cpus(),
        "ram_gib": ram_gib(),
        "python": platform.python_version(),
    }


def load_average() -> float:
    """The 1-minute load average: other work on the machine competes with the measurement."""
    return round(os.getloadavg()[0], 2)
