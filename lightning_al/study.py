"""``lightning-al study``: acquisition strategies × rounds m × seeds, each cell an ordinary fit run.

Cells run one after the other in this process, each in its own run directory
``checkpoints/<study>/<strategy>-m<m>-s<seed>``. Running the command again skips finished cells
and resumes an interrupted one (``--ckpt_path last``: its newest loadable checkpoint); ``--cell i``
runs only cell i, so that cells can be separate jobs (one per GPU, a cluster array job). The report of every finished
cell is written to ``reports/<study>`` at the end (or later with ``lightning-al report``).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from lightning_al import checkpointing
from lightning_al.cli import main as fit_main
from lightning_al.run_folder import run_dir_of, save_records
from lightning_al.run_folder import status as cell_status
from lightning_al.strategies import REGISTRY, strategy_from_name


@dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    strategy: str
    rounds: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.strategy.rsplit('.', 1)[-1]}-m{self.rounds}-s{self.seed}"

    @property
    def loop_strategy(self) -> str:
        """The ``--loop.strategy`` value: a short name of the registry (the loop resolves it) or a class path."""
        return self.strategy


def grid(strategies: Sequence[str], rounds: Sequence[int], seeds: Sequence[int]) -> list[Cell]:
    """Every (strategy, m, seed), seeds outermost: a study cut short still has every (strategy, m) cell of
    its first seeds, so that its comparisons are paired."""
    for strategy in strategies:
        try:
            strategy_from_name(strategy)
        except ValueError:
            raise ValueError(f"study.strategies: unknown strategy {strategy!r}; use one of {list(REGISTRY)} "
                             "or a class path") from None
    if not strategies or not rounds or not seeds:
        raise ValueError("study: strategies, rounds and seeds must each hold at least one value")
    if any(m < 1 for m in rounds):
        raise ValueError(f"study.rounds: every m must be >= 1, got {list(rounds)}")
    return [Cell(s, m, seed) for seed, s, m in itertools.product(seeds, strategies, rounds)]


def cell_args(config: str, study: str, cell: Cell, status: str, overrides: Sequence[str]) -> list[str]:
    """The ``lightning-al fit`` arguments of a cell."""
    run_name = f"{study}/{cell.name}"
    # The cell's own keys come last: they win over the same keys among the overrides.
    args = ["fit", f"--config={config}", *overrides, f"--run_name={run_name}", f"--loop.strategy={cell.loop_strategy}",
            f"--loop.rounds={cell.rounds}", f"--seed_everything={cell.seed}"]
    if status == "interrupted":
        # The newest loadable checkpoint; a cell killed before its first one starts again, reusing its
        # partial scoring pass (see lightning_al.checkpointing.resolve_checkpoint).
        return [*args, "--ckpt_path=last"]
    return [*args, "--loop.overwrite=true"]


@contextlib.contextmanager
def _own_argv():
    # LightningCLI warns when given args while sys.argv holds others (the study's own); a cell stopped
    # by a signal still prints the study's own command as the one that resumes.
    saved = sys.argv
    sys.argv = saved[:1]
    checkpointing.RESUME_ARGV = saved
    try:
        yield
    finally:
        sys.argv = saved
        checkpointing.RESUME_ARGV = None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-al study",
        description="Run a grid of active-learning runs (strategies x rounds x seeds), then report them. "
        "Arguments after the options (e.g. --trainer.devices=2) go to every `fit`.",
    )
    parser.add_argument("--config", required=True, help="A fit config with a `study:` section (the grid).")
    parser.add_argument("--name", help="Study name: runs go to checkpoints/<name>/ (default: study.name).")
    parser.add_argument("--strategies", nargs="+", help="Override study.strategies (random, entropy, ...).")
    parser.add_argument("--rounds", nargs="+", type=int, help="Override study.rounds (the m values).")
    parser.add_argument("--seeds", nargs="+", type=int, help="Override study.seeds.")
    parser.add_argument("--cell", type=int, help="Run only this cell (0-based index in --list), e.g. an array job.")
    parser.add_argument("--list", action="store_true", help="List the cells and their status, run nothing.")
    parser.add_argument("--records_dir", help="Keep each finished cell's light records (config, rounds, metrics, "
                        "per-example evaluations) in <records_dir>/<cell>; a cell whose records are there is "
                        "finished and never re-run, and the report reads them (default: study.records_dir).")
    parser.add_argument("--report_dir", help="Where the report goes (default: reports/<name>, or "
                        "<records_dir>/report with records).")
    parser.add_argument("--no_report", action="store_true", help="Do not write the report at the end.")
    return parser


def main(argv: Sequence[str] | None = None) -> list[Cell]:
    """Run (or list) the study's cells; returns the cells that ran."""
    options, overrides = _parser().parse_known_args(argv)
    if any(not o.startswith("--") for o in overrides):
        raise SystemExit(f"lightning-al study: unexpected arguments {overrides}; fit overrides look like --key=value")
    config_path = Path(options.config)
    if not config_path.is_file():
        raise SystemExit(f"lightning-al study: config {config_path} not found")
    spec = (yaml.safe_load(config_path.read_text()) or {}).get("study") or {}
    name = options.name or spec.get("name") or config_path.stem
    cells = grid(options.strategies or spec.get("strategies", ["random"]), options.rounds or spec.get("rounds", [1]),
                 options.seeds or spec.get("seeds", [0]))
    records = options.records_dir or spec.get("records_dir")
    records_root = Path(records) if records else None
    statuses = []
    for cell in cells:
        run_dir = Path(run_dir_of(f"{name}/{cell.name}"))
        if records_root is not None and cell_status(records_root / cell.name, cell.rounds) == "finished":
            statuses.append("finished")
            continue
        status = cell_status(run_dir, cell.rounds)
        if status == "finished" and records_root is not None:
            save_records(run_dir, records_root / cell.name)
        statuses.append(status)
    for i, (cell, status) in enumerate(zip(cells, statuses)):
        print(f"[{i}] {name}/{cell.name}: {status}")
    if options.list:
        return []
    if options.cell is not None and not 0 <= options.cell < len(cells):
        raise SystemExit(f"lightning-al study: --cell {options.cell} is not in 0..{len(cells) - 1}")
    chosen = [options.cell] if options.cell is not None else range(len(cells))
    ran = []
    for i in chosen:
        if statuses[i] == "finished":
            continue
        print(f"== Study {name}: cell {i + 1}/{len(cells)} {cells[i].name} ({statuses[i]})")
        with _own_argv():
            fit_main(cell_args(str(config_path), name, cells[i], statuses[i], overrides))
        if records_root is not None:
            run_dir = Path(run_dir_of(f"{name}/{cells[i].name}"))
            if cell_status(run_dir, cells[i].rounds) == "finished":
                print(f"Records: {save_records(run_dir, records_root / cells[i].name)}")
        ran.append(cells[i])
    if options.cell is None and not options.no_report:
        from lightning_al.report.command import make_report

        default_dir = records_root / "report" if records_root is not None else Path("reports") / name
        sources = [str(records_root)] if records_root is not None else [run_dir_of(name)]
        report = make_report(sources, options.report_dir or str(default_dir))
        print(f"Report: {report}")
    return ran
