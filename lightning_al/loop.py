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

The loop controls the rounds; its two parts record them (``lightning_al.recording.RunRecorder``: round
files, metrics, records, loggers, cost) and analyse the acquired sets
(``lightning_al.selection_analysis.SelectionDiversity``). They are plain objects, not callbacks of their
own, so the loop's checkpoint state holds the whole run's (the cost counters under ``cost``, as ever).
"""

from __future__ import annotations

import hashlib
import random
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from lightning_al import run_folder
from lightning_al.checkpointing import RunCheckpoint
from lightning_al.datamodule import ActiveLearningDataModule
from lightning_al.recording import RunRecorder
from lightning_al.scoring.pool import PartialScores, ScoringInterrupted, score_pool
from lightning_al.selection_analysis import SelectionDiversity, prompt_embedding_pass
from lightning_al.strategies import AcquisitionStrategy, RandomSampling, round_sizes, strategy_from_name

RetrainingPolicy = Literal["scratch", "continue", "incremental"]


class ActiveLearningLoop(Callback):
    """Acquire ``budget`` examples over ``rounds`` rounds, retraining after each acquisition.

    Args:
        budget: Total number of examples to annotate (B). Round r acquires floor(B/m), plus one for r < B mod m.
            Required by fit; validate / test / predict acquire nothing and do not need it.
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
        budget: int | None = None,
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
        if diversity_sample < 0:
            raise ValueError(f"loop.diversity_sample must be >= 0 (0: off), got {diversity_sample}")
        self.sizes = round_sizes(budget, rounds) if budget is not None else []
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
        #: The run's outputs and cost (its counters are part of this callback's checkpoint state).
        self.recorder = RunRecorder(self.run_dir)
        #: The diversity of each round's acquired set, measured at the round's end (None: off).
        self.diversity = SelectionDiversity(diversity_sample) if diversity_sample else None
        #: The newest acquired round (-1: nothing acquired yet). Saved in checkpoints.
        self.round = -1
        #: The newest round whose training and evaluation are done and written. Saved in checkpoints: a run
        #: stopped between a round's end and the next acquisition (ended == round) acquires on resume.
        self.ended = -1
        self._checkpoints: RunCheckpoint | None = None
        self._new_optimizers = False
        self._rng_state: dict[str, Any] | None = None

    # ---------------------------------------------------------------- checks, before any expensive work
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        dm = trainer.datamodule
        if not isinstance(dm, ActiveLearningDataModule):
            raise TypeError("ActiveLearningLoop needs an ActiveLearningDataModule as the trainer's datamodule")
        if self.budget is None:
            raise ValueError("loop.budget: fit needs the number of examples to annotate (B), e.g. --loop.budget=1000")
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
        """The Trainer settings that exact resume and the evaluation depend on: errors, not silently weaker
        guarantees or a biased evaluation."""
        if trainer.max_steps != -1:
            raise ValueError(f"trainer.max_steps ({trainer.max_steps}) must be -1: rounds are counted in epochs")
        if trainer.val_check_interval != 1.0:
            raise ValueError(
                f"trainer.val_check_interval ({trainer.val_check_interval}) must be 1.0: the evaluation runs at the "
                "end of an epoch, where the loop ends its rounds and the round checkpoints are written"
            )
        limit = trainer.limit_val_batches
        if not (isinstance(limit, float) and limit == 1.0):
            # Evaluation batches come task by task (BBH) or longest first: a share of them is a biased sample
            # that would still be logged as bbh/exact_match.
            raise ValueError(
                f"trainer.limit_val_batches ({limit}) must be 1.0: a part of the evaluation batches is a biased "
                "sample (BBH's come task by task); evaluate fewer examples with the evaluations' own max_examples "
                "(or max_examples_per_task) keys"
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
        self.recorder.fit_started()
        if trainer.ckpt_path is not None:
            # The checkpoint's seed, restored after setup gave the data module this launch's (which differs
            # under `seed_everything: true`): the training order must be the interrupted run's.
            trainer.datamodule.seed = self.seed
            # Resuming: the checkpoint holds the rounds acquired so far. One taken after a round's end and
            # before the next acquisition (stopped while scoring) acquires now, before the train
            # dataloader is made; the scoring pass continues from its partial scores.
            if self.ended == self.round and self.round + 1 < self.rounds:
                self.acquire(trainer, pl_module, self.round + 1)
                if self.retraining == "scratch":
                    pl_module.reset_adapter()
                self._new_optimizers = True  # after Lightning restores the old round's optimizer
            return
        # (Checked here, not in setup: Lightning resolves --ckpt_path only after setup.)
        if not self.overwrite and run_folder.round_files(self.run_dir):
            raise FileExistsError(
                f"{run_folder.rounds_dir(self.run_dir)} already holds rounds of an earlier run: resume it with "
                "--ckpt_path last, or set loop.overwrite=true, or choose another run_name"
            )
        if trainer.is_global_zero:
            run_folder.metrics_file(self.run_dir).unlink(missing_ok=True)
            # An earlier run's checkpoints would be taken for this run's by --ckpt_path last.
            for stale in run_folder.checkpoint_files(self.run_dir):
                stale.unlink()
        trainer.strategy.barrier("ActiveLearningLoop.fresh_start")
        self.acquire(trainer, pl_module, 0)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Restored here rather than in load_state_dict: the sanity check and the loaders run in between.
        # (Not at the epoch start: a run resumed mid-epoch does not start an epoch.)
        if self._rng_state is not None:
            # Each rank's own generators (their dropout masks drew on batches of other shapes, and a GPU
            # process advanced only its own device's); rank 0's where the checkpoint has one per rank only
            # for another world size, or is older.
            ranks = self._rng_state.get("ranks")
            own = ranks[trainer.global_rank] if ranks and len(ranks) == trainer.world_size else self._rng_state
            _set_rng_state(own)
            self._rng_state = None
        if self._new_optimizers:
            trainer.strategy.setup_optimizers(trainer)
            self._new_optimizers = False

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.epochs_per_round:
            return
        finished = (trainer.current_epoch + 1) // self.epochs_per_round - 1
        # The round's wall time stops before its diversity pass (the next round's wall seconds hold it).
        self.recorder.round_trained(trainer, pl_module, finished, self.epochs_per_round)
        selection = None if self.diversity is None else self.diversity.measure(trainer, pl_module, finished, self.seed)
        self.recorder.round_evaluated(trainer, pl_module, finished, selection)
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
            # Every prompt is read once; generated mode also decodes its scored continuation. (Prompt and
            # first modes score positions the prompt's own forward already computed.)
            decoded = scores["num_tokens"].sum() if pl_module.hparams.get("score_source") == "generated" else 0
            tokens = float(dm.prompt_lengths[candidates].sum() + decoded)
            self.recorder.scored(time.perf_counter() - start, tokens, passes=1)
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
        path = self.recorder.round_acquired(trainer, round, chosen, scores, {k: v[position] for k, v in scores.items()})
        rank_zero_info(
            f"Round {round}/{self.rounds - 1}: acquired {len(chosen)} with {self.strategy!r}; "
            f"labeled {len(dm.labeled_indices())}/{self.budget}; wrote {path}"
        )

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
            self.recorder.scored(time.perf_counter() - start, float(dm.prompt_lengths[candidates].sum()), passes=0)
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
            path=run_folder.scoring_file(self.run_dir, round, trainer.global_rank),
            key=key.hexdigest(),
            every_n_batches=checkpoints.scores_every_n_batches,
            every_n_seconds=None if minutes is None else 60 * minutes,
            stop_requested=lambda: checkpoints.stop_signal is not None or trainer.received_sigterm,
        )

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.recorder.evaluation_started(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.recorder.evaluation_ended()

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.recorder.fit_ended(trainer, self.round + 1, self.rounds, self.budget)

    # ---------------------------------------------------------------- checkpointed state
    def state_dict(self) -> dict[str, Any]:
        # The layout of every checkpoint written so far: older ones load unchanged.
        return {"round": self.round, "ended": self.ended, "seed": self.seed, "cost": dict(self.recorder.cost),
                "rng": _rng_states_of_every_rank()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.round = state_dict["round"]
        self.ended = state_dict.get("ended", self.round - 1)
        self.seed = state_dict["seed"]
        self.recorder.load_cost(state_dict["cost"])
        self._rng_state = state_dict["rng"]


def _rng_states_of_every_rank() -> dict[str, Any]:
    """This rank's RNG state, with every rank's under ``"ranks"`` when several processes run.

    A collective under DDP: every rank calls it, as every rank saves a checkpoint (Lightning's
    ``save_checkpoint`` is called on all of them; only rank 0's copy is written)."""
    state = _get_rng_state()
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        ranks: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(ranks, state)
        state = {**state, "ranks": ranks}
    return state


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
