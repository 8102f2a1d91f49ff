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

from lightning_al.model.inference import decoder_hidden_states, prompt_embeddings


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


@torch.inference_mode()
def prompt_embedding_pass(trainer: Trainer, pl_module: LightningModule, datamodule, indices: np.ndarray,
                          adapter: bool = True) -> torch.Tensor:
    """Prompt embeddings [len(indices), hidden] (in ``indices`` order), float32, from a forward pass of
    the prompts (no generation) by the current model, or with ``adapter=False`` the initial model."""
    was_training = pl_module.training
    pl_module.eval()
    rows, vectors = [], []
    base = pl_module.model.get_base_model()
    initial = pl_module.model.disable_adapter() if not adapter else contextlib.nullcontext()
    try:
        with trainer.precision_plugin.predict_step_context(), initial:
            for batch in datamodule.score_dataloader(indices):
                batch = trainer.strategy.batch_to_device(batch)
                hidden = decoder_hidden_states(base, batch["input_ids"], batch["attention_mask"])
                vectors.append(prompt_embeddings(hidden, batch).cpu())
                rows.append(batch["index"].cpu())
    finally:
        pl_module.train(was_training)
    order = torch.argsort(torch.cat(rows))
    position = torch.as_tensor(np.argsort(np.argsort(indices)))
    return torch.cat(vectors)[order][position]
