"""Diversity of acquired sets: the mean pairwise cosine distance of the initial model's prompt embeddings.

An embedding is ``lightning_al.model.inference.prompt_embeddings``: the mean of the last hidden states over
the prompt's own tokens, L2-normalised, the same definition as the embeddings the scoring pass returns. The
initial model (the base with the adapter switched off) embeds every set of every run, so the figures compare
across rounds, strategies and m. ``prompt_embedding_pass`` also gives the diversity strategies the current
model's embeddings when no scoring pass made them.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer

from lightning_al.model.inference import decoder_hidden_states, prompt_embeddings, run_and_gather


class SelectionDiversity:
    """Measures, at a round's end, the diversity of the round's acquired set (``diversity``) and of all labels
    so far (``diversity_labeled``), each on a seeded sample of at most ``sample`` examples.

    Args:
        sample: Examples per set whose embeddings are compared (``loop.diversity_sample``).
    """

    def __init__(self, sample: int) -> None:
        if sample < 1:
            raise ValueError(f"loop.diversity_sample must be >= 1 (0 turns the analysis off), got {sample}")
        self.sample = sample

    def measure(self, trainer: Trainer, pl_module: LightningModule, round: int, seed: int) -> dict[str, float]:
        """``diversity``, ``diversity_labeled`` and ``diversity_sample`` (the size of the round's sample), after
        round ``round`` of a run seeded with ``seed``: the same sample in every process."""
        dm = trainer.datamodule
        rng = np.random.default_rng([seed, round, 1])
        sets = {"diversity": dm.labeled_indices(round), "diversity_labeled": dm.labeled_indices()}
        result: dict[str, float] = {}
        for key, indices in sets.items():
            sample = np.sort(rng.choice(indices, min(self.sample, len(indices)), replace=False))
            embeddings = prompt_embedding_pass(trainer, pl_module, dm, sample, adapter=False)
            result[key] = mean_pairwise_cosine_distance(embeddings)
        result["diversity_sample"] = float(min(self.sample, len(sets["diversity"])))
        return result


def mean_pairwise_cosine_distance(embeddings: torch.Tensor) -> float:
    """Mean of 1 - cos(x_i, x_j) over the pairs i != j (NaN with fewer than two rows)."""
    n = embeddings.shape[0]
    if n < 2:
        return float("nan")
    unit = torch.nn.functional.normalize(embeddings.double(), dim=-1)
    similarity = unit @ unit.T
    return float((n * n - similarity.sum()) / (n * (n - 1)))  # the diagonal adds n * (1 - 1) = 0


def prompt_embedding_pass(trainer: Trainer, pl_module: LightningModule, datamodule, indices: np.ndarray,
                          adapter: bool = True) -> torch.Tensor:
    """Prompt embeddings [len(indices), hidden] (in ``indices`` order), float32, from a forward pass of
    the prompts (no generation) by the current model, or with ``adapter=False`` the initial model.

    Each process embeds a strided shard of ``indices`` (padded with the last index to equal sizes) and
    gets every process's rows back: a collective, every process must call it with the same ``indices``.
    One process embeds them in the order given, as the batches of ``score_dataloader(indices)``.
    """
    world, rank = trainer.world_size, trainer.global_rank
    shard = indices[rank::world]
    per_rank = -(-len(indices) // world)
    shard = np.concatenate([shard, indices[-1:].repeat(per_rank - len(shard))])
    base = pl_module.model.get_base_model()

    def step(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        hidden = decoder_hidden_states(base, batch["input_ids"], batch["attention_mask"])
        return {"index": batch["index"], "embedding": prompt_embeddings(hidden, batch)}

    initial = pl_module.model.disable_adapter() if not adapter else contextlib.nullcontext()
    with initial:
        gathered = run_and_gather(trainer, pl_module, datamodule.score_dataloader(shard), step,
                                  {"index": [], "embedding": []})
    return torch.from_numpy(gathered["embedding"][np.searchsorted(gathered["index"], indices)])
