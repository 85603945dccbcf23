"""No eval / exec / unpickling anywhere in the packages: nothing read from an input can run code.

Checked on the syntax tree (so `model.evaluate(` or a word in a docstring is not a hit) and
with a plain regex grep as a second opinion. The checker is itself tested on planted code.
"""

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("atn_tf", "tfrecords_builder", "benchmarks")

BANNED_NAMES = {"eval", "exec", "compile", "__import__", "execfile"}
BANNED_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve"}
# module.function calls that deserialise code or arbitrary objects
BANNED_ATTRS = {("pickle", "load"), ("pickle", "loads"), ("marshal", "load"), ("marshal", "loads"),
                ("joblib", "load"), ("torch", "load"), ("yaml", "load"), ("yaml", "unsafe_load"),
                ("shelve", "open"), ("dill", "load"), ("dill", "loads")}
NUMPY_LOAD = {("np", "load"), ("numpy", "load")}


def _dotted(node):
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return tuple(reversed(parts))


def _kw(call, name):
    return next((k.value for k in call.keywords if k.arg == name), None)


def problems(source: str, filename: str = "<src>") -> list[str]:
    out = []
    tree = ast.parse(source, filename)
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            out += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in BANNED_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in BANNED_MODULES:
            out.append(f"{where}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            if len(name) == 1 and name[0] in BANNED_NAMES:
                out.append(f"{where}: {name[0]}(...)")
            if len(name) >= 2 and name[-2:] in BANNED_ATTRS:
                out.append(f"{where}: {'.'.join(name)}(...)")
            if len(name) >= 2 and name[-2:] in NUMPY_LOAD:
                allow = _kw(node, "allow_pickle")
                if not (isinstance(allow, ast.Constant) and allow.value is False):
                    out.append(f"{where}: {'.'.join(name)}(...) without allow_pickle=False")
            allow = _kw(node, "allow_pickle")
            if isinstance(allow, ast.Constant) and allow.value is True:
                out.append(f"{where}: allow_pickle=True")
            safe = _kw(node, "safe_mode")
            if isinstance(safe, ast.Constant) and safe.value is False:
                out.append(f"{where}: safe_mode=False")
    return out


GREP = re.compile(r"(?<![\w.])(eval|exec)\s*\(|pickle\.loads?\s*\(|allow_pickle\s*=\s*True")


def package_files():
    files = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))
    assert len(files) > 20, files
    return files


def test_no_unsafe_calls_in_the_packages():
    found = []
    for path in package_files():
        found += problems(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert found == []


def test_grep_agrees():
    hits = []
    for path in package_files():
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if GREP.search(code):
                hits.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}")
    assert hits == []


@pytest.mark.parametrize("code", [
    "eval(s)", "exec(s)", "import pickle", "from pickle import loads", "import marshal",
    "x = np.load(p)", "x = numpy.load(p, allow_pickle=True)", "joblib.load(p)",
    "keras.models.load_model(p, safe_mode=False)", "yaml.load(s)", "__import__(name)",
])
def test_checker_catches_planted_code(code):
    assert problems(code)


@pytest.mark.parametrize("code", [
    "model.evaluate(x)", "np.load(p, allow_pickle=False)", "ds.map(f)", "evaluate_lib.evaluate(c)",
    "'''call eval() here'''", "x = 'exec(' ", "keras.models.load_model(p)"])
def test_checker_ignores_lookalikes(code):
    assert problems(code) == []


# ------------------------------------------------------------------ the reliability catalogue

DOC = ROOT / "docs" / "reliability.md"


def test_reliability_catalogue_is_consistent():
    """docs/reliability.md: the counts it states match its tables, ids are unique, and every
    test it names exists (so each case is proven by a test that `make test` runs)."""
    text = DOC.read_text(encoding="utf-8")
    rows = re.findall(r"^\| ([BITSC])(\d+) \| (input|fault) \|(.*)$", text, re.M)
    ids = [c + n for c, n, _, _ in rows]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    total, inputs, faults = map(int, re.search(
        r"\*\*(\d+) cases — (\d+) bad inputs and (\d+) faults", text).groups())
    assert (total, inputs, faults) == (len(rows), sum(r[2] == "input" for r in rows),
                                       sum(r[2] == "fault" for r in rows))
    for letter, heading in [("B", "Builder"), ("I", "Input pipeline"), ("T", "Training"), ("S", "Serving"),
                            ("C", "Code safety")]:
        m = re.search(rf"^## {heading}.*— (\d+) cases \((\d+) bad inputs?(?:, (\d+) faults?)?\)", text, re.M)
        assert m, heading
        mine = [r for r in rows if r[0] == letter]
        assert [int(r[1]) for r in mine] == list(range(1, len(mine) + 1)), heading
        assert (int(m[1]), int(m[2]), int(m[3] or 0)) == (
            len(mine), sum(r[2] == "input" for r in mine), sum(r[2] == "fault" for r in mine)), heading
    for _, _, _, rest in rows:
        assert "tests/" in rest, rest                           # every case names a test
    for path, name in set(re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", text)):
        source = (ROOT / path).read_text(encoding="utf-8")
        assert re.search(rf"^def {name}\(", source, re.M), f"{path}::{name} does not exist"
