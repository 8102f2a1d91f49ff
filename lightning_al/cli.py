"""``lightning-al``: the LightningCLI of the system (fit / validate / test / predict), plus the
``study`` (a grid of runs) and ``report`` (tables and plots of finished runs) commands."""

from __future__ import annotations

import sys
from pathlib import Path

from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightning_al.checkpointing import RunCheckpoint, resolve_checkpoint
from lightning_al.datamodule import ActiveLearningDataModule
from lightning_al.loop import ActiveLearningLoop
from lightning_al.model.loading import CHAR_TOKENIZER, check_pretrained
from lightning_al.module import LoRALanguageModel
from lightning_al.run_folder import CONFIG, run_dir_of, scores_path_of
from lightning_al.scoring.writer import ScoreWriter


def tokenizer_of(pretrained: str | None, tokenizer: str | None) -> str:
    return tokenizer or pretrained or CHAR_TOKENIZER


def max_epochs_of(rounds: int, epochs_per_round: int) -> int:
    return rounds * epochs_per_round


class RunConfigSaver(SaveConfigCallback):
    """Also keeps the resolved config in the run folder, beside the rounds it produced."""

    def save_config(self, trainer, pl_module, stage: str) -> None:
        run_dir = Path(self.config.loop.run_dir)
        if trainer.is_global_zero and stage == "fit":
            run_dir.mkdir(parents=True, exist_ok=True)
            text = self.parser.dump(self.config, skip_none=False, skip_check=True)
            (run_dir / CONFIG).write_text(text)


class ActiveLearningCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--run_name", type=str, default="demo",
            help="Name of the run: outputs go to checkpoints/<run_name> and TensorBoard logs to lightning_logs/<run_name>.",
        )
        parser.add_argument(
            "--study", type=dict | None, default=None,
            help="The grid of `lightning-al study` (strategies, rounds, seeds, name); ignored by fit / validate / test.",
        )
        parser.add_lightning_class_args(ActiveLearningLoop, "loop")
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.add_lightning_class_args(ScoreWriter, "scores")
        parser.set_defaults({"trainer.reload_dataloaders_every_n_epochs": 1})
        parser.link_arguments("run_name", "loop.run_dir", compute_fn=run_dir_of)
        parser.link_arguments("run_name", "checkpoint.dirpath", compute_fn=run_dir_of)
        parser.link_arguments("run_name", "scores.output_path", compute_fn=scores_path_of)
        parser.link_arguments(("loop.rounds", "loop.epochs_per_round"), "trainer.max_epochs", compute_fn=max_epochs_of)
        parser.link_arguments(("model.pretrained", "model.tokenizer"), "data.tokenizer", compute_fn=tokenizer_of)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        # A missing model folder or unknown hub id fails here, before the pool is loaded and tokenized.
        if config.model.pretrained:
            check_pretrained(config.model.pretrained, "model.pretrained", "model")
        if config.model.tokenizer:
            check_pretrained(config.model.tokenizer, "model.tokenizer", "tokenizer")
        if config.trainer.logger in (None, True):
            # A fixed folder per run name (no version_N), so a resumed run keeps writing to the same curves.
            config.trainer.logger = Namespace(
                class_path="lightning.pytorch.loggers.TensorBoardLogger",
                init_args=Namespace(save_dir="lightning_logs", name=config.run_name, version=""),
            )
        else:
            _default_logger_folders(config.trainer.logger, config.run_name)

    def _resolve_ckpt_path(self) -> None:
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
        self._resolve_ckpt_path()

    def before_validate(self) -> None:
        self._resolve_ckpt_path()

    def before_test(self) -> None:
        self._resolve_ckpt_path()

    def before_predict(self) -> None:
        self._resolve_ckpt_path()


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


def main(args: list[str] | None = None) -> ActiveLearningCLI:
    return ActiveLearningCLI(
        LoRALanguageModel,
        ActiveLearningDataModule,
        seed_everything_default=42,
        save_config_callback=RunConfigSaver,
        save_config_kwargs={"overwrite": True},
        # The module configures its own optimizer (model.optimizer), re-made every round.
        auto_configure_optimizers=False,
        args=args,
    )


def entry_point() -> None:
    """The ``lightning-al`` command."""
    args = sys.argv[1:]
    if args[:1] == ["study"]:
        from lightning_al.study import main as study

        study(args[1:])
    elif args[:1] == ["report"]:
        from lightning_al.report.command import main as report

        report(args[1:])
    else:
        try:
            main()  # LightningCLI reads sys.argv itself
        except SIGTERMException as stopped:
            # A run stopped by a signal is not finished: never exit 0 (a scheduler would not requeue it).
            raise SystemExit(stopped.code or 143) from None


if __name__ == "__main__":
    entry_point()
