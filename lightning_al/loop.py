"""The active-learning loop: a Callback that runs the m acquisition / retraining rounds inside one fit.

One ``Trainer.fit`` covers all rounds: ``max_epochs = rounds * epochs_per_round`` and the train
dataloader is reloaded every epoch, so it serves the labeled set as it grows. Round 0 is acquired in
``on_fit_start`` with the initial model; round r+1 at the end of round r's last epoch, after which the
retraining policy resets what it resets. Lightning runs checkpoint callbacks after the other callbacks,
so the ``RunCheckpoint`` written at a round boundary already holds the new labels and the reset
adapter (round 0's is written in ``on_train_start``, once Lightning has set up the loops).

Pre-emption: the loop checkpoints after a round's end, before the next scoring pass, and scoring
passes save partial scores; a run resumed from a checkpoint taken between a round's end and the next
acquisition (``ended == round``) acquires in ``on_fit_start``, continuing the saved pass.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

from lightning_al.checkpointing import RunCheckpoint
from lightning_al.data.datamodule import ActiveLearningDataModule
from lightning_al.evaluation.diversity import (
    initial_model_embeddings,
    mean_pairwise_cosine_distance,
    prompt_embedding_pass,
)
from lightning_al.evaluation.records import records_path, write_records
from lightning_al.scoring.pool import PartialScores, ScoringInterrupted, score_pool
from lightning_al.strategies import AcquisitionStrategy, RandomSampling, round_sizes, strategy_from_name

RetrainingPolicy = Literal["scratch", "continue", "incremental"]

#: Cost counters (cumulative over the run, saved in checkpoints): pool tokens scored and scoring
#: passes / time, tokens trained on (prompt + response, per epoch), evaluation and wall time.
_NO_COST = {"tokens_scored": 0.0, "scoring_passes": 0.0, "scoring_seconds": 0.0, "tokens_trained": 0.0,
            "eval_seconds": 0.0, "wall_seconds": 0.0}


class ActiveLearningLoop(Callback):
    """Acquire ``budget`` examples over ``rounds`` rounds, retraining after each acquisition.

    Args:
        budget: Total number of examples to annotate (B). Round r acquires floor(B/m), plus one for r < B mod m.
        rounds: Number of acquisition / retraining rounds (m >= 1). Round 0 uses the initial model.
        strategy: Acquisition strategy: a short name (random, entropy, confidence, margin, min_margin,
            max_entropy, kcenter, facility, power-entropy, softmax-confidence, task-balanced, ...; see
            ``lightning_al.strategies.REGISTRY``) or a ``class_path`` from ``lightning_al.strategies``.
        retraining: ``scratch``: reset the adapter, optimizer and scheduler, then train on all labels;
            ``continue``: keep the adapter, train on all labels; ``incremental``: keep the adapter,
            train on the newest round only. Optimizer and scheduler are new every round in all policies.
        epochs_per_round: Training epochs over the round's training set.
        run_dir: Folder of this run's outputs: checkpoints, ``rounds/round_<r>.jsonl``, adapters.
        seed: Seed of random acquisition and of the training order (default: the run's ``seed_everything``).
        overwrite: Allow a fresh (not resumed) run to write into a run_dir that already holds rounds.
        diversity_sample: Examples (a seeded sample) of each acquired set whose initial-model prompt
            embeddings give its diversity, written to metrics.jsonl; 0 turns it off.
    """

    def __init__(
        self,
        budget: int,
        rounds: int = 1,
        strategy: AcquisitionStrategy | str | None = None,
        retraining: RetrainingPolicy = "scratch",
        epochs_per_round: int = 1,
        run_dir: str = "checkpoints/run",
        seed: int | None = None,
        overwrite: bool = False,
        diversity_sample: int = 256,
    ) -> None:
        if retraining not in ("scratch", "continue", "incremental"):
            raise ValueError(f"loop.retraining: one of scratch, continue, incremental; got {retraining!r}")
        if epochs_per_round < 1:
            raise ValueError(f"loop.epochs_per_round must be >= 1, got {epochs_per_round}")
        self.sizes = round_sizes(budget, rounds)
        self.budget = budget
        self.rounds = rounds
        if isinstance(strategy, str):
            try:
                strategy = strategy_from_name(strategy)
            except ValueError as error:
                raise ValueError(f"loop.strategy: {error}") from None
        self.strategy = strategy if strategy is not None else RandomSampling()
        self.retraining = retraining
        self.epochs_per_round = epochs_per_round
        self.run_dir = Path(run_dir)
        self.seed = seed
        self.overwrite = overwrite
        self.diversity_sample = diversity_sample
        #: The newest acquired round (-1: nothing acquired yet). Saved in checkpoints.
        self.round = -1
        #: The newest round whose training and evaluation are done and written. Saved in checkpoints: a run
        #: stopped between a round's end and the next acquisition (ended == round) acquires on resume.
        self.ended = -1
        self._checkpoints: RunCheckpoint | None = None
        self._new_optimizers = False
        #: Cost accounting, saved in checkpoints so that a resumed run reports the whole run.
        self.cost: dict[str, float] = dict(_NO_COST)
        self._rng_state: dict[str, Any] | None = None
        self._clock = time.perf_counter()
        self._eval_start: float | None = None

    # ---------------------------------------------------------------- checks, before any expensive work
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        dm = trainer.datamodule
        if not isinstance(dm, ActiveLearningDataModule):
            raise TypeError("ActiveLearningLoop needs an ActiveLearningDataModule as the trainer's datamodule")
        if self.budget > dm.num_candidates:
            raise ValueError(
                f"loop.budget ({self.budget}) is larger than the unlabeled pool ({dm.num_candidates} examples "
                f"after holding out {int(dm.held_out.sum())}); lower loop.budget or enlarge data.pool"
            )
        expected = self.rounds * self.epochs_per_round
        if trainer.max_epochs != expected:
            raise ValueError(
                f"trainer.max_epochs ({trainer.max_epochs}) must equal loop.rounds x loop.epochs_per_round ({expected})"
            )
        if trainer.reload_dataloaders_every_n_epochs != 1:
            raise ValueError("trainer.reload_dataloaders_every_n_epochs must be 1: each round trains on a new set")
        if self.epochs_per_round % (trainer.check_val_every_n_epoch or 1):
            raise ValueError(
                f"trainer.check_val_every_n_epoch ({trainer.check_val_every_n_epoch}) must divide "
                f"loop.epochs_per_round ({self.epochs_per_round}): every round ends with an evaluation"
            )
        self._check_resume_settings(trainer)
        if self.seed is None:
            self.seed = int(torch.initial_seed()) % 2**31
        dm.seed = self.seed
        dm.train_latest_round_only = self.retraining == "incremental"
        dm.evaluate_every_n_epochs = self.epochs_per_round

    def _check_resume_settings(self, trainer: Trainer) -> None:
        """The Trainer settings that exact resume depends on: errors, not silently weaker guarantees."""
        if trainer.max_steps != -1:
            raise ValueError(f"trainer.max_steps ({trainer.max_steps}) must be -1: rounds are counted in epochs")
        if trainer.val_check_interval != 1.0:
            raise ValueError(
                f"trainer.val_check_interval ({trainer.val_check_interval}) must be 1.0: the evaluation runs at the "
                "end of an epoch, where the loop ends its rounds and the round checkpoints are written"
            )
        checkpoints = [c for c in trainer.callbacks if isinstance(c, RunCheckpoint)]
        if len(checkpoints) > 1:
            raise ValueError("trainer.callbacks holds more than one RunCheckpoint; keep one")
        if not checkpoints:
            if trainer.checkpoint_callbacks:
                raise ValueError(
                    "The loop needs lightning_al.checkpointing.RunCheckpoint among trainer.callbacks (instead of or "
                    "besides ModelCheckpoint): its checkpoints after each acquisition, within epochs and on SIGTERM "
                    "are what resume relies on"
                )
            self._checkpoints = None  # checkpointing off (enable_checkpointing=False): nothing to resume from
            return
        self._checkpoints = checkpoints[0]
        if self._checkpoints.dirpath.resolve() != self.run_dir.resolve():
            raise ValueError(
                f"RunCheckpoint.dirpath ({self._checkpoints.dirpath}) must be loop.run_dir ({self.run_dir})"
            )

    # ---------------------------------------------------------------- rounds
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._clock = time.perf_counter()
        if trainer.ckpt_path is not None:
            # Resuming: the checkpoint holds the rounds acquired so far. One taken after a round's end and
            # before the next acquisition (stopped while scoring) acquires now, before the train
            # dataloader is made; the scoring pass continues from its partial scores.
            if self.ended == self.round and self.round + 1 < self.rounds:
                self.acquire(trainer, pl_module, self.round + 1)
                if self.retraining == "scratch":
                    pl_module.reset_adapter()
                self._new_optimizers = True  # after Lightning restores the old round's optimizer
            return
        rounds_dir = self.run_dir / "rounds"
        # (Checked here, not in setup: Lightning resolves --ckpt_path only after setup.)
        if not self.overwrite and any(rounds_dir.glob("round_*.jsonl")):
            raise FileExistsError(
                f"{rounds_dir} already holds rounds of an earlier run: resume it with --ckpt_path last, "
                "or set loop.overwrite=true, or choose another run_name"
            )
        if trainer.is_global_zero:
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
            # An earlier run's checkpoints would be taken for this run's by --ckpt_path last.
            for stale in self.run_dir.glob("*.ckpt"):
                stale.unlink()
        trainer.strategy.barrier("ActiveLearningLoop.fresh_start")
        self.acquire(trainer, pl_module, 0)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Restored here rather than in load_state_dict: the sanity check and the loaders run in between.
        # (Not at the epoch start: a run resumed mid-epoch does not start an epoch.)
        if self._rng_state is not None:
            _set_rng_state(self._rng_state)
            self._rng_state = None
        if self._new_optimizers:
            trainer.strategy.setup_optimizers(trainer)
            self._new_optimizers = False

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.epochs_per_round:
            return
        finished = (trainer.current_epoch + 1) // self.epochs_per_round - 1
        self.end_round(trainer, pl_module, finished)
        self.ended = finished
        if finished + 1 < self.rounds:
            if self._checkpoints is not None and not isinstance(self.strategy, RandomSampling):
                # The round's training and evaluation are safe before the (long) scoring pass begins.
                self._checkpoints.save(trainer)
            self.acquire(trainer, pl_module, finished + 1)
            if self.retraining == "scratch":
                pl_module.reset_adapter()
            trainer.strategy.setup_optimizers(trainer)

    def acquire(self, trainer: Trainer, pl_module: LightningModule, round: int) -> None:
        dm: ActiveLearningDataModule = trainer.datamodule
        candidates = dm.unlabeled_indices()
        scores: dict[str, np.ndarray] = {}
        inputs: dict[str, np.ndarray] = {}
        if self.strategy.score is not None:
            start = time.perf_counter()
            partial = self._partial_scores(trainer, pl_module, candidates, round)
            try:
                scores = score_pool(trainer, pl_module, dm, candidates, desc=f"Scoring the pool for round {round}",
                                    partial=partial, embeddings=self.strategy.needs_embeddings)
            except ScoringInterrupted as stopped:
                self._checkpoints.stop(trainer, f"round {round}'s scoring pass saved its partial scores ("
                                       f"{stopped.done}/{stopped.total} on this rank) in {stopped.path.parent}")
            self.cost["scoring_seconds"] += time.perf_counter() - start
            self.cost["scoring_passes"] += 1
            self.cost["tokens_scored"] += float(scores["num_tokens"].sum() + dm.prompt_lengths[candidates].sum())
        rng = np.random.default_rng([self.seed, round])
        if self.strategy.needs_tasks:
            inputs["tasks"] = dm.tasks[candidates]
        if self.strategy.needs_embeddings:
            inputs.update(self._embeddings(trainer, pl_module, dm, candidates, scores))
        chosen = self.strategy.select(candidates, scores.get(self.strategy.score), self.sizes[round], rng, **inputs)
        dm.acquire(chosen, round)
        self.round = round
        if self._checkpoints is not None:
            self._checkpoints.round_acquired(round)
        position = np.searchsorted(candidates, chosen)
        chosen_scores = {k: v[position] for k, v in scores.items()}
        if trainer.is_global_zero:
            self._write_round(dm, round, chosen, chosen_scores)
        self._log_round(trainer, dm, round, chosen, scores, chosen_scores)

    def _embeddings(self, trainer: Trainer, pl_module: LightningModule, dm: ActiveLearningDataModule,
                    candidates: np.ndarray, scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Candidates' and labeled examples' prompt embeddings by the current model, float16. The
        candidates' come from the scoring pass when there is one; a strategy that needs no score
        gets them from a forward pass of the prompts (no generation)."""
        def embed(indices: np.ndarray) -> np.ndarray:
            return prompt_embedding_pass(trainer, pl_module, dm, indices).numpy().astype(np.float16)

        if "embedding" in scores:
            candidate_embeddings = scores.pop("embedding")
        else:
            start = time.perf_counter()
            candidate_embeddings = embed(candidates)
            self.cost["scoring_seconds"] += time.perf_counter() - start
            self.cost["tokens_scored"] += float(dm.prompt_lengths[candidates].sum())
        labeled = dm.labeled_indices()
        labeled_embeddings = embed(labeled) if len(labeled) else np.zeros((0, candidate_embeddings.shape[1]), np.float16)
        return {"embeddings": candidate_embeddings, "labeled_embeddings": labeled_embeddings}

    def _partial_scores(self, trainer: Trainer, pl_module: LightningModule, candidates: np.ndarray,
                        round: int) -> PartialScores | None:
        """Where this rank's scoring pass of ``round`` saves its partial scores, keyed on the model's
        trainable weights, its settings and the candidates, so that only the same pass continues them."""
        checkpoints = self._checkpoints
        if checkpoints is None:
            return None
        key = hashlib.sha256(f"{round}|{self.seed}|{sorted(pl_module.hparams.items())!r}|".encode())
        key.update(np.ascontiguousarray(candidates).tobytes())
        for name, param in pl_module.named_parameters():
            if param.requires_grad:
                key.update(name.encode())
                key.update(param.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        minutes = checkpoints.scores_every_n_minutes
        return PartialScores(
            path=self.run_dir / "scoring" / f"round_{round}.rank{trainer.global_rank}.pt",
            key=key.hexdigest(),
            every_n_batches=checkpoints.scores_every_n_batches,
            every_n_seconds=None if minutes is None else 60 * minutes,
            stop_requested=lambda: checkpoints.stop_signal is not None or trainer.received_sigterm,
        )

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_start = None if trainer.sanity_checking else time.perf_counter()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._eval_start is not None:
            self.cost["eval_seconds"] += time.perf_counter() - self._eval_start
            self._eval_start = None

    def end_round(self, trainer: Trainer, pl_module: LightningModule, round: int) -> None:
        """After a round's training and evaluation: save its adapter, account its cost, and write
        its metrics to ``metrics.jsonl`` and TensorBoard (per round and per labeled count), and each
        evaluation's per-example records to ``evaluations/round_<r>/<set>.jsonl``."""
        dm: ActiveLearningDataModule = trainer.datamodule
        if trainer.is_global_zero:
            pl_module.save_adapter(self.run_dir / "rounds" / f"round_{round}" / "adapter")
        self.cost["tokens_trained"] += float(self.epochs_per_round * dm.pool_lengths[dm.train_indices()].sum())
        now = time.perf_counter()
        self.cost["wall_seconds"] += now - self._clock
        self._clock = now
        labeled = len(dm.labeled_indices())
        evaluations = {"heldout"} | {e.name for e in dm.evaluations}
        results: dict[str, dict[str, float]] = {}
        # The module's own values of this round's validation: float64, and no set that did not run this
        # round (callback_metrics keep an earlier round's values of a set restricted to some rounds).
        latest = getattr(pl_module, "evaluation_results", None) or trainer.callback_metrics
        for key, value in latest.items():
            name, _, metric = key.partition("/")
            if name in evaluations and metric:
                results.setdefault(name, {})[metric] = float(value)
        results["cost"] = dict(self.cost)
        if self.diversity_sample:
            results["selection"] = self._diversity(trainer, pl_module, dm, round)
        if trainer.is_global_zero:
            for name, rows in getattr(pl_module, "evaluation_records", {}).items():
                write_records(records_path(self.run_dir, round, name), rows)
            self._write_metrics(round, labeled, trainer, results)
        # Main metrics (not per task) against the round and against the labeled count, to every logger.
        main = {f"{name}/{k}": v for name, values in results.items() for k, v in values.items() if "/" not in k}
        for logger in trainer.loggers:
            logger.log_metrics({f"round/{k}": v for k, v in main.items()}, step=round)
            logger.log_metrics({f"labeled/{k}": v for k, v in main.items()}, step=labeled)
        shown = ", ".join(f"{n}/{k}={v:.4f}" for n, vals in results.items() if n not in ("cost", "selection")
                          for k, v in vals.items() if "/" not in k and k != "count")
        rank_zero_info(f"Round {round} trained on {len(dm.train_indices())} of {labeled} labels. {shown}")

    def _diversity(self, trainer: Trainer, pl_module: LightningModule, dm: ActiveLearningDataModule,
                   round: int) -> dict[str, float]:
        rng = np.random.default_rng([self.seed, round, 1])
        sets = {"diversity": dm.labeled_indices(round), "diversity_labeled": dm.labeled_indices()}
        result: dict[str, float] = {}
        for key, indices in sets.items():
            sample = np.sort(rng.choice(indices, min(self.diversity_sample, len(indices)), replace=False))
            embeddings = initial_model_embeddings(trainer, pl_module, dm, sample)
            result[key] = mean_pairwise_cosine_distance(embeddings)
        result["diversity_sample"] = float(min(self.diversity_sample, len(sets["diversity"])))
        return result

    def _write_metrics(self, round: int, labeled: int, trainer: Trainer, results: dict[str, dict[str, float]]) -> None:
        path = self.run_dir / "metrics.jsonl"
        # A round re-run after a resume from an earlier checkpoint replaces its rows (and later ones).
        kept = [line for line in path.read_text().splitlines() if json.loads(line)["round"] < round] if path.exists() else []
        head = {"round": round, "labeled": labeled, "epoch": trainer.current_epoch, "step": trainer.global_step}
        rows = [json.dumps({**head, "evaluation": name, **values}) for name, values in results.items()]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(line + "\n" for line in kept + rows))

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        labeled = len(trainer.datamodule.labeled_indices())
        where = "".join(
            f"; TensorBoard: tensorboard --logdir {logger.log_dir}" if isinstance(logger, TensorBoardLogger)
            else f"; {type(logger).__name__}: {logger.log_dir or logger.save_dir or logger.name}"
            for logger in trainer.loggers
        )
        rank_zero_info(
            f"Done: {self.round + 1}/{self.rounds} rounds, labeled {labeled}/{self.budget}. "
            f"Rounds and adapters: {self.run_dir / 'rounds'}; checkpoints: {self.run_dir}{where}"
        )

    # ---------------------------------------------------------------- outputs
    def _write_round(self, dm: ActiveLearningDataModule, round: int, chosen: np.ndarray, scores: dict) -> None:
        path = self.run_dir / "rounds" / f"round_{round}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as f:
            for i, index in enumerate(chosen):
                row = {"id": str(dm.ids[index]), "task": str(dm.tasks[index]), "round": round,
                       "prompt_tokens": int(dm.prompt_lengths[index]),
                       "response_tokens": int(dm.response_lengths[index])}
                row.update({k: float(v[i]) for k, v in scores.items()})
                f.write(json.dumps(row) + "\n")

    def _log_round(self, trainer, dm, round, chosen, scores, chosen_scores) -> None:
        labeled = len(dm.labeled_indices())
        rank_zero_info(
            f"Round {round}/{self.rounds - 1}: acquired {len(chosen)} with {self.strategy!r}; "
            f"labeled {labeled}/{self.budget}; wrote {self.run_dir / 'rounds' / f'round_{round}.jsonl'}"
        )
        if not trainer.loggers:
            return
        tasks, counts = np.unique(dm.tasks[chosen], return_counts=True)
        metrics = {"al/round": round, "al/labeled": labeled,
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

    # ---------------------------------------------------------------- checkpointed state
    def state_dict(self) -> dict[str, Any]:
        return {"round": self.round, "ended": self.ended, "seed": self.seed, "cost": dict(self.cost),
                "rng": _get_rng_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.round = state_dict["round"]
        self.ended = state_dict.get("ended", self.round - 1)
        self.seed = state_dict["seed"]
        self.cost = {**_NO_COST, **state_dict["cost"]}
        self._rng_state = state_dict["rng"]


def _get_rng_state() -> dict[str, Any]:
    # Plain lists and tensors only, so checkpoints load with torch.load(weights_only=True).
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
