"""Score a set of pool examples with the current model, on every rank, and gather the results.

A pass can save its partial scores as it goes (``PartialScores``): a pass killed halfway resumes at
the batch after the last save, with the same batches, so its final scores are those of an
uninterrupted pass.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from tqdm.auto import tqdm

from lightning_al.data.batching import length_sorted
from lightning_al.model.inference import run_and_gather
from lightning_al.scoring.statistics import SCORE_NAMES


class ScoringInterrupted(Exception):
    """A scoring pass stopped because a stop was requested; its partial scores are saved."""

    def __init__(self, path: Path, done: int, total: int) -> None:
        super().__init__(f"scoring stopped after {done} of {total} examples; partial scores saved to {path}")
        self.path, self.done, self.total = path, done, total


@dataclass
class PartialScores:
    """Where and how often a scoring pass saves the scores it has so far (each rank its own file).

    Attributes:
        path: This rank's file.
        key: What the scores are valid for (the model, the candidates, the round); a file with another
            key is ignored, so a pass never mixes the scores of two models.
        every_n_batches: Save every this many batches (None: only by time).
        every_n_seconds: Save once this many seconds have passed since the last save (None: only by batches).
        stop_requested: Polled after every batch; when it says so, the pass saves and raises
            ``ScoringInterrupted``.
    """

    path: Path
    key: str
    every_n_batches: int | None = None
    every_n_seconds: float | None = 120.0
    stop_requested: Callable[[], bool] = lambda: False

    def load(self, key: str) -> tuple[int, dict[str, torch.Tensor]] | None:
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - a bad file only means starting the pass over
            rank_zero_info(f"Partial scores {self.path} do not load ({type(error).__name__}): scoring from the start")
            return None
        if state.get("key") != key:
            return None
        return int(state["done"]), state["scores"]

    def save(self, key: str, done: int, outputs: dict[str, list[torch.Tensor]]) -> None:
        scores = {k: torch.cat(v).cpu() if v else torch.empty(0) for k, v in outputs.items()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staged = self.path.with_name(f".{self.path.name}.partial")
        torch.save({"key": key, "done": done, "scores": scores}, staged)
        os.replace(staged, self.path)  # a kill while saving leaves the previous save whole


def score_pool(trainer: Trainer, pl_module: LightningModule, datamodule, indices: np.ndarray, desc: str = "Scoring",
               partial: PartialScores | None = None, embeddings: bool = False) -> dict[str, np.ndarray]:
    """Scores of ``indices`` (sorted pool indices; the result is aligned with them) through
    ``pl_module.predict_step``.

    Each rank scores a strided shard (similar lengths on every rank, since the order is length
    sorted); shards are padded to equal size for ``all_gather`` and the duplicates dropped after
    (``run_and_gather``, which also runs the module unwrapped in eval mode under the precision
    plugin's context). With ``partial``, the pass continues from the scores saved there and saves its
    own as it goes. With ``embeddings``, the result also holds ``"embedding"``: each prompt's
    embedding from the same forward pass, [len(indices), hidden] float16 (for diversity strategies).
    """
    if np.any(np.diff(indices) <= 0):
        raise ValueError("score_pool: indices must be sorted and unique")
    world, rank = trainer.world_size, trainer.global_rank
    ordered = indices[np.argsort(-datamodule.prompt_lengths[indices], kind="stable")]
    shard = ordered[rank::world]
    per_rank = -(-len(ordered) // world)
    if len(shard) < per_rank:
        shard = np.concatenate([shard, ordered[-1:].repeat(per_rank - len(shard))])
    # The order score_dataloader serves (it sorts again; a no-op here): a resumed pass skips a prefix of
    # it, a whole number of batches, so its remaining batches are those of an uninterrupted pass.
    shard = length_sorted(shard, datamodule.prompt_lengths)
    outputs: dict[str, list[torch.Tensor]] = {k: [] for k in ("index", *SCORE_NAMES, *(["embedding"] if embeddings else []))}
    done, saver = 0, None
    if partial is not None:
        batching = f"{datamodule.eval_batch_size}|{getattr(datamodule, 'score_batch_tokens', None)}|{embeddings}"
        key = hashlib.sha256(f"{partial.key}|{batching}|".encode() + shard.tobytes()).hexdigest()
        done, saved = partial.load(key) or (0, None)
        if saved is not None:
            for k, rows in outputs.items():
                rows.append(saved[k])
            rank_zero_info(f"{desc}: continuing a saved pass at example {done} of {len(shard)}")
        saver = _Saver(partial, key, done=done, total=len(shard))
    hp = pl_module.hparams
    generated = hp.get("score_source") == "generated"
    loader = datamodule.score_dataloader(shard[done:], extra_tokens=hp.get("max_new_tokens", 0) if generated else 0)
    bar = tqdm(loader, desc=desc, disable=not trainer.is_global_zero, dynamic_ncols=True, leave=False)

    def step(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        result = pl_module.predict_step(batch, 0)
        return {k: result[k].double() if k in SCORE_NAMES else result[k] for k in outputs}

    gathered = run_and_gather(trainer, pl_module, bar, step, outputs, after_batch=saver)
    position = np.searchsorted(indices, gathered["index"])
    scores = {k: np.full(len(indices), np.nan) for k in SCORE_NAMES}
    for k in SCORE_NAMES:
        scores[k][position] = gathered[k]
    if embeddings:
        scores["embedding"] = np.zeros((len(indices), gathered["embedding"].shape[-1]), dtype=np.float16)
        scores["embedding"][position] = gathered["embedding"]
    return scores


class _Saver:
    """After every batch of a pass: save its scores when due (by batches or time), when a stop is
    requested (then raise ``ScoringInterrupted`` unless the pass is done), and after its last batch,
    so that a kill before the acquisition is saved loses no scoring."""

    def __init__(self, partial: PartialScores, key: str, done: int, total: int) -> None:
        self.partial, self.key, self.done, self.total = partial, key, done, total
        self.last_save, self.unsaved = time.monotonic(), 0

    def __call__(self, outputs: dict[str, list[torch.Tensor]]) -> None:
        partial = self.partial
        self.done += len(outputs["index"][-1])
        self.unsaved += 1
        stop = partial.stop_requested()
        due = partial.every_n_batches is not None and self.unsaved >= partial.every_n_batches
        due |= partial.every_n_seconds is not None and time.monotonic() - self.last_save >= partial.every_n_seconds
        if stop or due or self.done >= self.total:
            partial.save(self.key, self.done, outputs)
            self.last_save, self.unsaved = time.monotonic(), 0
        if stop and self.done < self.total:
            raise ScoringInterrupted(partial.path, self.done, self.total)
