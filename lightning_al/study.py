"""``lightning-al study``: acquisition strategies x rounds m x seeds, each cell an ordinary fit run.

Cells run one after the other in this process, each in its own run folder
``checkpoints/<study>/<strategy>-m<m>-s<seed>``. Running the command again skips finished cells
and resumes an interrupted one (``--ckpt_path last``: its newest loadable checkpoint); ``--cell i``
runs only cell i, so that cells can be separate jobs (one per GPU, a cluster array job). With ``study.records_dir``
each finished cell's light records are copied there and a cell with records is never re-run. The report of every
finished cell is written at the end to ``reports/<study>`` (``<records_dir>/report`` with records), or later with
``lightning-al report``.
"""

from __future__ import annotations

from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import Namespace
from lightning.pytorch.cli import ArgsType, LightningArgumentParser

from lightning_al.cli import ActiveLearningCLI, HelpFormatter
from lightning_al.cli import main as fit
from lightning_al.run_folder import Status, run_dir_of, save_records
from lightning_al.run_folder import status as run_status
from lightning_al.study_grid import Cell, StudyGrid, cells

DESCRIPTION = """\
Run a grid of active-learning runs (study: strategies x rounds x seeds), each a `lightning-al fit` of the
config with the cell's strategy, loop.rounds and seed_everything; then write their report.

Every fit key (--config files, --trainer.devices=2, ...) goes to every cell. Several --config files
layer: later ones override, e.g.
  lightning-al study --config configs/llama-3.2-1b-instruct.yaml --config configs/study-llama-3.2-1b.yaml"""

#: The study command's own options (not fit keys), not passed to the cells: the grid's overrides and these.
GRID_OPTIONS = tuple(f.name for f in fields(StudyGrid))
OWN_OPTIONS = (*GRID_OPTIONS, "cell", "list", "report_dir", "no_report")


class StudyCLI(ActiveLearningCLI):
    """Parses ``lightning-al study``: every fit key (shared by the cells, checked before the first one runs), the
    typed ``study:`` grid and the command's own options. It instantiates nothing: each cell is a fit of its own."""

    def __init__(self, args: ArgsType = None) -> None:
        kwargs = {"prog": "lightning-al study", "description": DESCRIPTION, "formatter_class": HelpFormatter}
        super().__init__(args, run=False, parser_kwargs=kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        own = parser.add_argument_group("The study's own options (the cells get every other key)")
        own.add_argument("--name", type=str | None, default=None,
                         help="Override study.name (default: the last config file's name).")
        own.add_argument("--strategies", type=str, nargs="+", default=None,
                         help="Override study.strategies (random, entropy, ...).")
        own.add_argument("--rounds", type=int, nargs="+", default=None, help="Override study.rounds (the m values).")
        own.add_argument("--seeds", type=int, nargs="+", default=None, help="Override study.seeds.")
        own.add_argument("--records_dir", type=str | None, default=None, help="Override study.records_dir.")
        own.add_argument("--cell", type=int | None, default=None,
                         help="Run only this cell (0-based index in --list), e.g. one job of an array job.")
        own.add_argument("--list", action="store_true", help="List the cells and their status, run nothing.")
        own.add_argument("--report_dir", type=str | None, default=None,
                         help="Where the report goes (default: reports/<name>, or <records_dir>/report).")
        own.add_argument("--no_report", action="store_true", help="Do not write the report at the end.")

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        super().parse_arguments(parser, args)
        self.config.seed_everything = False  # nothing to seed here: each cell seeds itself (study.seeds)

    def before_instantiate_classes(self) -> None:
        """Nothing: each cell checks its own config."""

    def instantiate_classes(self) -> None:
        """Nothing: each cell instantiates its own run."""

    def grid(self) -> StudyGrid:
        """The config's ``study:`` section with the command line's overrides."""
        config = self.config
        grid = StudyGrid(**config.study.as_dict()) if config.study else StudyGrid()
        grid = replace(grid, **{key: config[key] for key in GRID_OPTIONS if config[key] is not None})
        if grid.name is None and config.get("config"):
            grid = replace(grid, name=Path(str(config.config[-1])).stem)
        if grid.name is None:
            raise ValueError("study.name: name the study (--name, study.name or a --config file)")
        return grid

    def cell_config(self, grid: StudyGrid, cell: Cell, status: Status) -> dict[str, Any]:
        """The ``fit`` config of a cell: the study's, with the cell's run name, strategy, m and seed."""
        config = self.config.clone()
        config.study = Namespace(**asdict(grid))  # the grid that ran, overrides included: kept in config.yaml
        dump = self.parser.dump(config, skip_none=False, skip_link_targets=True)
        args = {k: v for k, v in yaml.safe_load(dump).items() if k not in OWN_OPTIONS}
        args.update(run_name=f"{grid.name}/{cell.name}", seed_everything=cell.seed)
        args["loop"].update(strategy=cell.strategy, rounds=cell.rounds)
        if status == "interrupted":
            # The newest loadable checkpoint; a cell killed before its first one starts again, reusing its
            # partial scoring pass (see lightning_al.checkpointing.resolve_checkpoint).
            args["ckpt_path"] = "last"
        else:
            args["loop"]["overwrite"] = True
        return {"subcommand": "fit", "fit": args}


def statuses(grid: StudyGrid, grid_cells: list[Cell]) -> list[Status]:
    """Each cell's status; a cell whose light records are in ``records_dir`` is finished, and a finished run
    folder's records are copied there."""
    records = Path(grid.records_dir) if grid.records_dir else None
    result: list[Status] = []
    for cell in grid_cells:
        if records is not None and run_status(records / cell.name, cell.rounds) == "finished":
            result.append("finished")
            continue
        run_dir = run_dir_of(f"{grid.name}/{cell.name}")
        status = run_status(run_dir, cell.rounds)
        if status == "finished" and records is not None:
            save_records(run_dir, records / cell.name)
        result.append(status)
    return result


def main(args: ArgsType = None) -> list[Cell]:
    """Run (or list) the study's cells; returns the cells that ran."""
    cli = StudyCLI(args)
    config, grid = cli.config, cli.grid()
    grid_cells = cells(grid)
    if config.loop.budget is None:
        raise ValueError("loop.budget: every cell needs the number of examples to annotate (B); a study config "
                         "holding only its grid goes after its base: --config base.yaml --config study.yaml")
    done = statuses(grid, grid_cells)
    for i, (cell, status) in enumerate(zip(grid_cells, done)):
        print(f"[{i}] {grid.name}/{cell.name}: {status}")
    if config.list:
        return []
    if config.cell is not None and not 0 <= config.cell < len(grid_cells):
        raise ValueError(f"--cell {config.cell} is not in 0..{len(grid_cells) - 1}")
    records = Path(grid.records_dir) if grid.records_dir else None
    ran = []
    for i in [config.cell] if config.cell is not None else range(len(grid_cells)):
        cell = grid_cells[i]
        if done[i] == "finished":
            continue
        print(f"== Study {grid.name}: cell {i + 1}/{len(grid_cells)} {cell.name} ({done[i]})")
        fit(cli.cell_config(grid, cell, done[i]))
        run_dir = run_dir_of(f"{grid.name}/{cell.name}")
        if records is not None and run_status(run_dir, cell.rounds) == "finished":
            print(f"Records: {save_records(run_dir, records / cell.name)}")
        ran.append(cell)
    if config.cell is None and not config.no_report:
        from lightning_al.report.command import make_report  # (pandas and matplotlib: only when reporting)

        default_dir = records / "report" if records is not None else Path("reports") / grid.name
        sources = [str(records)] if records is not None else [run_dir_of(grid.name)]
        print(f"Report: {make_report(sources, config.report_dir or str(default_dir))}")
    return ran
