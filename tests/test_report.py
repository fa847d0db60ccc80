"""`launch.py report`: estimators (IQM, stratified bootstrap), tables, figures, bad input."""

import csv
import dataclasses
import json

import numpy as np
import pytest

from analysis.report import (
    iqm,
    latex_escape,
    load_references,
    point_estimate,
    report,
    stratified_bootstrap_ci,
)
from experiments.presets import get_preset
from training.config import dumps
from training.errors import UsageError

TASKS = ("reach-v3", "push-v3")
# method -> seed -> final success per task (fractions, as in eval.jsonl)
FINAL = {
    "mt10_mtsac": {0: (1.0, 0.0), 1: (0.5, 0.5), 2: (0.0, 0.25)},
    "mt10_moore": {0: (1.0, 1.0), 1: (1.0, 0.5), 2: (0.5, 0.0)},
}


# ---- estimators ------------------------------------------------------------------------------


def test_iqm_of_crafted_matrix_matches_hand_computation():
    # 8 scores: sorted 0, .1, .2, .3, .4, .5, .6, 1 -> drop 2 at each end -> mean(.2..5) = .35
    scores = np.array([[0.6, 0.1, 0.4, 1.0], [0.3, 0.0, 0.5, 0.2]])
    assert iqm(scores) == pytest.approx(0.35)
    assert point_estimate(scores, "iqm") == pytest.approx(0.35)
    assert point_estimate(scores, "mean") == pytest.approx(3.1 / 8)
    # 6 scores: int(0.25 * 6) = 1 cut at each end -> mean(1, 2, 3, 4) = 2.5 (scipy's rule)
    assert iqm([[10.0, 0.0, 3.0], [2.0, 4.0, 1.0]]) == pytest.approx(2.5)
    # an outlier moves the mean, not the IQM
    assert iqm([[0.5, 0.5], [0.5, 100.0]]) == pytest.approx(0.5)


def test_iqm_agrees_with_scipy_trim_mean():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    for shape in [(3, 10), (5, 7), (10, 50), (1, 1), (2, 3)]:
        scores = rng.random(shape)
        assert iqm(scores) == pytest.approx(stats.trim_mean(scores, 0.25, axis=None))


def test_bootstrap_ci_of_constant_matrix_is_the_point():
    scores = np.full((4, 3), 0.7)
    for stat in ("mean", "iqm"):
        low, high = stratified_bootstrap_ci(scores, stat, reps=500)
        assert low == pytest.approx(0.7, abs=1e-12)
        assert high == pytest.approx(0.7, abs=1e-12)


def test_bootstrap_resamples_seeds_within_each_task():
    # Each task column is constant over seeds, so any within-task resampling keeps every
    # statistic fixed; resampling across tasks (or whole rows of a transposed matrix) would not.
    scores = np.tile([0.0, 0.2, 0.9, 1.0], (5, 1))
    for stat in ("mean", "iqm"):
        point = point_estimate(scores, stat)
        low, high = stratified_bootstrap_ci(scores, stat, reps=300)
        assert low == pytest.approx(point, abs=1e-12) and high == pytest.approx(point, abs=1e-12)


def test_bootstrap_is_stratified_not_whole_seed_rows():
    # Seed 0 fails every task, seed 1 solves every task. Resampling whole seeds gives means in
    # {0, .5, 1} (CI [0, 1]); resampling seeds per task gives k/8 with P(k) = C(8, k) / 256,
    # whose 2.5 and 97.5 percentiles are 1/8 and 7/8.
    scores = np.array([[0.0] * 4, [1.0] * 4])
    low, high = stratified_bootstrap_ci(scores, "mean")
    assert low == pytest.approx(0.125) and high == pytest.approx(0.875)


def test_bootstrap_ci_contains_point_and_narrows_with_more_seeds():
    rng = np.random.default_rng(0)
    widths = {}
    for seeds in (3, 10, 40):
        scores = rng.beta(2, 2, size=(seeds, 10))
        for stat in ("mean", "iqm"):
            point = point_estimate(scores, stat)
            low, high = stratified_bootstrap_ci(scores, stat)
            assert low <= point <= high
            assert high > low
            widths[seeds, stat] = high - low
    for stat in ("mean", "iqm"):
        assert widths[3, stat] > widths[10, stat] > widths[40, stat]


def test_bootstrap_is_deterministic_and_seeded():
    scores = np.random.default_rng(1).random((5, 4))
    assert stratified_bootstrap_ci(scores, "iqm") == stratified_bootstrap_ci(scores, "iqm")
    assert stratified_bootstrap_ci(scores, "iqm", seed=1) != stratified_bootstrap_ci(scores, "iqm")


# ---- crafted runs ----------------------------------------------------------------------------


def _record(step: int, successes, suite: str = "mt10", returns=None) -> dict:
    returns = [100.0 * s for s in successes] if returns is None else returns
    per_task = {t: {"success": s, "return": r, "episodes": 4}
                for t, s, r in zip(TASKS, successes, returns, strict=True)}
    return {"step": step, "suite": suite, "updates": step, "deterministic": True,
            "mean_success": float(np.mean(successes)), "mean_return": 0.0, "per_task": per_task}


def _write_run(path, cfg, records, final=True):
    path.mkdir(parents=True)
    (path / "config.json").write_text(dumps(cfg))
    (path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if final:
        (path / "final.json").write_text(json.dumps(records[-1]))
    return path


def _fake_grid(root):
    grid = root / "grid"
    for preset, seeds in FINAL.items():
        for seed, final in seeds.items():
            cfg = get_preset(preset, seed=seed)
            records = [_record(0, (0.0, 0.0)), _record(500, (0.25 * seed, 0.5)),
                       _record(1000, final)]
            _write_run(grid / f"{preset}-s{seed}", cfg, records)
    return grid


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


@pytest.fixture(scope="module")
def grid_report(tmp_path_factory):
    grid = _fake_grid(tmp_path_factory.mktemp("report"))
    text = report([str(grid)], None)
    return grid, grid / "report", text


def test_grid_report_per_task_and_summary_means(grid_report):
    grid, out, text = grid_report
    assert (out / "report.md").read_text() == text
    assert "final checkpoint" in text
    summary_lines = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines()
                     if line.startswith("| mt10_")}
    per_task_rows = {line.split(" | ")[0].lstrip("| "): line.strip(" |").split(" | ")
                     for line in text.splitlines()
                     if line.startswith(("| reach-v3", "| push-v3", "| **mean over tasks"))}
    header = next(line for line in text.splitlines() if line.startswith("| task |"))
    methods = [c.rsplit(" (n=", 1)[0] for c in header.strip(" |").split(" | ")[1:]]
    assert sorted(methods) == sorted(FINAL) and "(n=3)" in header
    for col, method in enumerate(methods, 1):
        scores = np.array(list(FINAL[method].values()))
        for j, task in enumerate(TASKS):
            assert per_task_rows[task][col] == _pct(scores[:, j].mean())
        assert per_task_rows["**mean over tasks**"][col] == f"**{_pct(scores.mean())}**"
        cells = summary_lines[method].strip(" |").split(" | ")
        assert cells[1] == "3" and cells[2] == "1000"
        assert cells[3] == _pct(scores.mean())
        assert cells[5] == _pct(iqm(scores))

    # moore: scores 1, 1, 1, .5, .5, 0 -> mean 4/6; IQM drops one at each end -> (1+1+.5+.5)/4
    moore = np.array(list(FINAL["mt10_moore"].values()))
    assert moore.mean() == pytest.approx(4 / 6) and iqm(moore) == pytest.approx(0.75)

    with open(out / "per_task.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(TASKS) * len(FINAL)
    for row in rows:
        scores = np.array(list(FINAL[row["method"]].values()))[:, TASKS.index(row["task"])]
        assert row["seeds"] == "3"
        assert float(row["mean_pct"]) == pytest.approx(100 * scores.mean(), abs=1e-3)
        assert float(row["min_pct"]) == pytest.approx(100 * scores.min())
        assert float(row["max_pct"]) == pytest.approx(100 * scores.max())

    with open(out / "summary.csv") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    for method, seeds in FINAL.items():
        scores = np.array(list(seeds.values()))
        row = rows[method]
        assert row["kind"] == "ours" and row["seeds"] == "3" and row["final_step"] == "1000"
        assert float(row["mean_pct"]) == pytest.approx(100 * scores.mean(), abs=1e-3)
        assert float(row["iqm_pct"]) == pytest.approx(100 * iqm(scores), abs=1e-3)
        for stat in ("mean", "iqm"):
            low, high = stratified_bootstrap_ci(scores, stat)
            assert float(row[f"{stat}_ci_low_pct"]) == pytest.approx(100 * low, abs=1e-3)
            assert float(row[f"{stat}_ci_high_pct"]) == pytest.approx(100 * high, abs=1e-3)
            assert float(row[f"{stat}_ci_low_pct"]) <= float(row[f"{stat}_pct"]) <= float(
                row[f"{stat}_ci_high_pct"])


def test_reference_rows_for_the_reports_suite(grid_report):
    _, out, text = grid_report
    assert "| reference: MOORE (MOORE paper (10 seeds, 150-step episodes)) | 10 | - | 88.7 |" \
        in text
    assert "reference: MOORE (Meta-World+ (500-step, IQM 10 seeds)) | 10 | - | - |  | 83.2" \
        in text
    assert "72.9" not in text  # MT50's numbers stay out of an MT10 report
    with open(out / "summary.csv") as f:
        refs = [r for r in csv.DictReader(f) if r["kind"] == "reference"]
    assert {r["method"].split(" (")[0] for r in refs} == {
        "reference: MOORE", "reference: PaCo", "reference: Soft Modules", "reference: MTSAC",
        "reference: CARE"}
    assert all(r["method"].startswith("reference: ") for r in refs)
    assert all(r["source"] for r in refs)
    mt50 = {(r["method"], r["statistic"]): r["success_pct"] for r in load_references("mt50")
            if r["rewards"] == "v2"}
    assert mt50[("MOORE", "mean")] == 72.9 and mt50[("MOORE", "iqm")] == 72.0
    assert load_references("custom") == []


def test_latex_is_booktabs_and_escapes_underscores(grid_report):
    _, out, _ = grid_report
    for name in ("per_task.tex", "summary.tex"):
        tex = (out / name).read_text()
        assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
        assert "final checkpoint" in tex
        assert r"mt10\_moore" in tex and r"mt10\_mtsac" in tex
        body = tex.replace(r"\_", "")
        assert "_" not in body.replace(r"\label{tab:per_task}", "")
    assert r"reach-v3" in (out / "per_task.tex").read_text()
    assert latex_escape("a_b & 50% #1") == r"a\_b \& 50\% \#1"


def test_figures_are_written(grid_report):
    _, out, _ = grid_report
    for name in ("curves.png", "per_task.png"):
        data = (out / name).read_bytes()
        assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_is_deterministic_and_skips_its_own_output(grid_report, tmp_path):
    grid, _, text = grid_report
    # the grid now holds report/ (no config.json): it is skipped, not an error
    again = report([str(grid)], str(tmp_path / "again"))
    assert again == text
    assert (tmp_path / "again" / "summary.csv").read_text() == \
        (grid / "report" / "summary.csv").read_text()


def test_run_dirs_default_out_and_same_preset_labels(tmp_path, monkeypatch):
    base = get_preset("mt10_moore")
    v1 = dataclasses.replace(base, env=dataclasses.replace(base.env, reward_version="v1"))
    runs = []
    for cfg, name in ((base, "a"), (v1, "b")):
        for seed in (0, 1):
            runs.append(str(_write_run(tmp_path / "runs" / f"{name}{seed}",
                                       dataclasses.replace(cfg, seed=seed),
                                       [_record(0, (0.0, 0.0)), _record(10, (seed, 0.5))],
                                       final=seed == 0)))
    monkeypatch.chdir(tmp_path)
    text = report(runs, None)
    assert (tmp_path / "report" / "report.md").read_text() == text
    assert "mt10_moore [env.reward_version=v1] (n=2)" in text
    assert "mt10_moore [env.reward_version=v2] (n=2)" in text
    assert "incomplete: no final.json" in text


def test_single_seed_has_no_interval(tmp_path):
    run = _write_run(tmp_path / "r", get_preset("mt10_moore"), [_record(0, (1.0, 0.0))])
    text = report([str(run)], str(tmp_path / "out"))
    assert "n/a (1 seed)" in text


def test_return_metric_tables_use_returns_without_references(tmp_path):
    # returns (Meta-World scale) per seed x task; successes differ so a mix-up would show
    returns = {0: (900.0, 100.0), 1: (300.0, 600.0)}
    runs = [str(_write_run(tmp_path / f"r{seed}", get_preset("mt10_moore", seed=seed),
                           [_record(0, (0.0, 0.0), returns=(0.0, 0.0)),
                            _record(10, (1.0, 0.0), returns=ret)]))
            for seed, ret in returns.items()]
    text = report(runs, str(tmp_path / "out"), metric="return")
    # pooled 100, 300, 600, 900: int(0.25 * 4) = 1 cut at each end -> IQM (300 + 600) / 2
    with open(tmp_path / "out" / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["kind"] for r in rows] == ["ours"]  # MT10 has published rows: success only
    assert float(rows[0]["iqm_return"]) == pytest.approx(450.0)
    assert float(rows[0]["mean_return"]) == pytest.approx(475.0)
    with open(tmp_path / "out" / "per_task.csv") as f:
        per_task = {r["task"]: r for r in csv.DictReader(f)}
    assert float(per_task["reach-v3"]["mean_return"]) == pytest.approx(600.0)
    assert float(per_task["push-v3"]["max_return"]) == pytest.approx(600.0)
    assert "Metric: return" in text.splitlines()[2]
    assert "| mt10_moore | 2 | 10 | 475.000 |" in text and "| 450.000 |" in text
    assert "| reach-v3 | 600.000 |" in text and "| push-v3 | 350.000 |" in text
    assert "published reference numbers are success rates; not shown for --metric return" \
        in text
    assert "reference:" not in text and "success rate (%)" not in text
    for name in ("per_task.tex", "summary.tex"):
        tex = (tmp_path / "out" / name).read_text()
        assert r"\caption{Return" in tex and r"\%)" not in tex and "Reference" not in tex


def test_bad_metric_is_a_one_line_usage_error(tmp_path, capsys):
    from launch import main

    run = _write_run(tmp_path / "r", get_preset("mt10_moore"), [_record(0, (1.0, 0.0))])
    message = "unknown --metric 'x'; valid: success, return"
    with pytest.raises(UsageError) as err:
        report([str(run)], str(tmp_path / "out"), metric="x")
    assert str(err.value) == message
    assert main(["report", str(run), "--out", str(tmp_path / "out"), "--metric", "x"]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not (tmp_path / "out").exists()


# ---- bad input -------------------------------------------------------------------------------


def test_missing_path_raises_with_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(UsageError, match="does not exist") as err:
        report([str(missing)], str(tmp_path / "out"))
    assert str(missing) in str(err.value) and "\n" not in str(err.value)


def test_folder_without_runs_raises_with_path(tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    with pytest.raises(UsageError, match="neither a run directory") as err:
        report([str(empty)], str(tmp_path / "out"))
    assert str(empty) in str(err.value)
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    with pytest.raises(UsageError, match="not a directory") as err:
        report([str(afile)], str(tmp_path / "out"))
    assert str(afile) in str(err.value)
    with pytest.raises(UsageError, match="at least one"):
        report([], None)
    assert not (tmp_path / "out").exists()


def test_run_without_evals_raises_with_path(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(dumps(get_preset("mt10_moore")))
    with pytest.raises(UsageError, match="no eval.jsonl") as err:
        report([str(run)], str(tmp_path / "out"))
    assert str(run) in str(err.value)
    (run / "eval.jsonl").write_text("\n")
    with pytest.raises(UsageError, match="no evaluations") as err:
        report([str(run)], str(tmp_path / "out"))
    (run / "eval.jsonl").write_text("{not json\n")
    with pytest.raises(UsageError, match="line 1 is not valid JSON") as err:
        report([str(run)], str(tmp_path / "out"))
    assert str(run) in str(err.value)


def test_bad_config_raises_with_path(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{")
    (run / "eval.jsonl").write_text(json.dumps(_record(0, (0.0, 0.0))) + "\n")
    with pytest.raises(UsageError) as err:
        report([str(run)], str(tmp_path / "out"))
    assert str(run) in str(err.value)


def test_mixed_suites_raise(tmp_path):
    a = _write_run(tmp_path / "a", get_preset("mt10_moore"), [_record(0, (0.0, 0.0))])
    b = _write_run(tmp_path / "b", get_preset("mt50_moore"), [_record(0, (0.0, 0.0), "mt50")])
    with pytest.raises(UsageError, match="mix suites") as err:
        report([str(a), str(b)], str(tmp_path / "out"))
    assert str(a) in str(err.value) and str(b) in str(err.value)


def test_duplicate_seed_raises(tmp_path):
    a = _write_run(tmp_path / "a", get_preset("mt10_moore"), [_record(0, (0.0, 0.0))])
    b = _write_run(tmp_path / "b", get_preset("mt10_moore"), [_record(0, (1.0, 0.0))])
    with pytest.raises(UsageError, match="same config and seed"):
        report([str(a), str(b)], str(tmp_path / "out"))
    # the same directory named twice is one run, not a duplicate
    report([str(a), str(a)], str(tmp_path / "out"))


def test_offline_references_only_beside_offline_runs():
    from analysis.report import load_references

    offline = load_references("mt50", setting="offline")
    assert len(offline) == 14 and all(r["setting"] == "offline" for r in offline)
    assert {r["method"] for r in offline} >= {"HarmoDT-M (near-optimal data)",
                                              "MTBC (sub-optimal data)"}
    assert not any(r.get("setting") == "offline" for r in load_references("mt50"))
    assert load_references("mt10", setting="offline") == []


def test_default_output_folder_is_per_metric(tmp_path):
    grid = tmp_path / "grid"
    for seed in (0, 1):
        _write_run(grid / f"r{seed}", get_preset("mt10_moore", seed=seed),
                   [_record(0, (1.0, 0.0))])
    report([str(grid)])
    success = (grid / "report" / "summary.csv").read_text()
    report([str(grid)], metric="return")
    assert (grid / "report_return" / "summary.csv").is_file()
    assert (grid / "report" / "summary.csv").read_text() == success
