"""What machine and which code a result was measured with — one description for reports,
baselines and benchmarks, so the numbers in docs/ and benchmarks/ can be compared."""

from __future__ import annotations

import os
import platform
import subprocess
import sys


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gb() -> float:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024 ** 2
    except OSError:
        pass
    return float("nan")


def nproc() -> int:
    """CPUs this process may run on (what `nproc` prints), not the host's total."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def summary() -> dict:
    return {"nproc": nproc(), "cpu": cpu_model(), "memory_gb": round(memory_gb(), 1),
            "python": platform.python_version()}


def describe() -> str:
    """One line: CPU, cores, memory, OS, Python, and TensorFlow / OpenCV when imported."""
    parts = [f"{cpu_model()}, {nproc()} logical CPUs (nproc), {memory_gb():.0f} GB RAM",
             f"{platform.system()} {platform.release()}", f"Python {platform.python_version()}"]
    for module, name in (("tensorflow", "TensorFlow"), ("cv2", "OpenCV")):
        if module in sys.modules:
            parts.append(f"{name} {sys.modules[module].__version__}")
    return "; ".join(parts)


def code_version() -> str:
    """The git commit of this checkout ('<sha>-dirty' with uncommitted changes to tracked
    files), or 'unknown' outside a git checkout."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        sha = subprocess.run(["git", "-C", repo, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", repo, "diff", "--quiet", "HEAD", "--"], capture_output=True,
                               timeout=10).returncode != 0
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")
