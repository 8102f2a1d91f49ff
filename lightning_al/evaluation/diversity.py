"""Diversity of an acquired set: mean pairwise cosine distance of the initial model's prompt embeddings.

An embedding is the mean of the last hidden states over the prompt's own tokens (template tokens
are the same in every prompt and would only pull every pair together). The initial model (the
base with the adapter switched off) embeds every set of every run, so the figures compare across
rounds, strategies and m.
"""

from __future__ import annotations

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer

from lightning_al.model.inference import decoder_hidden_states


def mean_pairwise_cosine_distance(embeddings: torch.Tensor) -> float:
    """Mean of 1 - cos(x_i, x_j) over the pairs i != j (NaN with fewer than two rows)."""
    n = embeddings.shape[0]
    if n < 2:
        return float("nan")
    unit = torch.nn.functional.normalize(embeddings.double(), dim=-1)
    similarity = unit @ unit.T
    return float((n * n - similarity.sum()) / (n * (n - 1)))  # the diagonal adds n * (1 - 1) = 0


@torch.inference_mode()
def initial_model_embeddings(trainer: Trainer, pl_module: LightningModule, datamodule, indices: np.ndarray) -> torch.Tensor:
    """Mean-pooled prompt embeddings [len(indices), hidden] (in ``indices`` order) by the initial model."""
    was_training = pl_module.training
    pl_module.eval()
    rows, vectors = [], []
    base = pl_module.model.get_base_model()
    with trainer.precision_plugin.predict_step_context(), pl_module.model.disable_adapter():
        for batch in datamodule.score_dataloader(indices):
            batch = trainer.strategy.batch_to_device(batch)
            hidden = decoder_hidden_states(base, batch["input_ids"], batch["attention_mask"]).float()
            width = batch["input_ids"].shape[1]
            offset = width - batch["attention_mask"].sum(1, keepdim=True)
            column = torch.arange(width, device=hidden.device).unsqueeze(0) - offset
            inside = (column >= batch["content_start"].unsqueeze(1)) & (column < batch["content_end"].unsqueeze(1))
            inside = inside.unsqueeze(-1).to(hidden.dtype)
            vectors.append(((hidden * inside).sum(1) / inside.sum(1).clamp(min=1)).cpu())
            rows.append(batch["index"].cpu())
    pl_module.train(was_training)
    order = torch.argsort(torch.cat(rows))
    position = torch.as_tensor(np.argsort(np.argsort(indices)))
    return torch.cat(vectors)[order][position]
