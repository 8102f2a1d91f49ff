"""Diversity of an acquired set: mean pairwise cosine distance of the initial model's prompt embeddings.

An embedding is ``prompt_embeddings``: the mean of the last hidden states over the prompt's own
tokens, L2-normalised, the same definition as the embeddings the scoring pass returns. The initial model (the
base with the adapter switched off) embeds every set of every run, so the figures compare across
rounds, strategies and m.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer

from lightning_al.model.inference import decoder_hidden_states, prompt_embeddings


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


def initial_model_embeddings(trainer: Trainer, pl_module: LightningModule, datamodule, indices: np.ndarray) -> torch.Tensor:
    """Prompt embeddings [len(indices), hidden] (in ``indices`` order) by the initial model (adapter off)."""
    return prompt_embedding_pass(trainer, pl_module, datamodule, indices, adapter=False)
