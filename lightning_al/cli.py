"""``lightning-al fit / validate / test / predict``: the LightningCLI of one active-learning run.

``lightning_al.commands`` dispatches these and the ``study`` and ``report`` commands.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import DefaultHelpFormatter, Namespace
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import Logger

from lightning_al.checkpointing import RunCheckpoint, resolve_checkpoint
from lightning_al.datamodule import ActiveLearningDataModule
from lightning_al.loop import ActiveLearningLoop
from lightning_al.model.loading import CHAR_TOKENIZER, check_pretrained
from lightning_al.module import LoRALanguageModel
from lightning_al.run_folder import CONFIG, run_dir_of, scores_path_of
from lightning_al.scoring.writer import ScoreWriter
from lightning_al.study_grid import StudyGrid

DESCRIPTION = """\
lightning-al: active learning for fine-tuning LLMs, as a PyTorch Lightning system.

commands:
  fit       run the m acquisition / retraining rounds of one run (resume: --ckpt_path last)
  validate  evaluate a run's adapter on the held-out split and data.evaluations
  test      the same, as Lightning's test loop
  predict   write the uncertainty scores of the unlabeled pool (scores.output_path)
  study     a grid of fit runs (strategies x m x seeds), one after the other, then its report
  report    tables, figures and report.md of finished runs

`lightning-al <command> --help` lists a command's options."""


class HelpFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """jsonargparse's help, with descriptions printed as written (the command table above)."""


def tokenizer_of(pretrained: str | None, tokenizer: str | None) -> str:
    return tokenizer or pretrained or CHAR_TOKENIZER


def max_epochs_of(rounds: int, epochs_per_round: int) -> int:
    return rounds * epochs_per_round


class RunConfigSaver(SaveConfigCallback):
    """Writes the resolved config into the run folder once the run has started, and leaves nothing behind when
    it has not.

    Lightning creates the loggers' folders before any ``setup`` hook, so the run's own checks (the budget
    against the pool, an earlier run in the run folder, the model loading) come after them: a run that stops
    before it started removes what it added to those folders. "Started" is this callback's ``on_fit_start``,
    which runs after the loop's (LightningCLI appends this callback last): the first round is acquired, or the
    run resumed. A refused run therefore never writes (nor rewrites an earlier run's) ``config.yaml``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.started = False
        #: Each logger folder: what it held before this run (None: it did not exist), and the parent folders the
        #: run would create (removed again when empty).
        self._held: dict[Path, set[Path] | None] = {}
        self._new_parents: set[Path] = set()

    def watch(self, loggers: Iterable[Logger]) -> None:
        """Remember what the loggers' folders hold; called by the CLI before the trainer runs."""
        for logger in loggers:
            if logger.log_dir is None:  # (wandb: a run folder of its own, named when it starts)
                continue
            folder = Path(logger.log_dir)
            self._held[folder] = set(folder.rglob("*")) if folder.exists() else None
            self._new_parents.update(parent for parent in folder.parents if not parent.exists())

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Nothing yet (Lightning saves here): the run's checks are still to come."""

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            self.save_config(trainer, pl_module, "fit")
        self.started = True

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        run_dir = Path(self.config.loop.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / CONFIG
        if trainer.ckpt_path is not None and path.is_file():
            # A relaunch may draw or pass another seed (`seed_everything: true` draws one per launch), but the
            # run goes on with its checkpoint's seed and RNG states: config.yaml keeps the first launch's, which
            # is the seed the report pairs runs on.
            first = yaml.safe_load(path.read_text()).get("seed_everything")
            if first is not None and first != self.config.seed_everything:
                warnings.warn(f"Resuming {run_dir}: it goes on with its checkpoint's seed; this launch's "
                              f"seed_everything={self.config.seed_everything} is not used ({path} keeps {first})",
                              stacklevel=1)
                self.config.seed_everything = first
        path.write_text(self.parser.dump(self.config, skip_none=False, skip_check=True))

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if self.started or not trainer.is_global_zero:
            return
        for folder, held in self._held.items():
            if held is None:
                shutil.rmtree(folder, ignore_errors=True)
                continue
            for path in sorted(set(folder.rglob("*")) - held, reverse=True):  # files before their folders
                path.rmdir() if path.is_dir() else path.unlink()
        for parent in sorted(self._new_parents, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):  # not empty: something else writes there now
                parent.rmdir()


class ActiveLearningCLI(LightningCLI):
    """The LightningCLI of a run: the model, the DataModule, the loop, checkpoints and the score writer."""

    def __init__(self, args: ArgsType = None, **kwargs: Any) -> None:
        kwargs.setdefault("parser_kwargs", {"prog": "lightning-al", "description": DESCRIPTION,
                                            "formatter_class": HelpFormatter})
        super().__init__(
            LoRALanguageModel,
            ActiveLearningDataModule,
            seed_everything_default=42,
            save_config_callback=RunConfigSaver,
            save_config_kwargs={"overwrite": True, "save_to_log_dir": False},
            # The module configures its own optimizer (model.optimizer), re-made every round.
            auto_configure_optimizers=False,
            args=args,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--run_name", type=str, default="demo",
            help="Name of the run: outputs go to checkpoints/<run_name> and TensorBoard logs to lightning_logs/<run_name>.",
        )
        parser.add_argument(
            "--study", type=StudyGrid | None, default=None,
            help="The grid of `lightning-al study` (strategies x rounds x seeds); ignored by fit / validate / test / "
                 "predict.",
        )
        parser.add_lightning_class_args(ActiveLearningLoop, "loop")
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.add_lightning_class_args(ScoreWriter, "scores")
        parser.set_defaults({"trainer.reload_dataloaders_every_n_epochs": 1})
        parser.link_arguments("run_name", "loop.run_dir", compute_fn=run_dir_of)
        parser.link_arguments("run_name", "checkpoint.dirpath", compute_fn=run_dir_of)
        parser.link_arguments(("loop.rounds", "loop.epochs_per_round"), "trainer.max_epochs", compute_fn=max_epochs_of)
        parser.link_arguments(("model.pretrained", "model.tokenizer"), "data.tokenizer", compute_fn=tokenizer_of)

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        # Lightning warns when ``args`` come while sys.argv holds others; `lightning-al study` does that on
        # purpose: it parses its own arguments and then each cell's.
        self.config = parser.parse_object(args) if isinstance(args, (dict, Namespace)) else parser.parse_args(args)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if self.subcommand == "fit" and config.loop.budget is None:
            raise ValueError("loop.budget: fit needs the number of examples to annotate (B), e.g. --loop.budget=1000")
        # A missing model folder or unknown hub id fails here, before the pool is loaded and tokenized.
        if config.model.pretrained:
            check_pretrained(config.model.pretrained, "model.pretrained", "model")
        if config.model.tokenizer:
            check_pretrained(config.model.tokenizer, "model.tokenizer", "tokenizer")
        if config.scores.output_path is None:
            config.scores.output_path = scores_path_of(config.run_name)
        if config.trainer.logger in (None, True):
            # A fixed folder per run name (no version_N), so a resumed run keeps writing to the same curves.
            config.trainer.logger = Namespace(
                class_path="lightning.pytorch.loggers.TensorBoardLogger",
                init_args=Namespace(save_dir="lightning_logs", name=config.run_name, version=""),
            )
        else:
            _default_logger_folders(config.trainer.logger, config.run_name)

    def _before_run(self) -> None:
        saver = next((c for c in self.trainer.callbacks if isinstance(c, RunConfigSaver)), None)
        if saver is not None:  # (none with trainer.fast_dev_run)
            saver.watch(self.trainer.loggers)
        # `--ckpt_path last` means this run folder's newest loadable checkpoint (past a corrupt
        # last.ckpt), or a fresh start when there is none yet: Lightning's own "last" knows neither.
        config = self.config_init[self.subcommand]
        if config.get("ckpt_path") is None:
            return
        config["ckpt_path"] = resolve_checkpoint(config.loop.run_dir, config["ckpt_path"])
        if config["ckpt_path"] is None and self.subcommand == "fit":
            # The run died before its first checkpoint: what it wrote is this same run's, to redo.
            loop = next(c for c in self.trainer.callbacks if isinstance(c, ActiveLearningLoop))
            loop.overwrite = True

    def before_fit(self) -> None:
        self._before_run()

    def before_validate(self) -> None:
        self._before_run()

    def before_test(self) -> None:
        self._before_run()

    def before_predict(self) -> None:
        self._before_run()


def _default_logger_folders(loggers: object, run_name: str) -> None:
    """Any other logger (CSVLogger, WandbLogger, ...) left at its defaults writes where TensorBoard would:
    ``lightning_logs/<run_name>`` (and, for wandb, a run named ``run_name``)."""
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        args = getattr(logger, "init_args", None)
        if args is None:
            continue
        if "save_dir" in args and args.save_dir in (None, "."):
            args.save_dir = "lightning_logs"
        if "name" in args and args.name in (None, "lightning_logs"):
            args.name = run_name
        if "version" in args and args.version is None and "offline" not in args:  # a wandb version is its run id
            args.version = ""


def main(args: ArgsType = None) -> ActiveLearningCLI:
    """Run ``lightning-al fit / validate / test / predict`` with ``args`` (default: sys.argv)."""
    # An evaluation set not due in a round gets an empty loader by design (it keeps its loader position:
    # ActiveLearningDataModule._evaluation_loaders); Lightning's warning of it is nothing to act on.
    warnings.filterwarnings("ignore", message=r"Total length of `DataLoader` across ranks is zero")
    return ActiveLearningCLI(args)
