"""`launch.py report`: per-task and summary tables, learning curves and per-task bars from the
eval.jsonl files of finished (or running) runs, with published numbers beside ours.

Inputs: run directories (config.json + eval.jsonl) and/or grid folders, whose subfolders are
run directories (`<out>/<grid>/<run>/`; subfolders without config.json, such as an earlier
`report/`, are skipped). Runs are grouped into *methods*: runs whose configs are equal except
for the seed. A method is labelled by its preset; where several methods share a preset, the
dotted config fields that differ between them are appended, e.g.
`mt10_moore [env.reward_version=v1]`.

Metric (`--metric`): `success` (default) reports each task's success rate, `return` its mean
undiscounted episode return (`per_task[task]["return"]` in eval.jsonl; MiniGrid: in [0, 1],
Meta-World: hundreds to thousands), printed as plain numbers with 3 decimals. Everything below
(tables, CSV, LaTeX, figures) uses the chosen metric; only the published reference rows,
which are success rates, are left out for `return`.

Statistics (REFERENCE.md "Results statistics", i.e. rliable's recommendations):
- the reported checkpoint is the FINAL evaluation of each run (the last eval.jsonl record),
  never a best-of-training;
- per method, a score matrix S[seed, task] of the metric (success: fractions in eval.jsonl,
  printed as percentages; return: as stored);
- mean = mean over tasks per seed, then over seeds (= mean of S);
- IQM = interquartile mean of the pooled per-(seed, task) scores: the mean of the middle 50 %
  of S flattened, cutting int(0.25 * n) scores at each end (exactly
  `scipy.stats.trim_mean(S, 0.25, axis=None)`, which is what rliable's `metrics.aggregate_iqm`
  computes);
- 95 % confidence intervals by stratified bootstrap, as rliable's `StratifiedBootstrap`:
  each replicate resamples the seeds with replacement independently within each task column,
  the statistic is recomputed, and the interval is the 2.5/97.5 percentiles of the replicates
  (percentile method, 2000 replicates by default, fixed RNG seed so that a report is
  reproducible byte for byte). With one seed no interval is given.

Why not the `rliable` package itself: `pip install rliable` (1.2.0) would add arch,
statsmodels, pandas, seaborn, patsy, formulaic, narwhals and wrapt to the environment, nine
packages for two estimators of a few lines each. The same estimators are implemented here in
numpy and tested against hand-computed values and scipy's trim_mean.

Outputs (in `out`): report.md, per_task.csv, summary.csv, per_task.tex, summary.tex
(booktabs), curves.png (IQM of the metric vs env steps per task with the 95 % CI band) and
per_task.png (mean per task, error bars = min/max over seeds). For `--metric success` the
summary also lists published numbers for the report's suite from
analysis/reference_results.toml, labelled "reference: <method> (<source>)"; they were not
re-run here and their protocols differ.
"""

from __future__ import annotations

import csv
import io
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training import config as config_lib
from training import run_dir as run_lib
from training.errors import UsageError

REFERENCE_FILE = Path(__file__).resolve().parent / "reference_results.toml"
DEFAULT_REPS = 2000
DEFAULT_SEED = 0
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Metric:
    """A per-task score of eval.jsonl and how the report prints and labels it."""

    key: str  # field of per_task[task] in eval.jsonl; also the word used in prose
    label: str  # tables, captions and axes, e.g. "success rate (%)"
    latex_label: str
    header: str  # report.md's opening sentence, before ", at the final checkpoint ..."
    scale: float  # printed value = scale * stored value
    digits: int  # decimals in tables
    csv_digits: int  # decimals in the CSV files
    csv_unit: str  # CSV column suffix, e.g. mean_pct
    limits: tuple | None  # printed-value range of the figure axes; None: matplotlib's
    references: bool  # the published reference rows (success percentages) apply

    def text(self, x: float | None, digits: int | None = None) -> str:
        """A stored value as printed in tables ('' for None)."""
        digits = self.digits if digits is None else digits
        return "" if x is None else f"{self.scale * x:.{digits}f}"

    def csv_text(self, x: float | None) -> str:
        return self.text(x, self.csv_digits)


METRICS = {
    "success": Metric(key="success", label="success rate (%)",
                      latex_label=r"success rate (\%)", header="Success rates in %",
                      scale=100, digits=1, csv_digits=4, csv_unit="pct", limits=(0, 100),
                      references=True),
    "return": Metric(key="return", label="return", latex_label="return",
                     header="Metric: return (mean undiscounted episode return per task, "
                            "plain numbers, not %)",
                     scale=1, digits=3, csv_digits=6, csv_unit="return", limits=None,
                     references=False),
}
NO_REFERENCES_NOTE = ("published reference numbers are success rates; not shown for "
                      "--metric return")


def get_metric(name: str) -> Metric:
    if name not in METRICS:
        raise UsageError(f"unknown --metric '{name}'; valid: {', '.join(METRICS)}")
    return METRICS[name]


# ---------------------------------------------------------------------------------------------
# Estimators


def _trim_mean_last(x: np.ndarray, proportion: float = 0.25) -> np.ndarray:
    """Trimmed mean over the last axis (scipy.stats.trim_mean's cut: int(proportion * n))."""
    n = x.shape[-1]
    cut = int(proportion * n)
    return np.sort(x, axis=-1)[..., cut:n - cut].mean(axis=-1)


def iqm(scores) -> float:
    """Interquartile mean of all scores pooled (rliable: trim_mean(scores, 0.25, axis=None))."""
    flat = np.ravel(np.asarray(scores, dtype=float))
    if flat.size == 0:
        raise ValueError("iqm of no scores")
    return float(_trim_mean_last(flat))


def _batched_mean(samples: np.ndarray) -> np.ndarray:
    return samples.mean(axis=(-2, -1))


def _batched_iqm(samples: np.ndarray) -> np.ndarray:
    return _trim_mean_last(samples.reshape(*samples.shape[:-2], -1))


STATISTICS = {"mean": _batched_mean, "iqm": _batched_iqm}


def point_estimate(scores, statistic: str) -> float:
    """`statistic` ('mean' or 'iqm') of a (seeds, tasks) score matrix."""
    return float(STATISTICS[statistic](_as_matrix(scores)))


def stratified_bootstrap_ci(scores, statistic: str, reps: int = DEFAULT_REPS,
                            confidence: float = CONFIDENCE,
                            seed: int = DEFAULT_SEED) -> tuple[float, float]:
    """Percentile CI of `statistic` over a (seeds, tasks) matrix, seeds resampled per task."""
    scores = _as_matrix(scores)
    fn = STATISTICS[statistic]
    num_seeds, num_tasks = scores.shape
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, num_seeds, size=(reps, num_seeds, num_tasks))
    replicates = fn(scores[idx, np.arange(num_tasks)])
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return float(low), float(high)


def _as_matrix(scores) -> np.ndarray:
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 2 or 0 in scores.shape:
        raise ValueError(f"expected a non-empty (seeds, tasks) matrix, got shape {scores.shape}")
    return scores


# ---------------------------------------------------------------------------------------------
# Runs and methods


@dataclass(frozen=True)
class Run:
    path: Path
    preset: str
    seed: int
    suite: str
    fields: dict  # flattened config without the seed: dotted name -> value
    records: tuple  # eval.jsonl records in file order
    complete: bool  # final.json written

    @property
    def final(self) -> dict:
        return self.records[-1]


@dataclass
class Method:
    label: str
    runs: list  # of Run, sorted by seed
    tasks: list  # task names in eval.jsonl order

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    def matrix(self, key: str, record_of) -> np.ndarray:
        """(seeds, tasks) matrix of per_task[task][key] in the record `record_of(run)`."""
        return np.array([[record_of(r)["per_task"][t][key] for t in self.tasks]
                         for r in self.runs], dtype=float)

    def final_matrix(self, key: str) -> np.ndarray:
        return self.matrix(key, lambda r: r.final)


def _is_run_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def _run_dirs(paths: list[str]) -> tuple[list[Path], bool]:
    """Run directories named by `paths`, and whether the first path is a grid folder."""
    if not paths:
        raise UsageError("report: give at least one grid folder or run directory")
    found, seen, first_is_grid = [], set(), False
    for i, raw in enumerate(paths):
        path = Path(raw)
        if not path.exists():
            raise UsageError(f"report: '{raw}' does not exist")
        if not path.is_dir():
            raise UsageError(f"report: '{raw}' is not a directory (expected a run directory or "
                             "a folder of run directories)")
        if _is_run_dir(path):
            dirs = [path]
        else:
            dirs = sorted(p for p in path.iterdir() if p.is_dir() and _is_run_dir(p))
            if not dirs:
                raise UsageError(f"report: '{raw}' is neither a run directory (config.json + "
                                 "eval.jsonl) nor a folder of run directories")
            first_is_grid = first_is_grid or i == 0
        for d in dirs:
            key = d.resolve()
            if key not in seen:
                seen.add(key)
                found.append(d)
    return found, first_is_grid


def _read_records(path: Path, key: str) -> list[dict]:
    eval_file = path / "eval.jsonl"
    if not eval_file.is_file():
        raise UsageError(f"report: run '{path}' has no eval.jsonl (not evaluated yet)")
    records = []
    for n, line in enumerate(eval_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise UsageError(f"report: '{eval_file}' line {n} is not valid JSON") from None
        per_task = record.get("per_task") if isinstance(record, dict) else None
        if not isinstance(per_task, dict) or not per_task or "step" not in record or not all(
                isinstance(v, dict) and key in v for v in per_task.values()):
            raise UsageError(f"report: '{eval_file}' line {n} lacks step or per_task {key}")
        records.append(record)
    if not records:
        raise UsageError(f"report: run '{path}' has no evaluations (eval.jsonl is empty)")
    return records


def _load_run(path: Path, key: str) -> Run:
    cfg = run_lib.load_config(path)
    fields = config_lib.flatten(cfg)
    fields.pop("seed")
    return Run(path=path, preset=cfg.preset, seed=cfg.seed, suite=cfg.env.suite, fields=fields,
               records=tuple(_read_records(path, key)), complete=(path / "final.json").is_file())


def group_methods(runs: list[Run]) -> list[Method]:
    """Runs grouped by config without the seed; labels as in the module docstring."""
    suites = {}
    for run in runs:
        suites.setdefault(run.suite, run.path)
    if len(suites) > 1:
        listed = ", ".join(f"{s} ('{p}')" for s, p in suites.items())
        raise UsageError(f"report: runs mix suites ({listed}); report one suite at a time")
    tasks = list(runs[0].final["per_task"])
    for run in runs[1:]:
        if set(run.final["per_task"]) != set(tasks):
            raise UsageError(f"report: runs '{runs[0].path}' and '{run.path}' evaluate different "
                             "tasks; report one task set at a time")
    groups: dict[str, list[Run]] = {}
    for run in runs:
        key = json.dumps(run.fields, sort_keys=True, default=str)
        groups.setdefault(key, []).append(run)
    by_preset: dict[str, list[list[Run]]] = {}
    for members in groups.values():
        by_preset.setdefault(members[0].preset, []).append(members)
    methods = []
    for preset, same_preset in by_preset.items():
        differing = sorted(k for k in same_preset[0][0].fields
                           if len({json.dumps(m[0].fields.get(k), default=str)
                                   for m in same_preset}) > 1)
        for members in same_preset:
            label = preset
            if len(same_preset) > 1:
                fields = members[0].fields
                label += " [" + ", ".join(f"{k}={config_lib.format_value(fields.get(k))}"
                                          for k in differing) + "]"
            members = sorted(members, key=lambda r: (r.seed, str(r.path)))
            for a, b in zip(members, members[1:], strict=False):
                if a.seed == b.seed:
                    raise UsageError(f"report: runs '{a.path}' and '{b.path}' have the same "
                                     f"config and seed ({a.seed}); pass only one of them")
            methods.append(Method(label=label, runs=members, tasks=tasks))
    return sorted(methods, key=lambda m: m.label)


# ---------------------------------------------------------------------------------------------
# Published numbers


def load_references(suite: str, path: str | Path | None = None,
                    setting: str = "online") -> list[dict]:
    """The published rows for `suite` (mt10/mt50) and `setting` (online: trained in the
    environment; offline: trained from a dataset), in file order; [] for other suites."""
    path = Path(path) if path is not None else REFERENCE_FILE
    entries = tomllib.loads(path.read_text()).get("reference", [])
    rows = []
    for entry in entries:
        missing = {"suite", "method", "success_pct", "statistic", "source"} - set(entry)
        if missing or entry["statistic"] not in STATISTICS:
            raise ValueError(f"{path}: bad reference entry {entry}")
        if entry["suite"] == suite and entry.get("setting", "online") == setting:
            rows.append(entry)
    return rows


# ---------------------------------------------------------------------------------------------
# Tables


def _ci_text(ci, metric: Metric) -> str:
    return "n/a (1 seed)" if ci is None else f"[{metric.text(ci[0])}, {metric.text(ci[1])}]"


def _step_text(steps: list[int]) -> str:
    lo, hi = min(steps), max(steps)
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _summarise(method: Method, metric: Metric, reps: int, seed: int) -> dict:
    scores = method.final_matrix(metric.key)
    row = {"method": method.label, "kind": "ours", "seeds": len(method.runs),
           "final_step": _step_text([r.final["step"] for r in method.runs]),
           "source": "this report", "note": ""}
    for stat in STATISTICS:
        row[stat] = point_estimate(scores, stat)
        row[f"{stat}_ci"] = (stratified_bootstrap_ci(scores, stat, reps, seed=seed)
                             if len(method.runs) > 1 else None)
    return row


def _reference_row(ref: dict) -> dict:
    value = ref["success_pct"] / 100
    rewards = f"{ref.get('rewards', '?')} rewards"
    note = ref.get("note", "")
    note = "; ".join(x for x in (ref.get("spread", ""), "" if rewards in note else rewards, note)
                     if x)
    row = {"method": f"reference: {ref['method']} ({ref['source']})", "kind": "reference",
           "seeds": ref.get("seeds", ""), "final_step": "", "source": ref["source"],
           "note": note, "spread": ref.get("spread", "")}
    for stat in STATISTICS:
        row[stat] = value if stat == ref["statistic"] else None
        row[f"{stat}_ci"] = None
    return row


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def _markdown(methods, summary, references, suite, metric, reps, seed,
              references_omitted: bool) -> str:
    ours = [r for r in summary if r["kind"] == "ours"]
    reference_text = (" Reference rows are published numbers under their own protocols (see "
                      "note), not re-run here." if metric.references else "")
    lines = [
        "# Results report", "",
        f"Suite **{suite}**, {len(methods[0].tasks)} tasks, {len(methods)} method(s), "
        f"{sum(len(m.runs) for m in methods)} run(s). {metric.header}, at the final "
        "checkpoint of each run (its last eval.jsonl record), never a best-of-training.", "",
        "## Summary", "",
        f"Table 1: {metric.label} at the final checkpoint. Mean = mean over tasks per seed, "
        f"then over seeds; IQM = interquartile mean over all (seed, task) scores; 95 % CIs by "
        f"stratified bootstrap over seeds within each task ({reps} replicates, RNG seed "
        f"{seed}, percentile method).{reference_text}", "",
        "| method | seeds | final step | mean | mean 95% CI | IQM | IQM 95% CI |",
        "|---|---:|---:|---:|---|---:|---|",
    ]
    for row in ours:
        lines.append(f"| {_md_escape(row['method'])} | {row['seeds']} | {row['final_step']} | "
                     f"{metric.text(row['mean'])} | {_ci_text(row['mean_ci'], metric)} | "
                     f"{metric.text(row['iqm'])} | {_ci_text(row['iqm_ci'], metric)} |")
    for row in references:
        cells = []
        for stat in STATISTICS:
            if row[stat] is None:
                cells += ["-", ""]
            else:
                cells += [metric.text(row[stat]),
                          row["spread"] + " (published)" if row["spread"] else ""]
        lines.append(f"| {_md_escape(row['method'])} | {row['seeds'] or '-'} | - | "
                     + " | ".join(cells) + " |")
    if references:
        lines += ["", "Reference notes:"]
        lines += [f"- {_md_escape(r['method'])}: {r['note']}" for r in references]
    if references_omitted:
        lines += ["", f"Note: {NO_REFERENCES_NOTE}."]
    lines += [
        "", f"## Per-task {metric.key}", "",
        f"Table 2: {metric.label} per task at the final checkpoint, mean over seeds "
        "(n = number of seeds).", "",
        "| task | " + " | ".join(f"{_md_escape(m.label)} (n={len(m.runs)})" for m in methods)
        + " |",
        "|---|" + "---:|" * len(methods),
    ]
    means = [m.final_matrix(metric.key).mean(axis=0) for m in methods]
    for j, task in enumerate(methods[0].tasks):
        lines.append(f"| {task} | " + " | ".join(metric.text(m[j]) for m in means) + " |")
    lines.append("| **mean over tasks** | "
                 + " | ".join(f"**{metric.text(m.mean())}**" for m in means) + " |")
    lines += ["", "## Runs", ""]
    for m in methods:
        lines.append(f"- {_md_escape(m.label)}: seeds {', '.join(map(str, m.seeds))}")
        for r in m.runs:
            status = "" if r.complete else " (incomplete: no final.json)"
            lines.append(f"  - `{r.path}` final step {r.final['step']}{status}")
    lines += ["", "## Figures", "",
              "Learning curves (IQM over seeds x tasks, 95 % stratified-bootstrap CI band):", "",
              "![learning curves](curves.png)", "",
              f"Per-task {metric.key} at the final checkpoint (bars: mean over seeds; "
              "error bars: min and max over seeds):", "",
              f"![per-task {metric.key}](per_task.png)", ""]
    return "\n".join(lines)


def _csv(header: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _per_task_csv(methods, metric: Metric) -> str:
    rows = []
    for m in methods:
        scores = m.final_matrix(metric.key)
        for j, task in enumerate(m.tasks):
            col = scores[:, j]
            rows.append([task, m.label, len(m.runs), metric.csv_text(col.mean()),
                         metric.csv_text(col.min()), metric.csv_text(col.max())])
    unit = metric.csv_unit
    return _csv(["task", "method", "seeds", f"mean_{unit}", f"min_{unit}", f"max_{unit}"], rows)


def _summary_csv(summary, metric: Metric) -> str:
    rows = []
    for r in summary:
        cells = [r["method"], r["kind"], r["seeds"], r["final_step"]]
        for stat in STATISTICS:
            ci = r[f"{stat}_ci"] or (None, None)
            cells += [metric.csv_text(v) for v in (r[stat], *ci)]
        rows.append(cells + [r["source"], r["note"]])
    header = ["method", "kind", "seeds", "final_step"]
    for stat in STATISTICS:
        header += [f"{stat}_{metric.csv_unit}", f"{stat}_ci_low_{metric.csv_unit}",
                   f"{stat}_ci_high_{metric.csv_unit}"]
    return _csv(header + ["source", "note"], rows)


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(c, c) for c in str(text))


def _latex_table(caption: str, label: str, align: str, header: list[str],
                 blocks: list[list[list[str]]]) -> str:
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             rf"\caption{{{caption}}}", rf"\label{{{label}}}",
             rf"\begin{{tabular}}{{{align}}}", r"\toprule", " & ".join(header) + r" \\",
             r"\midrule"]
    for i, block in enumerate(b for b in blocks if b):
        if i:
            lines.append(r"\midrule")
        lines += [" & ".join(row) + r" \\" for row in block]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


def _per_task_tex(methods, metric: Metric) -> str:
    means = [m.final_matrix(metric.key).mean(axis=0) for m in methods]
    header = ["Task"] + [f"{latex_escape(m.label)} ($n={len(m.runs)}$)" for m in methods]
    body = [[latex_escape(t)] + [metric.text(m[j]) for m in means]
            for j, t in enumerate(methods[0].tasks)]
    total = [["Mean over tasks"] + [metric.text(m.mean()) for m in means]]
    caption = (_capitalised(metric.latex_label) + " per task at the final checkpoint, mean "
               r"over seeds ($n$ = number of seeds).")
    return _latex_table(caption, "tab:per_task", "l" + "r" * len(methods), header,
                        [body, total])


def _summary_tex(summary, metric: Metric, reps) -> str:
    def cell(row, stat):
        if row[stat] is None:
            return "--"
        if row["kind"] == "reference":
            spread = row["spread"].replace("+-", "").strip()
            return metric.text(row[stat]) + (rf" $\pm$ {latex_escape(spread)}" if spread
                                             else "")
        ci = row[f"{stat}_ci"]
        return metric.text(row[stat]) + ("" if ci is None else
                                         f" [{metric.text(ci[0])}, {metric.text(ci[1])}]")

    blocks = [[], []]
    for row in summary:
        blocks[row["kind"] == "reference"].append(
            [latex_escape(row["method"]), str(row["seeds"] or "--"), cell(row, "mean"),
             cell(row, "iqm")])
    caption = (_capitalised(metric.latex_label) + r" at the final checkpoint: mean over "
               r"tasks and seeds, and IQM over (seed, task) scores, with 95\% "
               rf"stratified-bootstrap confidence intervals ({reps} replicates).")
    if metric.references:
        caption += (r" Reference rows: published numbers under their own protocols, not "
                    r"re-run here.")
    return _latex_table(caption, "tab:summary", "lrll", ["Method", "Seeds", "Mean", "IQM"],
                        blocks)


# ---------------------------------------------------------------------------------------------
# Figures


def _curve(method: Method, metric: Metric, reps: int, seed: int):
    """Steps evaluated by every seed, and the IQM with its CI at each."""
    by_run = [{rec["step"]: rec for rec in r.records} for r in method.runs]
    steps = sorted(set.intersection(*(set(b) for b in by_run)))
    values, lows, highs = [], [], []
    for step in steps:
        scores = np.array([[b[step]["per_task"][t][metric.key] for t in method.tasks]
                           for b in by_run], dtype=float)
        values.append(iqm(scores))
        low, high = (stratified_bootstrap_ci(scores, "iqm", reps, seed=seed)
                     if len(by_run) > 1 else (values[-1], values[-1]))
        lows.append(low)
        highs.append(high)
    scale = metric.scale
    return (np.array(steps), scale * np.array(values), scale * np.array(lows),
            scale * np.array(highs))


def _curves_png(methods, metric: Metric, path: Path, reps: int, seed: int) -> None:
    from analysis.figures import plt, save

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for m in methods:
        steps, value, low, high = _curve(m, metric, reps, seed)
        (line,) = ax.plot(steps, value, marker="." if len(steps) < 30 else None,
                          label=f"{m.label} (n={len(m.runs)})")
        ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("environment steps per task")
    ax.set_ylabel(f"{metric.label}, IQM")
    if metric.limits is not None:
        lo, hi = metric.limits
        ax.set_ylim(lo - 0.02 * (hi - lo), hi + 0.02 * (hi - lo))
    ax.set_title(f"IQM of {metric.key} over seeds x tasks, 95% stratified-bootstrap CI",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save(fig, path)


def _per_task_png(methods, metric: Metric, path: Path) -> None:
    """Grouped bars, one group per task; horizontal (tasks down the page) beyond 12 tasks."""
    from analysis.figures import plt, save

    tasks = methods[0].tasks
    num_tasks, num_methods = len(tasks), len(methods)
    width = 0.8 / num_methods
    span = 0.25 * num_tasks * max(1.5, num_methods * 0.8)
    horizontal = num_tasks > 12
    fig, ax = plt.subplots(figsize=(8, min(60.0, 1.5 + span)) if horizontal
                           else (max(6.5, 3 + span), 4.5))
    pos = np.arange(num_tasks)
    for i, m in enumerate(methods):
        scores = metric.scale * m.final_matrix(metric.key)
        mean = scores.mean(axis=0)
        err = np.stack([mean - scores.min(axis=0), scores.max(axis=0) - mean])
        offset = pos + (i - (num_methods - 1) / 2) * width
        label = f"{m.label} (n={len(m.runs)})"
        if horizontal:
            ax.barh(offset, mean, width, xerr=err, capsize=1.5, label=label)
        else:
            ax.bar(offset, mean, width, yerr=err, capsize=2, label=label)
    limits = None
    if metric.limits is not None:
        lo, hi = metric.limits
        limits = (lo, hi + 0.05 * (hi - lo))
    if horizontal:
        ax.set_yticks(pos, tasks, fontsize=7)
        ax.set_ylim(num_tasks - 0.5, -0.5)
        ax.set_xlabel(metric.label)
        if limits is not None:
            ax.set_xlim(*limits)
        ax.grid(axis="x", alpha=0.3)
    else:
        ax.set_xticks(pos, tasks, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel(metric.label)
        if limits is not None:
            ax.set_ylim(*limits)
        ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"{metric.key} per task, final checkpoint\n(bars: mean over seeds; error bars: "
                 "min/max over seeds)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    save(fig, path)


# ---------------------------------------------------------------------------------------------
# Entry point


def report(paths: list[str], out: str | None = None, reps: int = DEFAULT_REPS,
           seed: int = DEFAULT_SEED, metric: str = "success") -> str:
    """Write tables and figures for the runs under `paths` to `out`; return the Markdown.

    `metric` is a key of METRICS. `out` defaults to `<first path>/report` when the first path
    is a grid folder, else `./report`, with `_<metric>` appended for any metric but success (so
    a return report never overwrites the success one). Bad input is a one-line UsageError.
    """
    metric = get_metric(metric)
    dirs, first_is_grid = _run_dirs(list(paths))
    runs = [_load_run(d, metric.key) for d in dirs]
    methods = group_methods(runs)
    suite = runs[0].suite
    # Offline (DT) runs are compared with offline results only, online runs with online ones.
    setting = "offline" if runs[0].fields.get("algo") == "dt" else "online"
    published = load_references(suite, setting=setting)
    references = [_reference_row(r) for r in published] if metric.references else []
    summary = [_summarise(m, metric, reps, seed) for m in methods] + references

    default_name = "report" if metric.key == "success" else f"report_{metric.key}"
    out_dir = Path(out) if out is not None else (
        Path(paths[0]) / default_name if first_is_grid else Path(default_name))
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"report: --out '{out_dir}' exists and is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = _markdown(methods, summary, references, suite, metric, reps, seed,
                         references_omitted=bool(published) and not metric.references)
    files = {
        "report.md": markdown,
        "per_task.csv": _per_task_csv(methods, metric),
        "summary.csv": _summary_csv(summary, metric),
        "per_task.tex": _per_task_tex(methods, metric),
        "summary.tex": _summary_tex(summary, metric, reps),
    }
    for name, text in files.items():
        run_lib.write_atomic(out_dir / name, text)
    _curves_png(methods, metric, out_dir / "curves.png", reps, seed)
    _per_task_png(methods, metric, out_dir / "per_task.png")
    return markdown
