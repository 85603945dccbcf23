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
        problems = never_runs_in_make_test(source, name)
        assert not problems, f"{path}::{name} is in the catalogue but {problems}"


_NOT_RUN_MARKS = {"slow", "skip", "skipif", "xfail"}


def _marks(node):
    """Names of pytest marks in a decorator or a `pytestmark = ...` value: pytest.mark.slow,
    pytest.mark.skipif(...), [pytest.mark.slow, ...]."""
    return [sub.attr for sub in ast.walk(node)
            if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Attribute) and sub.value.attr == "mark"]


def _calls_skip(stmt):
    call = stmt.value if isinstance(stmt, (ast.Expr, ast.Assign)) else None
    return isinstance(call, ast.Call) and _dotted(call.func) in (("pytest", "skip"), ("pytest", "importorskip"))


def never_runs_in_make_test(source, name):
    """Why test `name` in `source` would not run (or not count) in `make test`: a slow, skip,
    skipif or xfail mark on it or on its module, or a `pytest.skip(...)` / `pytest.importorskip`
    that is a statement of its own body (not under a condition) or of the module. [] if none."""
    tree = ast.parse(source)
    problems = []
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark"
                                                for t in stmt.targets):
            problems += [f"its module is marked {m}" for m in _marks(stmt.value) if m in _NOT_RUN_MARKS]
        if _calls_skip(stmt):
            problems.append("its module skips unconditionally")
    fn = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name), None)
    if fn is None:
        return problems + ["it is not a module-level test function"]
    for dec in fn.decorator_list:
        problems += [f"it is marked {m}" for m in _marks(dec) if m in _NOT_RUN_MARKS]
    if any(_calls_skip(stmt) for stmt in fn.body):
        problems.append("it always skips")
    return problems


@pytest.mark.parametrize("planted, problem", [
    ("import pytest\n@pytest.mark.slow\ndef test_x():\n    pass\n", "it is marked slow"),
    ("import pytest\n@pytest.mark.skipif(True, reason='x')\ndef test_x():\n    pass\n", "it is marked skipif"),
    ('import pytest\ndef test_x():\n    """doc"""\n    pytest.skip("never")\n', "it always skips"),
    ("import pytest\npytestmark = [pytest.mark.slow]\ndef test_x():\n    pass\n", "its module is marked slow"),
    ("import pytest\njax = pytest.importorskip('jax')\ndef test_x():\n    pass\n", "its module skips"),
    ("def test_y():\n    pass\n", "not a module-level test function"),
])
def test_catalogue_checker_catches_planted_skips(planted, problem):
    assert any(problem in p for p in never_runs_in_make_test(planted, "test_x"))


def test_catalogue_checker_allows_conditional_skips():
    ok = ("import pytest\n@pytest.mark.parametrize('a', [1])\ndef test_x(a):\n"
          "    if a > 5:\n        pytest.skip('only where mount is allowed')\n")
    assert never_runs_in_make_test(ok, "test_x") == []
