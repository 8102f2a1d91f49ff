"""The DataModule: one pool of examples, a held-out split, and the labeled / unlabeled state."""

from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path

import datasets
import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, SequentialSampler, Subset

from lightning_al.data.batching import (
    CausalLMCollator,
    LengthGroupedSampler,
    TOKEN_BATCH_MAX_ROWS_FACTOR,
    ResumableDataLoader,
    TokenBudgetBatchSampler,
    length_sorted,
)
from lightning_al.data.sources import PoolSource, SyntheticTasks
from lightning_al.data.tokenized_pool import PoolTokenization
from lightning_al.evaluation import Evaluation, EvaluationPass, HeldOutAnswers, HeldOutLoss
from lightning_al.model.loading import CHAR_TOKENIZER, load_tokenizer

UNLABELED = -1


class ActiveLearningDataModule(LightningDataModule):
    """Serves the labeled set for training, the held-out split and the evaluation sets for
    validation, and the unlabeled pool (prompts only) for scoring.

    Each pool example's acquisition round (or -1, unlabeled) is the whole active-learning state
    of the data; it is saved through ``state_dict`` into every checkpoint.

    Args:
        pool: Where the pool comes from (``class_path`` of a source in ``lightning_al.data.sources``).
        tokenizer: Hub id or local folder of the tokenizer, or ``"char"`` for the built-in
            character-level one. Linked from ``model.tokenizer`` by the CLI.
        validation_size: Held-out examples never acquired: a count (int >= 1) or a fraction of the pool.
        max_pool_size: Use a seeded random subset of this many pool examples (None: all). The subset is
            taken before tokenization, so a small study over a large pool tokenizes only what it uses.
        split_seed: Seed of the pool subset and the held-out split. Kept apart from the run's seed so
            that every run of a study sees the same pool and the same held-out set.
        max_length: Maximum tokens of prompt + response; longer examples are truncated (counted and logged).
        max_prompt_length: Maximum prompt tokens (the prompt's end is kept). Default: 3/4 of max_length.
        max_truncated_fraction: Fail before training when more than this fraction of the pool would be
            truncated (checked on a sample before tokenizing, then on the whole pool): such a pool
            trains on cut examples, which is nearly always a max_length set for another dataset.
            1.0 accepts any truncation.
        batch_size: Training batch size (per device).
        eval_batch_size: Batch size for validation and for scoring the pool (per device).
        score_batch_tokens: Size pool-scoring batches by tokens instead of ``eval_batch_size`` rows: as many
            prompts as fit in this many tokens, each counted as the batch's longest prompt plus the new
            tokens of generated scoring (long prompts small batches, short prompts large ones; at most
            8 x eval_batch_size rows). Scores do not depend on it; speed and memory do. None: fixed rows.
            Generation reads every weight at every step whatever the batch, so on a CPU larger batches
            decode faster per token (benchmarks/results/generation-cpu.md); on a GPU, raise it as memory allows.
        eval_batch_tokens: The same for the evaluation sets of ``evaluations`` (each row counted as the
            batch's longest prompt plus the set's new tokens); None: ``eval_batch_size`` rows.
        num_workers: DataLoader worker processes.
        num_proc: Processes that tokenize the pool (``datasets.map(num_proc=...)``). None: one per
            10,000 examples, at most one per CPU core; 1: in this process.
        length_group_factor: Training order: a seeded shuffle, then sorted by length within groups of this
            many batches, so that batches hold little padding. 1: a plain shuffle, batches of mixed
            lengths; better when lengths mark tasks and the labeled set fits in one group (a sorted epoch
            then trains one task after another), as in the demo.
        cache_dir: Folder of the tokenized-pool cache: ``<cache_dir>/lightning_al/tokenized-<hash>.arrow``,
            keyed on the pool's contents, the tokenizer and the lengths, so it is reused across runs and
            never stale; and of the validated pool of a file / hub / FLAN source,
            ``<cache_dir>/lightning_al/pools/pool-<hash>.arrow``, which set-up memory-maps instead of holding
            the pool in memory. Default: the datasets cache (``$HF_DATASETS_CACHE``, which is
            ``~/.cache/huggingface/datasets`` unless ``HF_HOME`` or ``HF_DATASETS_CACHE`` move it).
        evaluations: Evaluation sets run at the end of every round, after the held-out loss /
            perplexity (``class_path`` of ``lightning_al.evaluation.HeldOutAnswers``,
            ``BigBenchHard``, ``MultipleChoice``). Default: answer exact match on the held-out split
            (none when ``validation_size`` is 0).
            ``[]`` keeps only the held-out loss. A set's ``rounds`` (e.g. ``[-1]``) runs it only at those
            rounds; the held-out loss (on the whole held-out split, ``validation_size``) runs every epoch.
            Each is a validation dataloader named after it (the held-out loss: ``heldout_loss``).
    """

    def __init__(
        self,
        pool: PoolSource | None = None,
        tokenizer: str = CHAR_TOKENIZER,
        validation_size: int | float = 0.05,  # noqa: PYI041 - an int is a count, a float a fraction
        max_pool_size: int | None = None,
        split_seed: int = 0,
        max_length: int = 512,
        max_prompt_length: int | None = None,
        max_truncated_fraction: float = 0.5,
        batch_size: int = 8,
        eval_batch_size: int = 16,
        score_batch_tokens: int | None = 8192,
        eval_batch_tokens: int | None = 8192,
        num_workers: int = 0,
        num_proc: int | None = None,
        length_group_factor: int = 50,
        cache_dir: str | None = None,
        evaluations: list[Evaluation] | None = None,
    ) -> None:
        super().__init__()
        for key, value in (("score_batch_tokens", score_batch_tokens), ("eval_batch_tokens", eval_batch_tokens)):
            if value is not None and value < 1:
                raise ValueError(f"data.{key} must be >= 1 (or null: batches of eval_batch_size rows), got {value}")
        self.source = pool if pool is not None else SyntheticTasks()
        self.tokenizer_name = tokenizer
        self.validation_size = validation_size
        self.max_pool_size = max_pool_size
        self.split_seed = split_seed
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length or (3 * max_length) // 4
        self.max_truncated_fraction = max_truncated_fraction
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.score_batch_tokens = score_batch_tokens
        self.eval_batch_tokens = eval_batch_tokens
        self.num_workers = num_workers
        self.num_proc = num_proc
        self.length_group_factor = length_group_factor
        self.cache_dir = Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / "lightning_al"
        #: Only the newest round is trained on (the ``incremental`` retraining policy); set by the loop.
        self.train_latest_round_only = False
        #: Seed of the training order; the loop sets it from the run's seed.
        self.seed = 0
        self._default_evaluations = evaluations is None
        self.evaluations = [HeldOutAnswers()] if evaluations is None else list(evaluations)
        self.heldout_loss = HeldOutLoss()
        #: The full evaluation runs in the validation of every n-th epoch (the loop sets its round length).
        self.evaluate_every_n_epochs = 1
        self.pool: datasets.Dataset | None = None
        self.acquired_round = np.empty(0, dtype=np.int64)
        # The source's pool after the max_pool_size subset, and the split RNG's state after drawing that
        # subset: loaded once per process (prepare_data and setup both need it).
        self._raw: datasets.Dataset | None = None
        self._split_rng_state: dict | None = None
        # The tokenized pool, once prepare_data or setup made (or found) it in this process: setup after
        # prepare_data does not hash the pool again.
        self._tokenized: datasets.Dataset | None = None
        self._check_config()

    def _check_config(self) -> None:
        if isinstance(self.validation_size, float) and not 0.0 <= self.validation_size < 1.0:
            raise ValueError(f"data.validation_size: a fraction must be in [0, 1), got {self.validation_size}")
        if isinstance(self.validation_size, int) and self.validation_size < 0:
            raise ValueError(f"data.validation_size: must be >= 0, got {self.validation_size}")
        if self.max_prompt_length >= self.max_length:
            raise ValueError(
                f"data.max_prompt_length ({self.max_prompt_length}) must be < data.max_length ({self.max_length})"
            )
        if not 0.0 <= self.max_truncated_fraction <= 1.0:
            raise ValueError(f"data.max_truncated_fraction: must be in [0, 1], got {self.max_truncated_fraction}")
        if self.num_proc is not None and self.num_proc < 1:
            raise ValueError(f"data.num_proc: must be >= 1 (or null for automatic), got {self.num_proc}")
        names = [e.name for e in self.evaluations]
        if len(set(names)) != len(names) or not all(names) or self.heldout_loss.name in names:
            raise ValueError(f"data.evaluations: each evaluation set needs its own non-empty name, and "
                             f"{self.heldout_loss.name!r} is the held-out loss's; got {names}")

    @cached_property
    def tokenizer(self):
        return load_tokenizer(self.tokenizer_name, "data.tokenizer")

    # ---------------------------------------------------------------- loading
    def prepare_data(self) -> None:
        # Runs on one process per node: downloads and tokenizes once, later calls hit the cache.
        self._tokenized_pool()

    def setup(self, stage: str) -> None:
        if self.pool is not None:
            return
        tokenized = self._tokenized_pool()
        rng = np.random.default_rng()
        rng.bit_generator.state = self._split_rng_state  # continues after the max_pool_size draw
        self.pool = tokenized.add_column("index", np.arange(len(tokenized), dtype=np.int64))
        n = len(self.pool)
        n_val = self.validation_size if isinstance(self.validation_size, int) else round(self.validation_size * n)
        if n_val >= n:
            raise ValueError(f"data.validation_size: {n_val} held-out examples leave none of the {n} in the pool")
        self.held_out = np.zeros(n, dtype=bool)
        self.held_out[rng.permutation(n)[:n_val]] = True
        self.acquired_round = np.full(n, UNLABELED, dtype=np.int64)
        self._log_pool_summary()
        if self._default_evaluations and not self.held_out.any():
            self.evaluations = []  # the default held-out answers need a held-out split; a configured one fails
        held_out = self.pool.select(np.flatnonzero(self.held_out).tolist())
        self.heldout_loss.prepare(self.tokenizer, held_out)
        for evaluation in self.evaluations:
            evaluation.prepare(self.tokenizer, held_out)
            rank_zero_info(f"Evaluation set {evaluation.name!r}: {len(evaluation.rows)} examples")

    def _raw_pool(self) -> datasets.Dataset:
        """The source's pool, cut to ``max_pool_size`` before anything is tokenized (loaded once)."""
        if self._raw is None:
            raw = self.source.load(cache_dir=self.cache_dir / "pools")  # memory-mapped from there
            rng = np.random.default_rng(self.split_seed)
            if self.max_pool_size is not None and self.max_pool_size < len(raw):
                # The same draw as a subset of the tokenized pool would be: the split does not change.
                raw = raw.select(np.sort(rng.choice(len(raw), self.max_pool_size, replace=False)))
                raw = raw.flatten_indices()  # the cache key hashes the table itself
            self._raw, self._split_rng_state = raw, rng.bit_generator.state
        return self._raw

    def _tokenized_pool(self) -> datasets.Dataset:
        if self._tokenized is None:
            tokenize = PoolTokenization(self.tokenizer, self.tokenizer_name, self.max_length, self.max_prompt_length,
                                        self.max_truncated_fraction, self.cache_dir, self.num_proc)
            self._tokenized = tokenize(self._raw_pool(), sample_seed=self.split_seed, source=self.source.describe())
        return self._tokenized

    def _log_pool_summary(self) -> None:
        truncated = int(np.sum(self._column("truncated")))
        empty = int(np.sum(self.response_lengths == 0))
        rank_zero_info(
            f"Pool: {len(self.pool)} examples ({int(self.held_out.sum())} held out) from {self.source.describe()}; "
            f"{truncated} truncated at max_length={self.max_length} "
            f"({100 * truncated / max(len(self.pool), 1):.1f}%)"
            + (f"; {empty} with no response token left are never acquired" if empty else "")
        )

    @cached_property
    def prompt_lengths(self) -> np.ndarray:
        return self._column("prompt_length").astype(np.int64)

    @cached_property
    def response_lengths(self) -> np.ndarray:
        return self._column("response_length").astype(np.int64)

    def _column(self, name: str) -> np.ndarray:
        """A number column of the pool as one numpy array, from Arrow (not through a list of Python ints)."""
        return self.pool.data.column(name).to_numpy()

    @cached_property
    def ids(self) -> np.ndarray:
        return np.asarray(self.pool["id"])

    @cached_property
    def tasks(self) -> np.ndarray:
        return np.asarray(self.pool["task"])

    # ---------------------------------------------------------------- labeled / unlabeled state
    @property
    def num_candidates(self) -> int:
        """Examples that may ever be acquired: not held out, with a response token to learn."""
        return int(np.sum(~self.held_out & (self.response_lengths > 0)))

    def unlabeled_indices(self) -> np.ndarray:
        return np.flatnonzero((self.acquired_round == UNLABELED) & ~self.held_out & (self.response_lengths > 0))

    def labeled_indices(self, round: int | None = None) -> np.ndarray:
        if round is None:
            return np.flatnonzero(self.acquired_round != UNLABELED)
        return np.flatnonzero(self.acquired_round == round)

    def acquire(self, indices: np.ndarray, round: int) -> None:
        """Label the given pool indices in ``round``. The labeled set only grows, never twice the same id."""
        indices = np.asarray(indices, dtype=np.int64)
        if len(np.unique(indices)) != len(indices):
            raise RuntimeError(f"round {round}: the acquisition holds an example twice")
        if np.any(self.acquired_round[indices] != UNLABELED) or np.any(self.held_out[indices]):
            raise RuntimeError(f"round {round}: the acquisition holds labeled or held-out examples")
        self.acquired_round[indices] = round

    def state_dict(self) -> dict:
        return {"acquired_round": self.acquired_round.tolist(), "pool_fingerprint": self._pool_fingerprint()}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict["pool_fingerprint"] != self._pool_fingerprint():
            raise ValueError(
                "The checkpoint was made with a different pool (data.pool, data.max_pool_size, data.split_seed "
                "or data.validation_size changed); resume with the configuration it was made with"
            )
        self.acquired_round = np.asarray(state_dict["acquired_round"], dtype=np.int64)

    def _pool_fingerprint(self) -> str:
        digest = hashlib.sha256("\n".join(self.ids.tolist()).encode())
        digest.update(self.held_out.tobytes())
        return digest.hexdigest()

    # ---------------------------------------------------------------- dataloaders
    def train_indices(self) -> np.ndarray:
        """The current round's training set: all labels, or the newest round's (``incremental``)."""
        rounds = self.acquired_round[self.acquired_round != UNLABELED]
        latest = int(rounds.max()) if len(rounds) else 0
        return self.labeled_indices(latest if self.train_latest_round_only else None)

    def train_dataloader(self) -> DataLoader:
        indices = self.train_indices()
        if len(indices) == 0:
            raise RuntimeError("train_dataloader: nothing is labeled yet (the loop acquires round 0 in on_fit_start)")
        # A new order each epoch, reproducible from (seed, epoch) so that a resumed run sees the same batches.
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        sampler = LengthGroupedSampler(self.pool_lengths[indices], self.batch_size, seed=self.seed * 100_003 + epoch,
                                       group_factor=self.length_group_factor)
        # Resumable: a mid-epoch checkpoint holds the loader's position, so a resumed run trains on the
        # rest of this epoch's batches.
        return self._loader(indices, self.batch_size, CausalLMCollator(self.tokenizer.pad_token_id), sampler=sampler,
                            loader_class=ResumableDataLoader)

    @property
    def evaluation_passes(self) -> dict[str, EvaluationPass]:
        """The held-out loss and the evaluation sets, by name, in the order of the validation dataloaders."""
        return {p.name: p for p in (self.heldout_loss, *self.evaluations)}

    def val_dataloader(self) -> dict[str, DataLoader]:
        """The held-out loss every epoch; the evaluation sets too when a round ends (and in ``validate``)."""
        trainer = self.trainer
        fitting = trainer is not None and trainer.state.fn == "fit"
        if fitting and trainer.sanity_checking:
            # Lightning keeps the sanity check's loaders for epoch 0's validation.
            due = self.evaluate_every_n_epochs == 1
        else:
            due = not fitting or (trainer.current_epoch + 1) % self.evaluate_every_n_epochs == 0
        if not due:
            return self._evaluation_loaders([])
        if not fitting:
            return self._evaluation_loaders(self.evaluations)
        # A set with `rounds` runs only at the end of those rounds (max_epochs = rounds x epochs per round).
        every = self.evaluate_every_n_epochs
        round, num_rounds = trainer.current_epoch // every, trainer.max_epochs // every
        return self._evaluation_loaders([e for e in self.evaluations if e.runs_at(round, num_rounds)])

    def test_dataloader(self) -> dict[str, DataLoader]:
        return self._evaluation_loaders(self.evaluations)

    def _evaluation_loaders(self, due: list[Evaluation]) -> dict[str, DataLoader]:
        """One loader per evaluation pass (``evaluation_passes``), named after it, always all of them in
        the same order: Lightning knows a validation loader by its position (and logged metrics by their
        loader's), so each pass keeps its position in every validation; a set that is not ``due`` gets an
        empty loader (Lightning's warning of it, "Total length of `DataLoader` across ranks is zero", is
        filtered in ``cli.main``)."""
        indices = length_sorted(np.flatnonzero(self.held_out), self.pool_lengths)
        pad = self.tokenizer.pad_token_id
        loaders = {self.heldout_loss.name: self._loader(indices, self.eval_batch_size, CausalLMCollator(pad))}
        for evaluation in self.evaluations:
            loaders[evaluation.name] = (evaluation.dataloader(self.eval_batch_size, self.num_workers, pad,
                                                              self.eval_batch_tokens)
                                        if evaluation in due else self._loader(indices[:0], 1, CausalLMCollator(pad)))
        return loaders

    def score_dataloader(self, indices: np.ndarray, extra_tokens: int = 0) -> DataLoader:
        """Prompts only (never the reference response), left-padded for generation, sorted by length.

        Batches of ``eval_batch_size`` prompts, or with ``score_batch_tokens`` as many as fit in that
        many tokens, counting each row as the batch's longest prompt plus ``extra_tokens`` (the tokens
        a generation pass adds), at most ``eval_batch_size`` x 8 rows.
        """
        indices = length_sorted(np.asarray(indices, dtype=np.int64), self.prompt_lengths)
        collator = CausalLMCollator(self.tokenizer.pad_token_id, padding_side="left", prompt_only=True)
        if self.score_batch_tokens is None:
            return self._loader(indices, self.eval_batch_size, collator)
        # A BatchSampler over positions into the Subset (0 .. len(indices) - 1, sorted), which Lightning can
        # wrap (predict) and re-instantiate around its distributed sampler (DDP).
        subset = Subset(self.pool, indices.tolist())
        sampler = TokenBudgetBatchSampler(SequentialSampler(subset), self.prompt_lengths[indices],
                                          self.score_batch_tokens, extra_tokens,
                                          max_rows=TOKEN_BATCH_MAX_ROWS_FACTOR * self.eval_batch_size)
        return DataLoader(subset, batch_sampler=sampler, collate_fn=collator, num_workers=self.num_workers)

    def predict_dataloader(self) -> DataLoader:
        candidates = self.unlabeled_indices()
        processes = self.trainer.world_size if self.trainer is not None else 1
        if not len(candidates):
            raise ValueError("predict: the pool has no unlabeled example to score (every one is labeled or held out)")
        # Lightning's predict loop shards without repeats: a process without a candidate fails deep in
        # its sampler (or skips the pass and leaves the others waiting in the writer's gather).
        if len(candidates) < processes:
            raise ValueError(
                f"predict: {len(candidates)} unlabeled pool examples to score on {processes} processes; each "
                f"process needs one at least: run on at most {len(candidates)} devices (--trainer.devices) or "
                "give a larger pool (data.pool)"
            )
        return self.score_dataloader(candidates)

    @property
    def pool_lengths(self) -> np.ndarray:
        return self.prompt_lengths + self.response_lengths

    def _loader(self, indices: np.ndarray, batch_size: int, collator: CausalLMCollator, sampler=None,
                loader_class: type[DataLoader] = DataLoader) -> DataLoader:
        return loader_class(
            Subset(self.pool, indices.tolist()),
            batch_size=batch_size,
            sampler=sampler,
            shuffle=False,
            collate_fn=collator,
            num_workers=self.num_workers,
            # Its own generator: drawing worker seeds from the global RNG would shift dropout masks
            # between a resumed and an uninterrupted run.
            generator=torch.Generator().manual_seed(self.seed),
        )

