"""Quiet start: keep TensorFlow's C++ start-up lines off the terminal of the CLIs.

TensorFlow 2.21 prints, from native code and before absl logging is initialised (so
`TF_CPP_MIN_LOG_LEVEL` cannot stop them), lines such as

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 00:00:... cudart_stub.cc:31] Could not find cuda drivers on your machine, ...
    E0000 00:00:... cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: ...

the first ones while `import tensorflow` runs, the cuInit one when the devices are first
listed. On a CPU host they are no failure, but a newcomer reads them as one.

`install()` (first thing in every CLI module) puts a one-shot import hook in front of
`sys.meta_path`: whenever `tensorflow` is first imported — by our code, Keras or anything
else, so a CLI that never needs TensorFlow (e.g. `--help`) does not pay for importing
it — file descriptor 2 points to /dev/null while its module runs and while
`tf.config.list_physical_devices()` probes the devices; then the real stderr is put back.
Python exceptions raised by the import are re-raised after that, so real errors still
show, and everything after the start-up writes to stderr as usual. Native log lines after
the start-up are filtered by `TF_CPP_MIN_LOG_LEVEL`, which the quiet start raises from the
package default 2 to 3 (fatal only): the one ERROR line TF 2.21 prints on a healthy CPU
run ("oneDNN supports DT_BOOL only on platforms with AVX-512. Falling back to ...", when
the first model runs) is no error either. Op failures still raise Python exceptions with
their messages, which the CLIs print.

`--tf_log` (defined by `install()`) or absl's `--verbosity=1` (or higher; `-v 1`) turns
this off and sets `TF_CPP_MIN_LOG_LEVEL=0`: everything TensorFlow says is shown.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
from typing import Optional, Sequence

# A native log line written before absl logging is initialised: severity letter, the date
# as 0000, time, thread id, file:line] (absl's Python lines carry the real date).
CPP_STARTUP_LINE = re.compile(r"^[IWEF]0000 \d\d:\d\d:\d+\.\d+\s+\d+ [^\]]+:\d+\]")
STARTUP_PREFIXES = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
                    "To enable the following instructions:")    # 2nd line of cpu_feature_guard's


def is_startup_line(line: str) -> bool:
    """True for a line of TensorFlow's native start-up logging (for tests and filters)."""
    return bool(CPP_STARTUP_LINE.match(line)) or line.startswith(STARTUP_PREFIXES)


def logging_requested(argv: Sequence[str]) -> bool:
    """--tf_log, or absl --verbosity >= 1 (also -v N, --verbosity N)."""
    args = list(argv)
    for i, a in enumerate(args):
        if a in ("--tf_log", "--tf_log=true", "--tf_log=1", "--tf_log=True"):
            return True
        value = None
        if a.startswith(("--verbosity=", "-v=")):
            value = a.split("=", 1)[1]
        elif a in ("--verbosity", "-v") and i + 1 < len(args):
            value = args[i + 1]
        if value is not None:
            try:
                if int(value) >= 1:
                    return True
            except ValueError:
                pass
    return False


@contextlib.contextmanager
def stderr_to_devnull():
    """Point file descriptor 2 (native and Python writes alike) to /dev/null, then back."""
    try:
        sys.stderr.flush()
    except (AttributeError, ValueError):
        pass
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        try:
            sys.stderr.flush()
        except (AttributeError, ValueError):
            pass
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class _QuietLoader(importlib.abc.Loader):
    """Runs the real loader of `tensorflow` with stderr silenced, then probes devices."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        try:
            with stderr_to_devnull():
                self._loader.exec_module(module)
                config = getattr(module, "config", None)
                if config is not None:
                    config.list_physical_devices()     # the cuInit probe, here and silenced
        finally:
            # Leave no trace of the wrapper on the module.
            module.__loader__ = self._loader
            if getattr(module, "__spec__", None) is not None:
                module.__spec__.loader = self._loader

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _QuietFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        uninstall()                      # one shot; also keeps the lookup below from recursing
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _QuietLoader(spec.loader)
        return spec


_FINDER: Optional[_QuietFinder] = None


def uninstall() -> None:
    global _FINDER
    if _FINDER is not None and _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
    _FINDER = None


def define_flag() -> None:
    from absl import flags

    if "tf_log" not in flags.FLAGS:
        flags.DEFINE_boolean("tf_log", False, "Show TensorFlow's native (C++) log lines, start-up "
                             "included (as does --verbosity=1).")


def install(argv: Optional[Sequence[str]] = None) -> bool:
    """Silence TensorFlow's start-up unless asked for; returns True when it will be silenced."""
    global _FINDER
    define_flag()
    argv = sys.argv if argv is None else argv
    if logging_requested(argv):
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        uninstall()
        return False
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2") == "2":    # unset, or atn_tf's default
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if "tensorflow" in sys.modules or _FINDER is not None:
        return _FINDER is not None
    _FINDER = _QuietFinder()
    sys.meta_path.insert(0, _FINDER)
    return True
