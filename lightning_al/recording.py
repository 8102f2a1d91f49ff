"""What an active-learning run records: its round files, metrics, per-example evaluation records, the
loggers' curves, and what it cost.

``RunRecorder`` is a part of ``lightning_al.loop.ActiveLearningLoop``, which calls it at each acquisition and
at each round's end (a plain object, not a Callback of its own: its cost counters ride in the loop's
checkpoint state, so a resumed run counts the whole run). Files go to the run folder through
``lightning_al.run_folder``; scalars to every Lightning logger; histograms to TensorBoard alone.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

from lightning_al import run_folder

#: Cost counters (cumulative over the run, saved in checkpoints): pool tokens scored and scoring
#: passes / time, tokens trained on (prompt + response, per epoch), evaluation and wall time.
NO_COST = {"tokens_scored": 0.0, "scoring_passes": 0.0, "scoring_seconds": 0.0, "tokens_trained": 0.0,
           "eval_seconds": 0.0, "wall_seconds": 0.0}


class RunRecorder:
    """Writes a run's outputs and keeps its cost counters.

    Args:
        run_dir: The run folder (``loop.run_dir``).
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        #: Cumulative cost of the run (see ``NO_COST``); the loop saves and restores it with its state.
        self.cost: dict[str, float] = dict(NO_COST)
        self._clock = time.perf_counter()
        self._eval_start: float | None = None

    # ---------------------------------------------------------------- cost
    def load_cost(self, cost: Mapping[str, float]) -> None:
        """Restore the counters of a checkpoint (one written before a counter existed starts it at 0)."""
        self.cost = {**NO_COST, **cost}

    def fit_started(self) -> None:
        """Start the wall clock of this process (a resumed run adds to the checkpoint's wall seconds)."""
        self._clock = time.perf_counter()

    def scored(self, seconds: float, tokens: float, passes: int) -> None:
        """Count a pass over pool prompts made to acquire: its time, its tokens, and whether it was a scoring pass."""
        self.cost["scoring_seconds"] += seconds
        self.cost["scoring_passes"] += passes
        self.cost["tokens_scored"] += tokens

    def evaluation_started(self, trainer: Trainer) -> None:
        # The sanity check's evaluation is not a round's: not counted.
        self._eval_start = None if trainer.sanity_checking else time.perf_counter()

    def evaluation_ended(self) -> None:
        if self._eval_start is not None:
            self.cost["eval_seconds"] += time.perf_counter() - self._eval_start
            self._eval_start = None

    # ---------------------------------------------------------------- acquisitions
    def round_acquired(self, trainer: Trainer, round: int, chosen: np.ndarray, scores: dict[str, np.ndarray],
                       chosen_scores: dict[str, np.ndarray]) -> Path:
        """Write ``rounds/round_<r>.jsonl`` (rank 0) and log the acquisition: task counts, mean lengths and
        scores to every logger; length and score histograms (pool and acquired) to TensorBoard."""
        dm = trainer.datamodule
        path = run_folder.round_file(self.run_dir, round)
        if trainer.is_global_zero:
            rows = [{"id": str(dm.ids[index]), "task": str(dm.tasks[index]), "round": round,
                     "prompt_tokens": int(dm.prompt_lengths[index]), "response_tokens": int(dm.response_lengths[index]),
                     **{k: float(v[i]) for k, v in chosen_scores.items()}} for i, index in enumerate(chosen)]
            run_folder.write_round(self.run_dir, round, rows)
        if not trainer.loggers:
            return path
        tasks, counts = np.unique(dm.tasks[chosen], return_counts=True)
        metrics = {"al/round": round, "al/labeled": len(dm.labeled_indices()),
                   "al/acquired_prompt_tokens_mean": float(dm.prompt_lengths[chosen].mean()),
                   "al/acquired_response_tokens_mean": float(dm.response_lengths[chosen].mean())}
        metrics.update({f"al/acquired_task/{t}": int(c) for t, c in zip(tasks, counts)})
        metrics.update({f"al/acquired_{k}_mean": float(v.mean()) for k, v in chosen_scores.items()})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        # Histograms are TensorBoard's alone; other loggers get the scalars above.
        for logger in trainer.loggers if trainer.is_global_zero else []:
            if not isinstance(logger, TensorBoardLogger):
                continue
            writer = logger.experiment
            writer.add_histogram("al/acquired_prompt_tokens", dm.prompt_lengths[chosen], round)
            writer.add_histogram("al/acquired_response_tokens", dm.response_lengths[chosen], round)
            for k, v in scores.items():
                writer.add_histogram(f"al/pool_{k}", v, round)
                writer.add_histogram(f"al/acquired_{k}", chosen_scores[k], round)
        return path

    # ---------------------------------------------------------------- round ends
    def round_trained(self, trainer: Trainer, pl_module: LightningModule, round: int, epochs: int) -> None:
        """After round r's training and evaluation: save its adapter (rank 0) and count its cost (the tokens of
        its ``epochs`` epochs over the training set, the wall time so far)."""
        dm = trainer.datamodule
        if trainer.is_global_zero:
            pl_module.save_adapter(run_folder.adapter_dir(self.run_dir, round))
        self.cost["tokens_trained"] += float(epochs * dm.pool_lengths[dm.train_indices()].sum())
        now = time.perf_counter()
        self.cost["wall_seconds"] += now - self._clock
        self._clock = now

    def round_evaluated(self, trainer: Trainer, pl_module: LightningModule, round: int,
                        selection: dict[str, float] | None = None) -> dict[str, dict[str, float]]:
        """Record round r's results: this round's evaluation results, the cost so far and the ``selection``
        analysis as ``metrics.jsonl`` rows, each evaluation's per-example records as
        ``evaluations/round_<r>/<set>.jsonl`` (rank 0); the main metrics (no per-task ones) to every logger
        against the round (``round/...``) and the labeled count (``labeled/...``). Returns the results by row."""
        dm = trainer.datamodule
        labeled = len(dm.labeled_indices())
        # The module's own values of this round's validation: float64, and no set that did not run this
        # round (callback_metrics keep an earlier round's values of a set restricted to some rounds).
        results = {name: {k: float(v) for k, v in values.items()}
                   for name, values in getattr(pl_module, "evaluation_results", {}).items()}
        results["cost"] = dict(self.cost)
        if selection is not None:
            results["selection"] = selection
        if trainer.is_global_zero:
            for name, rows in getattr(pl_module, "evaluation_records", {}).items():
                run_folder.write_records(self.run_dir, round, name, rows)
            head = {"round": round, "labeled": labeled, "epoch": trainer.current_epoch, "step": trainer.global_step}
            run_folder.write_metrics(self.run_dir, round,
                                     [{**head, "evaluation": name, **values} for name, values in results.items()])
        main = {f"{name}/{k}": v for name, values in results.items() for k, v in values.items() if "/" not in k}
        for logger in trainer.loggers:
            logger.log_metrics({f"round/{k}": v for k, v in main.items()}, step=round)
            logger.log_metrics({f"labeled/{k}": v for k, v in main.items()}, step=labeled)
        shown = ", ".join(f"{n}/{k}={v:.4f}" for n, vals in results.items() if n not in ("cost", "selection")
                          for k, v in vals.items() if "/" not in k and k != "count")
        rank_zero_info(f"Round {round} trained on {len(dm.train_indices())} of {labeled} labels. {shown}")
        return results

    def fit_ended(self, trainer: Trainer, rounds_done: int, rounds: int, budget: int) -> None:
        """Say where the run's outputs are: rounds and adapters, checkpoints, and every logger's folder."""
        labeled = len(trainer.datamodule.labeled_indices())
        where = "".join(
            f"; TensorBoard: tensorboard --logdir {logger.log_dir}" if isinstance(logger, TensorBoardLogger)
            else f"; {type(logger).__name__}: {logger.log_dir or logger.save_dir or logger.name}"
            for logger in trainer.loggers
        )
        rank_zero_info(
            f"Done: {rounds_done}/{rounds} rounds, labeled {labeled}/{budget}. "
            f"Rounds and adapters: {run_folder.rounds_dir(self.run_dir)}; checkpoints: {self.run_dir}{where}"
        )

