"""The machine a benchmark ran on, in one line, so every recorded figure says where it came from."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def describe() -> str:
    """``nproc``, memory (``free -h``), CPU model, Python version and kernel."""
    cpus = len(os.sched_getaffinity(0))
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown CPU")
    try:
        free = subprocess.run(["free", "-h"], capture_output=True, text=True, timeout=10, check=True).stdout
        memory = next(line.split()[1] for line in free.splitlines() if line.startswith("Mem:"))
    except (OSError, subprocess.SubprocessError, StopIteration):
        memory = "unknown"
    return (f"nproc {cpus}, {memory} RAM (free -h), {model}, Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}")
