"""Shared by the benchmarks: the machine description, timing helpers and the section writer.

Each `python -m benchmarks.<name>` replaces only its own `## <Title>` section of
`benchmarks/results.md` (atomically: a temporary file renamed over the old one), so the
file always holds the latest figures of every benchmark, each with its command, date and
machine.
"""

from __future__ import annotations

import datetime
import os
import re
import shlex
import sys
import time
from typing import Callable

from atn_tf import atomic_io, host

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.md")
HEADER = ("# Benchmarks\n\n"
          "Written by `python -m benchmarks.<name>` (input_pipeline, train_step, serving, builder, cde_turnaround); "
          "each command replaces only its own section. Timings are not unit-test assertions.\n")


def load_average() -> tuple[float, float, float]:
    return os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3


def cpu_busy(seconds: float = 1.0) -> float:
    """Fraction of all CPUs' time spent busy over the next `seconds` (from /proc/stat; NaN
    elsewhere) — what other jobs take right now, unlike the load average's minute-long tail."""
    def sample():
        with open("/proc/stat", encoding="utf-8") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + (v[4] if len(v) > 4 else 0)      # total, idle + iowait
    try:
        t0, i0 = sample()
        time.sleep(seconds)
        t1, i1 = sample()
    except (OSError, ValueError, IndexError):
        return float("nan")
    return 1.0 - (i1 - i0) / max(t1 - t0, 1)


def load_str(busy: float | None = None) -> str:
    busy = cpu_busy() if busy is None else busy
    return "/".join(f"{x:.1f}" for x in load_average()) + f" (CPUs {busy:.0%} busy over 1 s)"


machine = host.describe


def command() -> str:
    """The command that is running, as a user would type it (`python -m benchmarks.x ...`)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    head = ["python", "-m", spec.name] if spec is not None and spec.name else ["python", sys.argv[0]]
    return " ".join(head + [shlex.quote(a) for a in sys.argv[1:]])


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def preamble(load_before: str | None = None) -> str:
    """Command, date, machine and load average lines that open every section."""
    load = f"load average (1/5/15 min) {load_before} at the start, {load_str()} at the end" if load_before \
        else f"load average (1/5/15 min) {load_str()} at the end"
    return (f"Command: `{command()}` — {now()}.  \n"
            f"Machine: {machine()}; {load}.")


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def write_section(title: str, markdown: str, path: str = RESULTS) -> None:
    """Replace the `## {title}` section of `path` (add it at the end if absent), atomically."""
    heading = f"## {title}"
    text = open(path, encoding="utf-8").read() if os.path.exists(path) else HEADER
    section = f"{heading}\n\n{markdown.strip()}\n"
    pattern = re.compile(rf"^{re.escape(heading)}[ \t]*\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    atomic_io.write_text(path, text)


def markdown_table(header: list[str], rows: list[list], align: str = "") -> str:
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(sep) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _spin(n: int) -> float:
    t0 = time.perf_counter()
    x = 0
    for i in range(n):
        x += i
    return time.perf_counter() - t0


def parallel_headroom(n: int = 10_000_000) -> float:
    """Speed-up of two CPU-bound processes over one, measured now: ~2 on an idle 2-core
    machine, ~1 when other jobs already keep every core busy (then no benchmark here can
    gain from a second worker or thread, whatever the code does)."""
    import multiprocessing

    one = _spin(n)
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(_spin, [1000, 1000])            # start-up excluded
        t0 = time.perf_counter()
        pool.map(_spin, [n, n])
        two = time.perf_counter() - t0
    return 2 * one / two
