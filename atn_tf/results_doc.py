"""`python -m atn_tf.results_doc`: the generated tables of docs/results.md from the committed
reports in docs/results/.

Three generated blocks; everything outside their markers (the baselines' tables, prose) is kept:

- deep models (`cde_*.json`, `hde_*.json` written by atn_tf.evaluate): a headline table —
  one row per experiment run over several seeds (`experiment` with a trailing `_seed<k>`
  removed, same protocol): mean ± sd over the seeds and, when one exists, the mean-probability
  ensemble of those runs (a report with `members`) — then one row per report with the 95 %
  subject-bootstrap interval of its overall UF1 (`atn_tf.evaluation.stats`), the linear probe of the
  same inputs under the same protocol beside it, and the model-selection rule, number of
  recipes tried and wall time when the report records them ("—" when it does not);
- linear probes (`probe_<protocol>_<input>.json` written by `python -m atn_tf.baselines --probe`),
  and late fusions of them (`probe_fused_<protocol>_<inputs>.json`: `python -m atn_tf.evaluate
  --ensemble` over probe reports, the mean of their probabilities). A late-fusion model (one
  head per branch, their weighted mean predicts) is read against the fusion of its branches'
  probes as well: the floor that combines its inputs the way it does;
- the deep-model issue's targets (`atn_tf.evaluation.targets`): for each, the best headline
  recipe (seeds 0-2), its margins and how many recipes meet it.

Each row names the command that made its report.
"""

from __future__ import annotations

import collections
import glob
import os
import re
import sys

import numpy as np
from absl import app, flags

from atn_tf import atomic_io, host
from atn_tf.evaluation import reports, stats
from atn_tf.evaluation import targets

FLAGS = flags.FLAGS
flags.DEFINE_string("results_dir", "docs/results", "Folder of report JSON files.")
flags.DEFINE_string("output", "docs/results.md", "Markdown file to update.")

BEGIN, END = "<!-- deep-models:begin -->", "<!-- deep-models:end -->"
PROBE_BEGIN, PROBE_END = "<!-- probes:begin -->", "<!-- probes:end -->"
TARGETS_BEGIN, TARGETS_END = "<!-- targets:begin -->", "<!-- targets:end -->"
N_BOOT = 2000
SEED_SUFFIX = re.compile(r"_seed\d+$")
# model -> the probe input(s) that see the same inputs
MODEL_PROBES = {"atn": ("apex_flow_seq",), "apex_only": ("apex",), "micro_attention": ("apex",),
                "time_only": ("flow_seq",), "atn_flow": ("all",), "flow_only": ("flow_image",)}
PROBE_ORDER = ("flow_seq", "flow_seq_cartesian", "flow_image", "flow_image_std", "apex", "apex_flow_seq", "all",
               "apex_fer")
# model -> its branches, each read against the probe of the input it reads (`branch_probes`)
MODEL_BRANCHES = {"atn": ("apex", "time"), "atn_flow": ("apex", "time", "flow")}
PROBE_PREFIX = "probe_"

# The paper's UF1 / UAR (ACII 2019, DESIGN.md §4): literature values to compare against.
PAPER = {
    ("atn", "cde"): {"overall": (.631, .613), "casme2": (.798, .775), "samm": (.496, .482), "smic": (.553, .543)},
    ("apex_only", "cde"): {"overall": (.494, .484)},
    ("time_only", "cde"): {"overall": (.581, .581)},
    ("micro_attention", "cde"): {"overall": (.508, .493)},
    ("atn", "hde"): {"casme2": (.523, .501), "samm": (.429, .427), "smic": (.497, .489)},
    ("apex_only", "hde"): {"casme2": (.318, .359), "samm": (.372, .375), "smic": (.386, .395)},
    ("time_only", "hde"): {"casme2": (.631, .643), "samm": (.450, .458), "smic": (.503, .524)},
    ("micro_attention", "hde"): {"casme2": (.338, .369), "samm": (.383, .380), "smic": (.354, .372)},
}
DBS = ("casme2", "samm", "smic")


def _pair(m):
    return f"{m['uf1']:.3f} / {m['uar']:.3f}"


def _paper(model, protocol, part):
    v = PAPER.get((model, protocol), {}).get(part)
    return f"{v[0]:.3f} / {v[1]:.3f}" if v else "—"


RECIPE_VERSION = re.compile(r"_(v\d+)(?:_|$)")


def _size(report: dict) -> str:
    """The report's recipe (named by the experiment, `<...>_v3_seed0` -> recipe v3), its size,
    its apex network, fitted probe head, members and per-database head weights, and whether
    it trained with the flow-image mirror of before 2026-12-05 (`reports.old_flow_mirror`)."""
    cfg, experiment = report.get("config"), report.get("experiment", "")
    if not cfg:
        return "?"
    full = cfg["image_size"] == 224 and cfg["width"] == 64 and cfg["lstm_units"] == 512 and cfg["train_steps"] == 2500
    named = RECIPE_VERSION.search(experiment or "")
    recipe = f"recipe {named.group(1)}" if named else \
        "recipe v2" if cfg.get("input_norm") else ("seed recipe" if full else "CPU-sized")
    parts = ""
    if cfg.get("apex_backbone") == "fer_xception":
        parts = ", FER2013 mini-Xception apex" + (" (frozen)" if cfg.get("freeze_apex") else "")
    elif cfg.get("apex_distill", 0) > 0:
        parts = ", ResNet apex distilled from FER2013"
    if cfg.get("linear_path") and cfg.get("linear_fit") == "probe":
        parts += ", fitted probe head"
    if cfg.get("apex_fit") == "probe":
        parts += ", apex head fitted as a probe"
    if cfg.get("members", 1) > 1:
        parts += f", {cfg['members']} members"
    if cfg.get("database_head_weights"):
        parts += ", head weights per database"
    mirror = "; old flow-image mirror" if reports.old_flow_mirror(report) else ""
    return recipe + f" ({cfg['image_size']}px, width {cfg['width']}, LSTM {cfg['lstm_units']}, " \
        f"{cfg['train_steps']} steps{parts}{mirror})"


def _ci(r) -> str:
    o = stats.bootstrap_uf1_ci(r["predictions"], n=N_BOOT, seed=0)["overall"]
    return f"[{o['low']:.3f}, {o['high']:.3f}]"


def _link(path):
    return f"[{os.path.basename(path)}](results/{os.path.basename(path)})"


def _dash(v, fmt="{}"):
    return "—" if v is None else fmt.format(v)


def seed_group(experiment: str) -> str:
    """The experiment name without a trailing `_seed<k>`: runs of one recipe over seeds share it."""
    return SEED_SUFFIX.sub("", experiment or "")


def fused_inputs(report: dict) -> tuple[str, ...]:
    """The inputs whose probes a mean-probability ensemble fuses (sorted; its members'
    experiments are `probe_<input>`), or () for any other report."""
    names = [m.get("experiment") or "" for m in report.get("members") or []]
    if len(names) < 2 or not all(n.startswith(PROBE_PREFIX) for n in names):
        return ()
    return tuple(sorted(n[len(PROBE_PREFIX):] for n in names))


def load_probes(results_dir: str) -> dict:
    """(protocol, input) -> (path, report) of the committed probe reports; a fusion of probes
    is keyed by its inputs joined with "+" (`fused_inputs`)."""
    out = {}
    for path in sorted(glob.glob(os.path.join(results_dir, f"{PROBE_PREFIX}*.json"))):
        r = reports.load_report(path)
        name = r.get("probe") or "+".join(fused_inputs(r))
        if name:
            out[(r["protocol"], name)] = (path, r)
    return out


PLAIN_READS = {"apex": "apex", "time": "flow_seq", "flow": "flow_image"}   # branch -> its raw input's probe


def branch_reads(config: dict | None) -> dict:
    """branch -> the probe of its input as the branch reads it: the FER2013 features for the
    `fer_xception` apex, Cartesian flow for `flow_seq_repr=cartesian`, the per-image
    standardised flow image for `flow_sample_norm`; else the raw input (`PLAIN_READS`)."""
    cfg = config or {}
    return {"apex": "apex_fer" if cfg.get("apex_backbone") == "fer_xception" else "apex",
            "time": "flow_seq_cartesian" if cfg.get("flow_seq_repr") == "cartesian" else "flow_seq",
            "flow": "flow_image_std" if cfg.get("flow_sample_norm") else "flow_image"}


def branch_probes(model: str, config: dict | None) -> str:
    """The key of the fusion of a late-fusion model's branch probes (`branch_reads`; "" for
    any other model)."""
    branches = MODEL_BRANCHES.get(model, ())
    if (config or {}).get("fusion") != "late" or len(branches) < 2:
        return ""
    read = branch_reads(config)
    return "+".join(sorted(read[b] for b in branches))


def probe_inputs(model: str, protocol: str, probes: dict, config: dict | None = None) -> tuple[str, ...]:
    """The probe input(s) matching a model's inputs; the ATN falls back to its two inputs
    separately when there is no apex_flow_seq probe. A branch that reads its input
    transformed (`branch_reads`: the FER2013 apex, Cartesian flow, the standardised flow
    image) is also read against the probe of what it reads (for `apex_only`, instead of the
    pixels); and a late-fusion model against the fusion of its branches' probes
    (`branch_probes`)."""
    wanted = MODEL_PROBES.get(model, ())
    if wanted == ("apex_flow_seq",) and (protocol, "apex_flow_seq") not in probes:
        wanted = ("apex", "flow_seq")
    for branch, name in branch_reads(config).items():
        if name != PLAIN_READS[branch] and (protocol, name) in probes:
            wanted = (name,) if model == "apex_only" and branch == "apex" else wanted + (name,)
    fused = branch_probes(model, config)
    if fused and (protocol, fused) in probes:
        wanted = wanted + (fused,)
    return wanted


def _probe_cell(model: str, protocol: str, probes: dict, config: dict | None = None) -> str:
    cells = []
    for name in probe_inputs(model, protocol, probes, config):
        hit = probes.get((protocol, name))
        cells.append(f"[{name}](results/{os.path.basename(hit[0])}) {_pair(hit[1]['overall'])}" if hit
                     else f"{name}: —")
    return "; ".join(cells) or "—"


def _deep(paths: list[str]) -> list[tuple[str, dict]]:
    loaded = [(p, reports.load_report(p)) for p in sorted(paths)]
    return [(p, r) for p, r in loaded if isinstance(r.get("config"), dict)]   # deep-model reports only


def seed_groups(loaded: list[tuple[str, dict]]) -> list[dict]:
    """Experiments run over two or more seeds: {key, protocol, runs: [(path, report)], ensembles}."""
    groups = {}
    for path, r in loaded:
        if not r.get("members"):
            groups.setdefault((r["protocol"], seed_group(r.get("experiment"))), []).append((path, r))
    out = []
    for (protocol, key), runs in sorted(groups.items()):
        if len(runs) < 2:
            continue
        ensembles = [(p, r) for p, r in loaded if r.get("members") and r["protocol"] == protocol
                     and {seed_group(m.get("experiment")) for m in r["members"]} == {key}]
        out.append({"key": key, "protocol": protocol, "runs": runs, "ensembles": ensembles})
    return out


def _mean_sd(values) -> str:
    v = np.asarray(values, dtype=np.float64)
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}"


def headline_table(loaded: list[tuple[str, dict]], probes: dict) -> str:
    head = ["experiment", "model", "protocol", "size", "seeds", "overall UF1 (mean ± sd)", "overall UAR (mean ± sd)"] \
        + [f"{db} UF1 (mean ± sd)" for db in DBS] + ["ensemble of the runs: UF1 / UAR [95 % CI]", "probe of its inputs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in seed_groups(loaded):
        runs = [r for _, r in g["runs"]]
        cfg = runs[0]["config"]
        seeds = ", ".join(str(r["config"].get("seed", "?")) for r in runs)
        cells = [f"**{g['key']}**", cfg["model"], g["protocol"].upper(), _size(runs[0]),
                 f"mean ± sd over {len(runs)} seeds ({seeds})",
                 _mean_sd([r["overall"]["uf1"] for r in runs]), _mean_sd([r["overall"]["uar"] for r in runs])]
        for db in DBS:
            vals = [r["per_database"][db]["uf1"] for r in runs if db in r["per_database"]]
            cells.append(_mean_sd(vals) if len(vals) == len(runs) else "")
        cells.append("; ".join(f"{_link(p)} {_pair(e['overall'])} {_ci(e)}" for p, e in g["ensembles"]) or "—")
        cells.append(_probe_cell(cfg["model"], g["protocol"], probes, cfg))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table(paths: list[str], probes: dict | None = None) -> str:
    probes = probes or {}
    loaded = _deep(paths)
    lines = ["| report | model | protocol | size | folds | overall UF1 / UAR (paper) | overall UF1 95 % CI | "
             + " | ".join(f"{db} UF1 / UAR (paper)" for db in DBS)
             + " | probe of its inputs (UF1 / UAR) | selection | recipes tried | wall s | command |",
             "|" + "---|" * (7 + len(DBS) + 5)]
    for path, r in loaded:
        model, protocol = r["config"]["model"], r["protocol"]
        label = model + (f" (mean of {len(r['members'])} runs: seeds "
                         f"{', '.join(str(m['seed']) for m in r['members'])})" if r.get("members")
                         else f", seed {r['config'].get('seed', '?')}")
        cells = [_link(path), label, protocol.upper(),
                 _size(r), f"{r.get('num_folds', '?')}{'' if r.get('complete', True) else ' (partial)'}",
                 f"{_pair(r['overall'])} ({_paper(model, protocol, 'overall')})", _ci(r)]
        for db in DBS:
            m = r["per_database"].get(db)
            cells.append(f"{_pair(m)} ({_paper(model, protocol, db)})" if m else "")
        cells += [_probe_cell(model, protocol, probes, r["config"]), _dash(r.get("selection")),
                  _dash(r.get("recipes_tried")), _dash(r.get("wall_seconds"), "{:.0f}")]
        cells.append(f"`{r.get('command', '')}` ({r.get('date', '?')[:10]})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def probe_table(probes: dict) -> str:
    lines = ["| report | input | dim | protocol | UF1 / UAR | UF1 95 % CI | accuracy | "
             + " | ".join(f"{db} UF1 / UAR" for db in DBS) + " | C chosen (folds) | s | command |",
             "|" + "---|" * (7 + len(DBS) + 3)]
    order = {name: i for i, name in enumerate(PROBE_ORDER)}
    for (protocol, name), (path, r) in sorted(probes.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 9))):
        cs = collections.Counter(f["C"] for f in r.get("folds", []) if isinstance(f, dict) and "C" in f)
        dim = f"fused ({len(r['members'])})" if r.get("members") else str((r.get("probe_inputs") or {}).get("dim", "?"))
        cells = [_link(path), name, dim, protocol.upper(),
                 _pair(r["overall"]), _ci(r), f"{r['overall']['accuracy']:.3f}"]
        cells += [_pair(r["per_database"][db]) if db in r["per_database"] else "" for db in DBS]
        cells += [", ".join(f"{c:g} ({k})" for c, k in sorted(cs.items())) or "—",
                  _dash(r.get("wall_seconds"), "{:.0f}"), f"`{r.get('command', '')}` ({r.get('date', '?')[:10]})"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _replace(old: str, begin: str, end: str, body: str, heading: str) -> str:
    if begin in old and end in old:
        return old[:old.index(begin)] + body + old[old.index(end) + len(end):]
    return old.rstrip("\n") + f"\n\n{heading}\n\n" + body + "\n"


def update(results_dir: str, output: str, when: str, machine: str) -> str:
    paths = [p for p in glob.glob(os.path.join(results_dir, "*.json"))
             if os.path.basename(p).startswith(("cde_", "hde_"))]
    probes = load_probes(results_dir)
    loaded = _deep(paths)
    cpus = collections.Counter(reports.cpu(r) for _, r in loaded)
    ran_on = ", ".join(f"{name} ({n} reports)" for name, n in cpus.most_common())
    body = (f"{BEGIN}\n\nGenerated by `python -m atn_tf.results_doc` on {when} ({machine}). The reports "
            f"ran on: {ran_on} (each report's `machine`; the same recipe and seed give another "
            "model on another CPU). "
            "UF1 / UAR on the pooled predictions of all folds (HDE: the per-database column is the "
            "held-out database). Paper values in parentheses. 95 % CI: percentile interval of the "
            f"overall UF1 over {N_BOOT} subject-bootstrap replicates (subjects resampled with replacement "
            "within each database; `atn_tf.evaluation.stats`). Probe: logistic regression on the same inputs, same "
            "protocol and folds (table below); for a late-fusion model also the mean of its branches' probes "
            "(inputs joined by +). selection / recipes tried / wall s: as recorded by the "
            "report (— for reports written before they were recorded).\n\n"
            "Experiments run over several seeds:\n\n" + headline_table(loaded, probes)
            + "\nEvery report:\n\n" + table(paths, probes) + f"\n{END}")
    probe_body = (f"{PROBE_BEGIN}\n\nGenerated by `python -m atn_tf.results_doc` on {when}. Each row's "
                  "command wrote its report; s = wall seconds of the whole command's evaluation "
                  "(records read, every fold fitted with its inner CV).\n\n" + probe_table(probes)
                  + f"\n{PROBE_END}")
    targets_body = (f"{TARGETS_BEGIN}\n\nGenerated by `python -m atn_tf.results_doc` on {when} from the "
                    "reports above (`atn_tf/evaluation/targets.py`). Headline runs only: each recipe's "
                    "committed seeds 0, 1, 2 and their ensemble; margin = value − target (per database: "
                    "the seed mean of that database's UF1; HDE: the held-out database).\n\n"
                    + targets.status_table(seed_groups(loaded), probes, n_boot=N_BOOT) + f"\n{TARGETS_END}")
    old = open(output, encoding="utf-8").read() if os.path.exists(output) else "# Results\n"
    new = _replace(old, BEGIN, END, body, "## Deep models on the real MEGC2019 data")
    new = _replace(new, PROBE_BEGIN, PROBE_END, probe_body, "## Linear probes on the records' inputs")
    new = _replace(new, TARGETS_BEGIN, TARGETS_END, targets_body, "### Where the targets of the deep-model issue stand")
    atomic_io.write_text(output, new)
    return body + "\n\n" + probe_body + "\n\n" + targets_body


def main(argv):
    import datetime
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        print(update(FLAGS.results_dir, FLAGS.output, datetime.date.today().isoformat(), host.describe()))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    app.run(main)
