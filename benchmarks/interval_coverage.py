"""How often the report's paired intervals hold 0 when there is no difference, and how wide they are.

    OMP_NUM_THREADS=1 python benchmarks/interval_coverage.py                 # ~3 min on one core
    python benchmarks/interval_coverage.py --studies 200 --seeds 3

Simulated studies of the CPU study's shape (random / entropy / confidence × m = 1, 2, every cell on the
same seeds, 400 evaluation examples in 4 tasks), with no true difference between any cells. Each run's
per-example values are the example's difficulty plus a seed effect shared by every cell's run of that
seed (the seed fixes LoRA's initialisation and the data order), plus the run's own training noise
(``--training-sd`` levels; a right / wrong metric takes them on the logit, times 4), plus each example's
own noise. ``heterogeneous`` gives random's cells 3x the training noise of the others (their data change
with the seed). Every comparison of ``cell_pairs`` (7 here) is made with each seed-variance mode of
``lightning-al report``: ``comparison`` (each comparison's own runs, the default) and ``pooled`` (over the
study's cells). Printed and written to ``benchmarks/results/interval-coverage.md``: the share of intervals
that hold 0 (target 0.95), also for the comparisons with random alone (the noisy cells when noise is not
alike), and the median width relative to the ``comparison`` mode's, all from one run.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lightning_al.report.bootstrap import paired_difference, pool
from lightning_al.report.paired import cell_pairs
from lightning_al.report.records import aggregate

CELLS = [(s, m) for s in ("random", "entropy", "confidence") for m in (1, 2)]
TASKS = np.repeat(list("abcd"), 100)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def simulate(rng: np.random.Generator, kind: str, seeds: int, training_sd: float, heterogeneous: bool) -> dict:
    """(num, den) of shape (seeds, n) for every cell of one study without any true difference."""
    n = len(TASKS)
    difficulty = rng.gamma(2.0, 1.0, n) if kind == "loss" else rng.normal(0, 1.5, n)
    seed_effect = rng.normal(0, training_sd, (seeds, 1))
    study = {}
    for cell in CELLS:
        sd = training_sd * (3 if heterogeneous and cell[0] == "random" else 1)
        shift = seed_effect + rng.normal(0, sd, (seeds, 1))
        if kind == "loss":
            num = difficulty + shift + rng.normal(0, 0.1, (seeds, n))
        else:
            num = (rng.random((seeds, n)) < sigmoid(difficulty + 4 * shift)).astype(float)
        study[cell] = (num, np.ones_like(num))
    return study


def run_setting(rng, kind, seeds, training_sd, heterogeneous, studies, replicates) -> dict[str, tuple[float, float]]:
    held = {"comparison": [], "pooled": []}
    widths = {"comparison": [], "pooled": []}
    with_random = {"comparison": [], "pooled": []}
    for study_index in range(studies):
        study = simulate(rng, kind, seeds, training_sd, heterogeneous)
        values = [np.array([aggregate(num[i], den[i], TASKS, False) for i in range(seeds)])
                  for num, den in study.values()]
        pooled = pool(values, [list(range(seeds))] * len(CELLS))
        for _, _, _, cell_a, cell_b in cell_pairs(CELLS):
            for mode, shares in held.items():
                d = paired_difference(study[cell_a], study[cell_b], TASKS, False, list(range(seeds)),
                                      list(range(seeds)), replicates=replicates, seed=study_index, pooled=pooled,
                                      always_pooled=mode == "pooled")
                shares.append(d.low < 0 < d.high)
                widths[mode].append(d.high - d.low)
                if "random" in (cell_a[0], cell_b[0]):
                    with_random[mode].append(d.low < 0 < d.high)
    base = np.median(widths["comparison"])
    return {mode: (float(np.mean(shares)), float(np.mean(with_random[mode])), float(np.median(widths[mode]) / base))
            for mode, shares in held.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=100, help="simulated studies per setting")
    parser.add_argument("--seeds", type=int, nargs="+", default=[2, 3], help="seeds per cell")
    parser.add_argument("--training-sd", type=float, nargs="+", default=[0.0, 0.02, 0.05],
                        help="sd of a training run's shift of the metric (loss units)")
    parser.add_argument("--replicates", type=int, default=200, help="bootstrap replicates per interval")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "interval-coverage.md"))
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    rows = [("| metric | seeds | training sd | noise alike in every cell | held 0: comparison (with random) | "
             "held 0: pooled (with random) | width pooled / comparison |"), "|---|---:|---:|---|---:|---:|---:|"]
    for kind in ("loss", "right/wrong"):
        for seeds in args.seeds:
            for training_sd in args.training_sd:
                for heterogeneous in (False, True) if training_sd > 0 else (False,):
                    result = run_setting(rng, kind, seeds, training_sd, heterogeneous, args.studies, args.replicates)
                    own, pooled = result["comparison"], result["pooled"]
                    row = (f"| {kind} | {seeds} | {training_sd} | {'no (random 3x)' if heterogeneous else 'yes'} | "
                           f"{own[0]:.3f} ({own[1]:.3f}) | {pooled[0]:.3f} ({pooled[1]:.3f}) | {pooled[2]:.2f} |")
                    rows.append(row)
                    print(row, flush=True)
    header = ["# Interval coverage (simulated studies, no true difference)\n",
              (f"{args.studies} studies per row × 7 comparisons each; 6 cells, 400 examples in 4 tasks, "
               f"{args.replicates} bootstrap replicates; python {platform.python_version()}; "
               f"{time.perf_counter() - start:.0f} s. Command: `python benchmarks/interval_coverage.py "
               f"{' '.join(argv or sys.argv[1:])}`.\n"),
              ("Held 0: share of intervals that contain 0 (target 0.95), in brackets of the 4 comparisons with random "
               "of the 7. Width: median 95% interval width of the pooled mode over the comparison mode's. The 7 "
               "comparisons of a study share its examples and runs, so a share varies by about ±0.02-0.03 from one "
               "run of this script to another.\n")]
    Path(args.output).write_text("\n".join(header + rows) + "\n", encoding="utf-8")
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
