"""``lightning-al report RUN_DIRS... [--out DIR]``: the tables, figures and report.md of a study's runs."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from lightning_al.report import plots
from lightning_al.report.paired import detectable, paired_table, seed_variance_table
from lightning_al.report.records import answered_table
from lightning_al.report.runs import Run, all_acquired, load_runs
from lightning_al.report.selection import overlap_summary, overlap_table, selection_summary
from lightning_al.report.tables import cost_table, final_long, main_metrics, mean_std, metrics_long, to_markdown

#: Figures a previous report may have left in out/plots (removed first so that none is stale).
_OWN_PLOTS = ("curve_*.png", "final_metrics.png", "task_composition.png", "score_distributions.png", "lengths.png")


def _how(text: str) -> str:
    return f"_How to read: {text}_\n"


#: A figure ``make_report(plots_wanted=False)`` did not draw, as against ``None``: nothing to draw.
NOT_DRAWN = False


def _image(path: Path | None | bool, out: Path, alt: str, missing: str) -> str:
    if path is NOT_DRAWN:
        return f"_Figure not drawn ({alt}): the report was made with --no_plots._\n"
    if path is None:
        return f"_Skipped figure ({alt}): {missing}._\n"
    return f"![{alt}]({path.relative_to(out).as_posix()})\n"


def _runs_section(runs: Sequence[Run]) -> list[str]:
    rows = [{
        "run": r.name, "strategy": r.strategy, "m": r.rounds, "seed": r.seed, "budget": r.budget,
        "retraining": r.retraining, "rounds done": r.rounds_done,
        "status": "finished" if r.finished else f"**unfinished** ({r.rounds_done}/{r.rounds} rounds)",
        "path": str(r.path),
    } for r in runs]
    unfinished = [r.name for r in runs if not r.finished]
    note = (f"Unfinished runs: {', '.join(unfinished)}. They appear in the curves and selection tables, "
            "not in the final metrics nor the overlaps.\n" if unfinished else "All runs finished.\n")
    return ["## Runs included\n", _how("one row per run directory; m = rounds, the budget B is split over them."),
            to_markdown(pd.DataFrame(rows)) + "\n", note]


def _final_section(final: pd.DataFrame, figure: Path | None | bool, out: Path) -> list[str]:
    lines = ["## Final metrics by strategy × m\n",
             _how("value after the last round (all B examples labeled), finished runs only; mean ± sample std "
                  "over seeds, n = number of seeds. Lower is better for loss and perplexity, higher for "
                  "accuracy and exact match.")]
    if final.empty:
        return [*lines, "_No finished run has metrics._\n"]
    for evaluation, part in final.groupby("evaluation", sort=False):
        rows = []
        for strategy, m in part[["strategy", "m"]].drop_duplicates().itertuples(index=False):
            cell = part[(part["strategy"] == strategy) & (part["m"] == m)]
            rows.append({"strategy": strategy, "m": m, "n": int(cell["n"].max()),
                         **{row.metric: mean_std(row.mean, row.std) for row in cell.itertuples()}})
        lines += [f"### {evaluation}\n", to_markdown(pd.DataFrame(rows)) + "\n"]
    return [*lines, _image(figure, out, "final metrics", "no final metrics")]


def _many_looks(paired: pd.DataFrame) -> list[str]:
    """How many of the main metrics' intervals exclude 0, against how many would by chance, and which calls
    survive Holm's correction over all of them."""
    main = paired[paired["p_holm"].notna()]  # Holm's family (``paired_table``): the main metrics' comparisons
    if main.empty:
        return []
    calls = int(((main["low"] > 0) | (main["high"] < 0)).sum())
    kept = main[main["p_holm"] < 0.05]
    named = [f"- {r.group}: {r.comparison}, {r.key} (p_holm {'< 0.001' if r.p_holm < 0.001 else f'{r.p_holm:.2g}'})"
             for r in kept.itertuples()]
    return ["### Many comparisons at once\n",
            _how("a 95% interval excludes 0 by chance once in 20 comparisons; Holm's correction (paired.csv: p, p_holm) "
                 "keeps the calls that have a 5% chance at most that any of them is wrong when nothing differs."),
            f"{len(main)} intervals of the main metrics (micro averages aside): about {0.05 * len(main):.1f} would "
            f"exclude 0 by chance; {calls} do. Kept by Holm's correction over all {len(main)}:"
            + ("\n\n" + "\n".join(named) + "\n" if named else " none.\n")]


def _paired_section(paired: pd.DataFrame, detect: pd.DataFrame, spread: pd.DataFrame, pooled: bool) -> list[str]:
    seeds = ("a training run's variance pooled over every cell of the study (next table) for cells that share "
             "seeds and so pair (`--seed_variance pooled`: this assumes a run varies alike in every cell), the "
             "cells' own for the others" if pooled else
             "the seeds' own (per-seed differences when the cells share seeds, which then pair), or for two runs of "
             "the same seed, which have none, a run's variance pooled over the study's cells (next table)")
    lines = ["## Paired comparisons\n",
             _how("A − B of each main metric after the last round, on the evaluation examples every run of both "
                  "cells answered (per-example records in each run's evaluations/), as the mean over seeds: estimate "
                  "[95% interval]. The interval adds two variances: a paired bootstrap over the examples (resampled "
                  f"within tasks) and {seeds}, with a t quantile for their degrees of freedom (paired.csv: "
                  "se_examples, se_seeds, df, seed_variance). Without any cell of several seeds it shows the "
                  "examples' noise only, not a new training run's. \"within noise\": the interval contains 0. Lower is better for the "
                  "loss.")]
    if not spread.empty:
        lines += ["### How much a training run moves each metric\n",
                  _how("the standard deviation of one run's value (seed_variance.csv): pooled over the study's cells "
                       "about the fit cell + seed, with its degrees of freedom, beside the smallest and largest sd of "
                       "a single cell of several runs about its mean. "
                       + ("Every paired interval uses the pooled one (`--seed_variance pooled`)." if pooled else
                          "Only runs without a seed variance of their own use it; `--seed_variance pooled` uses it "
                          "for every paired comparison (narrower intervals, if a run varies alike in every cell).")),
                  to_markdown(spread) + "\n"]
    if paired.empty:
        lines.append("_No comparison: it needs finished runs of two cells (two m values of a strategy, or a strategy "
                     "and random at the same m) with per-example records of their last round (evaluations/)._\n")
    shown = {"key": "metric", "examples": "examples", "seeds_a": "seeds A", "seeds_b": "seeds B",
             "difference": "A − B [95% interval]", "call": "verdict"}
    titles = {"m": "### m values of the same strategy\n",
              "strategy": "### Each strategy against random at the same m\n"}
    for kind, title in titles.items():
        part = paired[paired["kind"] == kind]
        if part.empty:
            continue
        lines.append(title)
        for (group, comparison), rows in part.groupby(["group", "comparison"], sort=False):
            table = rows[list(shown)].rename(columns=shown)
            lines += [f"**{group}: {comparison}** (A − B)\n", to_markdown(table) + "\n"]
    lines += _many_looks(paired)
    if detect.empty:
        return lines
    lines += ["### Smallest detectable difference\n",
              _how("the smallest true difference each metric detects 5% two-sided with 80% power: from two "
                   "independent samples of its size at its mean rate (right / wrong metrics), and from this study's "
                   "paired comparisons (2.80 × their median standard error: the examples' bootstrap, plus the seeds' "
                   "variance where cells have several seeds). Smaller differences are likely to be called within "
                   "noise."),
              to_markdown(detect) + "\n"]
    return lines


def _answered_section(answered: pd.DataFrame) -> list[str]:
    if answered.empty:
        return []
    rows = []
    for (name, strategy, m), cell in answered.groupby(["set", "strategy", "m"], sort=False):
        share, right = cell["answered_share"], cell["right_when_answered"]
        rows.append({"set": name, "strategy": strategy, "m": m, "n": len(cell),
                     "answered": mean_std(share.mean(), share.std(), 3),
                     "per seed": " / ".join(str(a) for a in cell["answered"]) + f" of {cell['examples'].max()}",
                     "right when answered": mean_std(right.mean(), right.std(), 3)})
    return ["### Generations that end in an answer\n",
            _how("share of the last round's generations whose answer the extraction can read (mean ± std over "
                 "seeds; answered.csv per run), and how many of those are right. Exact match counts an unread "
                 "answer as wrong, so a difference in exact match with an equal difference here is about finishing "
                 "the chain of thought, not reasoning."),
            to_markdown(pd.DataFrame(rows).sort_values("set", kind="stable")) + "\n"]


def _cost_section(cost: pd.DataFrame) -> list[str]:
    lines = ["## Cost per cell\n", _how("cumulative cost at the end of each run's last round: tokens scored by "
                                        "the acquisition passes, tokens trained on, wall-clock seconds.")]
    if cost.empty:
        return [*lines, "_No cost rows in the runs' metrics._\n"]
    return [*lines, to_markdown(cost.drop(columns=["run"])) + "\n"]


def _overlap_lines(summary: pd.DataFrame, kind: str, group: str) -> str:
    part = summary[summary["kind"] == kind]
    if part.empty:
        return "_No pair of finished runs to compare._\n"
    rows = [{group: r.group, "pair": r.pair, "Jaccard": mean_std(r.jaccard_mean, r.jaccard_std, 3), "n seeds": r.n_seeds}
            for r in part.itertuples()]
    return to_markdown(pd.DataFrame(rows)) + "\n"


def _selection_section(runs: Sequence[Run], summary: pd.DataFrame, overlap: pd.DataFrame,
                       figures: dict[str, Path | None], out: Path) -> list[str]:
    final = summary[summary["scope"] == "final"] if not summary.empty else summary
    how_overlap = ("Jaccard |A∩B| / |A∪B| of the final acquired id sets of two runs with the same seed; "
                   "1 = the same examples, 0 = disjoint; mean ± std over seeds.")
    lines = ["## Data selection\n", "### Overlap between m values\n", _how(how_overlap),
             _overlap_lines(overlap, "m", "strategy"), "### Overlap between strategies\n", _how(how_overlap),
             _overlap_lines(overlap, "strategy", "m"), "### Task mix\n",
             _how("task entropy (nats) of the final acquired set; the maximum, ln(number of tasks), is a uniform "
                  "mix, lower values mean the strategy concentrated on a few tasks.")]
    ident = ["strategy", "m", "seed"]
    if final.empty:
        return [*lines, "_No acquired examples._\n"]
    marks = final["finished"].map({True: "", False: " (unfinished)"})
    final = final.assign(seed=final["seed"].astype(str) + marks)
    lines += [to_markdown(final[[*ident, "n", "tasks", "task_entropy"]]) + "\n",
              _image(figures["tasks"], out, "task composition", "no task column"),
              "### Lengths\n", _how("prompt / response tokens of the final acquired sets (mean, median)."),
              to_markdown(final[[*ident, "prompt_tokens_mean", "prompt_tokens_median", "response_tokens_mean",
                                 "response_tokens_median"]]) + "\n",
              _image(figures["lengths"], out, "lengths", "no length columns"),
              "### Scores of acquired examples\n",
              _how("each uncertainty strategy's own score over the examples it acquired, per round "
                   "(random sampling has no score)."),
              _image(figures["scores"], out, "score distributions", "no uncertainty-strategy run has scores"),
              "### Diversity\n",
              _how("mean pairwise cosine distance of the initial model's mean-pooled hidden states over a "
                   "sample of the final labeled set (diversity) and of each round's acquired set (mean over rounds); "
                   "higher = more varied examples.")]
    if final["diversity"].notna().any():
        per_round = summary[summary["scope"] == "round"].groupby("run")["diversity"].mean()
        table = final.assign(**{"diversity of rounds (mean)": final["run"].map(per_round)})
        lines.append(to_markdown(table[[*ident, "diversity", "diversity of rounds (mean)"]]) + "\n")
    else:
        lines.append("_No `selection` rows in the runs' metrics: diversity was not measured._\n")
    return lines


def make_report(run_dirs: Sequence[str | Path], out: str | Path, seed_variance: str = "comparison",
                plots_wanted: bool = True) -> Path:
    """Write the study's report into ``out`` and return the path of ``out/report.md``.

    Files: report.md, metrics.csv, acquired.csv, overlap.csv, selection.csv, cost.csv, final.csv, paired.csv,
    seed_variance.csv, detectable.csv, answered.csv and the PNGs under ``out/plots/``. ``run_dirs`` may list run
    directories or folders of them (see ``load_runs``). ``seed_variance``: the training runs' variance in the paired
    intervals, ``comparison`` (each comparison's own runs; lone runs of one seed the study's pooled one) or
    ``pooled`` (the study's pooled one for every comparison of cells that pair). ``plots_wanted=False`` draws no
    figure (the tables and report.md are the same; drawing is most of a large study's report time).
    """
    if seed_variance not in ("comparison", "pooled"):
        raise ValueError(f"seed_variance must be 'comparison' or 'pooled', not {seed_variance!r}")
    runs = load_runs(run_dirs)
    out = Path(out)
    plot_dir = out / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    for pattern in _OWN_PLOTS:
        for stale in plot_dir.glob(pattern):
            stale.unlink()

    long, final = metrics_long(runs), final_long(runs)
    overlap, summary, cost = overlap_table(runs), selection_summary(runs), cost_table(runs)
    long.to_csv(out / "metrics.csv", index=False)
    all_acquired(runs).to_csv(out / "acquired.csv", index=False)
    overlap.to_csv(out / "overlap.csv", index=False)
    summary.to_csv(out / "selection.csv", index=False)
    cost.to_csv(out / "cost.csv", index=False)
    final.to_csv(out / "final.csv", index=False)
    spread, pooled = seed_variance_table(runs)
    paired = paired_table(runs, pooled=pooled, always_pooled=seed_variance == "pooled")
    detect = detectable(runs, paired)
    paired.to_csv(out / "paired.csv", index=False)
    spread.to_csv(out / "seed_variance.csv", index=False)
    detect.to_csv(out / "detectable.csv", index=False)
    answered = answered_table(runs)
    answered.to_csv(out / "answered.csv", index=False)

    if plots_wanted:
        curves = plots.plot_learning_curves(main_metrics(long), plot_dir)
        figures = {"tasks": plots.plot_task_composition(runs, plot_dir), "lengths": plots.plot_lengths(runs, plot_dir),
                   "scores": plots.plot_score_distributions(runs, plot_dir),
                   "final": plots.plot_final_metrics(final, plot_dir)}
    else:
        curves, figures = [], dict.fromkeys(("tasks", "lengths", "scores", "final"), NOT_DRAWN)
    intro = (f"{len(runs)} runs, {sum(r.finished for r in runs)} finished. Tables: metrics.csv (every metric of "
             "every round), final.csv, paired.csv, seed_variance.csv, detectable.csv, answered.csv, cost.csv, "
             f"overlap.csv, selection.csv, acquired.csv; {'figures in plots/' if plots_wanted else 'no figures'}.\n")
    lines = ["# Active-learning report\n", intro]
    lines += _runs_section(runs)
    lines += _final_section(final, figures["final"], out)
    lines += _paired_section(paired, detect, spread, seed_variance == "pooled")
    lines += _answered_section(answered)
    lines += ["## Learning curves\n", _how("each main metric against the number of labeled examples, one line "
                                           "per strategy and m (mean over seeds, band = ± std).")]
    lines += [_image(p, out, p.stem, "") for p in curves] or [
        "_Skipped: no per-round metrics._\n" if plots_wanted else _image(NOT_DRAWN, out, "learning curves", "")]
    lines += _cost_section(cost)
    lines += _selection_section(runs, summary, overlap_summary(overlap), figures, out)
    report = out / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    return report


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``lightning-al report``; prints where the report is."""
    parser = argparse.ArgumentParser(
        prog="lightning-al report",
        description="Tables, figures and a Markdown report of active-learning runs (computed from their files).",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIRS",
                        help="run directories (with config.yaml and rounds/) or folders that contain them")
    parser.add_argument("--out", help="output folder (default: reports/<name of the first RUN_DIRS folder>, e.g. "
                        "reports/mini for checkpoints/mini, so that each study's report has its own folder)")
    parser.add_argument("--seed_variance", choices=["comparison", "pooled"], default="comparison",
                        help="the training runs' variance in the paired intervals: each comparison's own runs (two "
                        "runs of one seed: the study's pooled variance), or pooled over every cell of the study "
                        "for every comparison of cells that pair (more degrees of freedom; assumes a run varies "
                        "alike in every cell) (default: %(default)s)")
    parser.add_argument("--no_plots", action="store_true",
                        help="write the tables and report.md without drawing the figures (faster)")
    args = parser.parse_args(argv)
    out = args.out or str(Path("reports") / Path(args.run_dirs[0]).resolve().name)
    try:
        report = make_report(args.run_dirs, out, seed_variance=args.seed_variance, plots_wanted=not args.no_plots)
    except (FileNotFoundError, ValueError) as err:
        parser.exit(1, f"{parser.prog}: error: {err}\n")
    print(f"Report written to {report} (tables{'' if args.no_plots else ' and plots/'} beside it)")
