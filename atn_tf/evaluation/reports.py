"""report.json -> report.md, confusion.png, and side-by-side comparison tables."""

from __future__ import annotations

import io
import json
import os
import re

from atn_tf import atomic_io
from atn_tf.data.feature_spec import CLASS_NAMES

DATABASE_ORDER = ("casme2", "samm", "smic")
# Until commit 0480976 the flow-image mirror augmentation inverted channel 0 (the optical
# strain) and kept u; results of flow-image models trained with augmentation before then
# are marked in the generated tables, since their flags alone do not say so.
FLOW_MIRROR_FIXED = "2026-12-05T01:00:00+00:00"


def old_flow_mirror(report: dict) -> bool:
    """A report (evaluation or development) of a flow-image model trained with the old mirror."""
    cfg = report.get("config") or {}
    return (cfg.get("model") in ("atn_flow", "flow_only") and bool(cfg.get("augment"))
            and report.get("date", "") < FLOW_MIRROR_FIXED)


def cpu(report: dict) -> str:
    """The CPU a report ran on: the head of its `machine` ("AMD EPYC, 2 logical CPUs ..."). The
    same recipe and seed train a different model on another CPU (docs/results.md, seventeenth
    round), so the tables name it. Older reports wrote "2 cores (AMD EPYC)" or {"cpu": ...}. A
    clock suffix (" @ 2.80GHz") is dropped: hosts whose CPU reports it train the same models as
    those that do not (v16's development seed 8 reproduces to the last digit; twenty-sixth round)."""
    machine = report.get("machine") or ""
    if isinstance(machine, dict):
        machine = machine.get("cpu", "")
    head = re.sub(r"\s*@\s*[\d.]+\s*GHz$", "", machine.split(",")[0].strip())
    inner = re.fullmatch(r"\d+ cores \((.+)\)", head)
    return (inner.group(1) if inner else head) or "—"


def read_kind(path: str, kind: str, what: str) -> dict:
    """The JSON report at `path`, checked to be of `kind` ("development", ...); `what` names it
    in the errors, which name the file."""
    try:
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable {what} ({e})") from None
    if not isinstance(report, dict) or report.get("kind") != kind:
        raise ValueError(f"{path}: not a {what}")
    return report


def report_label(path: str) -> str:
    """How a report is named in a comparison: its folder for a work dir or a work dir's
    `report.json` (every finished run writes one, so the file name says nothing), else its
    file name."""
    path = os.path.normpath(path)
    if os.path.basename(path) == "report.json":
        path = os.path.dirname(path) or path
    return os.path.basename(os.path.abspath(path))


def load_report(path: str) -> dict:
    if os.path.isdir(path):
        path = os.path.join(path, "report.json")
    try:
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable report ({e})") from None
    for key in ("protocol", "overall", "per_database"):
        if key not in report:
            raise ValueError(f"{path}: not an evaluation report (no {key!r})")
    return report


def _dbs(report):
    return sorted(report["per_database"], key=lambda d: (DATABASE_ORDER.index(d) if d in DATABASE_ORDER else 9, d))


def _fmt(m):
    return f"{m['uf1']:.3f} / {m['uar']:.3f}"


def markdown(report: dict) -> str:
    o = report["overall"]
    lines = [f"# {report.get('experiment') or 'experiment'} — {report['protocol'].upper()}", "",
             f"Command: `{report.get('command', '')}`", "",
             f"Folds: {report.get('num_folds', '?')}{'' if report.get('complete', True) else ' (partial run)'}, "
             f"samples: {o['n']}", "",
             "| part | n | UF1 | UAR | accuracy |", "|---|---|---|---|---|",
             f"| overall | {o['n']} | {o['uf1']:.3f} | {o['uar']:.3f} | {o['accuracy']:.3f} |"]
    for db in _dbs(report):
        m = report["per_database"][db]
        lines.append(f"| {db} | {m['n']} | {m['uf1']:.3f} | {m['uar']:.3f} | {m['accuracy']:.3f} |")
    lines += ["", "Confusion matrix (rows true, columns predicted: " + ", ".join(CLASS_NAMES) + "):", ""]
    for row in o["confusion"]:
        lines.append("    " + " ".join(f"{v:4d}" for v in row))
    return "\n".join(lines) + "\n"


def write_markdown(report: dict, path: str) -> None:
    atomic_io.write_text(path, markdown(report))


def plot_confusions(report: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    parts = [("overall", report["overall"])] + [(db, report["per_database"][db]) for db in _dbs(report)]
    fig, axes = plt.subplots(1, len(parts), figsize=(3.4 * len(parts), 3.4), squeeze=False)
    for ax, (name, m) in zip(axes[0], parts):
        cm = np.asarray(m["confusion"])
        ax.imshow(cm, cmap="Blues")
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
        ax.set_xticks(range(3), [c[:3] for c in CLASS_NAMES])
        ax.set_yticks(range(3), [c[:3] for c in CLASS_NAMES])
        ax.set_xlabel("predicted")
        ax.set_title(f"{name}\nUF1 {m['uf1']:.3f} UAR {m['uar']:.3f}", fontsize=9)
    axes[0][0].set_ylabel("true")
    fig.suptitle(f"{report.get('experiment', '')} {report['protocol'].upper()}", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_io.write_bytes(path, buf.getvalue())


def compare_table(reports: list[tuple[str, dict]]) -> str:
    """Markdown: one row per experiment, UF1 / UAR overall and per database."""
    dbs = sorted({db for _, r in reports for db in r["per_database"]},
                 key=lambda d: (DATABASE_ORDER.index(d) if d in DATABASE_ORDER else 9, d))
    head = ["experiment", "protocol", "overall UF1 / UAR", "accuracy"] + [f"{db} UF1 / UAR" for db in dbs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in reports:
        cells = [name, r["protocol"].upper(), _fmt(r["overall"]), f"{r['overall']['accuracy']:.3f}"]
        cells += [_fmt(r["per_database"][db]) if db in r["per_database"] else "" for db in dbs]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def development_summary(report: dict) -> str:
    """One line per scored step of a development report (pooled inner-validation UF1)."""
    lines = [f"development: {report['experiment']} on {len(report['folds'])} folds, "
             f"{report['num_val_samples']} inner-validation samples; {report['rule']}"]
    for c in report["curve"]:
        dbs = " ".join(f"{db} {v:.3f}" for db, v in sorted(c["per_database_uf1"].items()))
        mark = "  <- best" if c["step"] == report["best"]["step"] else ""
        lines.append(f"step {c['step']:>5}: UF1 {c['uf1']:.3f} UAR {c['uar']:.3f} ({dbs}){mark}")
    return "\n".join(lines)
