"""The baselines' job, importable: features -> folds -> inner-CV classifier -> pooled report."""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import shlex
import time
from typing import Sequence

from threadpoolctl import threadpool_limits

from atn_tf import atomic_io, host
from atn_tf.baselines import classify, features_io
from atn_tf.data.manifest import read_manifest

REPO = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_MANIFEST = str(REPO.parent / "shared" / "reference" / "megc2019" / "manifest.csv")
PAPER_CDE = {"LBPTOP": (0.329, 0.335), "HOOF": (0.350, 0.350)}   # best of 4 + SVM, UF1/UAR


def command_line(argv: Sequence[str]) -> str:
    return " ".join(["python -m atn_tf.baselines"] + [shlex.quote(a) for a in argv[1:]])


def evaluate_config(features: str, config: str, rows, protocol: str, classifier: str,
                    inner_splits: int = 3, jobs: int = 1, seed: int = 0, command: str = "") -> dict:
    t0 = time.perf_counter()
    fs = features_io.load_config(features, config, rows)
    with threadpool_limits(1):
        result = classify.evaluate(fs.flat(), [r.label for r in rows], [r.sample_id for r in rows],
                                   [r.database for r in rows], [r.subject for r in rows], protocol, classifier,
                                   shape=fs.shape, inner_splits=inner_splits, seed=seed, n_jobs=jobs)
    family = config.split("_")[0].upper()
    return {
        "protocol": protocol, "config": config, "classifier": classifier, "feature_key": fs.key,
        "feature_shape": list(fs.shape), "features": os.path.basename(os.fspath(features)),
        "inner_cv": f"GroupKFold({inner_splits}) by subject on the training fold, scored by macro F1",
        "command": command, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": host.summary(), "seconds": round(time.perf_counter() - t0, 2),
        "paper_cde_best_of_4": PAPER_CDE.get(family),
        "overall": result["overall"], "per_database": result["per_database"],
        "folds": result["folds"], "predictions": result["predictions"],
    }


def table(reports: Sequence[dict]) -> str:
    lines = ["| config | classifier | protocol | UF1 | UAR | acc | " + " | ".join(
        f"{db} UF1/UAR" for db in sorted(reports[0]["per_database"])) + " | paper CDE best-of-4 UF1/UAR | s |",
             "|---|---|---|---|---|---|" + "---|" * len(reports[0]["per_database"]) + "---|---|"]
    for r in reports:
        o = r["overall"]
        dbs = " | ".join(f"{m['uf1']:.3f}/{m['uar']:.3f}" for _, m in sorted(r["per_database"].items()))
        paper = r.get("paper_cde_best_of_4")
        lines.append(f"| {r['config']} | {r['classifier']} | {r['protocol']} | {o['uf1']:.3f} | {o['uar']:.3f} | "
                     f"{o['accuracy']:.3f} | {dbs} | {f'{paper[0]:.3f}/{paper[1]:.3f}' if paper else '-'} | "
                     f"{r['seconds']:.1f} |")
    return "\n".join(lines)


def run(features: str, config: str, protocol: str, classifier: str, manifest: str = DEFAULT_MANIFEST,
        output: str | None = None, report: str | None = None, inner_splits: int = 3, jobs: int = 1,
        seed: int = 0, command: str = "") -> list[dict]:
    rows = read_manifest(manifest)
    configs = features_io.list_configs(features) if config == "all" else [config]
    if output and len(configs) > 1 and "{config}" not in output:
        raise ValueError("--output must contain `{config}` when several configurations are run")
    t0 = time.perf_counter()
    reports = []
    for c in configs:
        r = evaluate_config(features, c, rows, protocol, classifier, inner_splits, jobs, seed, command)
        reports.append(r)
        if output:
            atomic_io.write_text(output.replace("{config}", c), json.dumps(r, indent=1) + "\n")
    if output:
        md = report or os.path.join(os.path.dirname(output), "report.md")
        m = reports[0]["machine"]
        atomic_io.write_text(md, f"# Hand-crafted baseline report\n\n`{command}`\n\n{table(reports)}\n\n"
                                 f"Total {time.perf_counter() - t0:.1f} s on {m['nproc']} x {m['cpu']}, "
                                 f"{reports[0]['date']}.\n")
    return reports
