"""Score a set of pool examples with the current model, on every rank, and gather the results."""

from __future__ import annotations

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from tqdm.auto import tqdm

from lightning_al.scoring.statistics import SCORE_NAMES


@torch.inference_mode()
def score_pool(trainer: Trainer, pl_module: LightningModule, datamodule, indices: np.ndarray, desc: str = "Scoring") -> dict[str, np.ndarray]:
    """Scores of ``indices`` (sorted pool indices; the result is aligned with them) through
    ``pl_module.predict_step``.

    Each rank scores a strided shard (similar lengths on every rank, since the order is length
    sorted); shards are padded to equal size for ``all_gather`` and the duplicates dropped after.
    The module runs unwrapped (no DDP forward) in eval mode under the precision plugin's context.
    """
    if np.any(np.diff(indices) <= 0):
        raise ValueError("score_pool: indices must be sorted and unique")
    world, rank = trainer.world_size, trainer.global_rank
    ordered = indices[np.argsort(-datamodule.prompt_lengths[indices], kind="stable")]
    shard = ordered[rank::world]
    per_rank = -(-len(ordered) // world)
    if len(shard) < per_rank:
        shard = np.concatenate([shard, ordered[-1:].repeat(per_rank - len(shard))])
    was_training = pl_module.training
    pl_module.eval()
    outputs: dict[str, list[torch.Tensor]] = {k: [] for k in ("index", *SCORE_NAMES)}
    loader = datamodule.score_dataloader(shard)
    bar = tqdm(loader, desc=desc, disable=not trainer.is_global_zero, dynamic_ncols=True, leave=False)
    with trainer.precision_plugin.predict_step_context():
        for batch in bar:
            batch = trainer.strategy.batch_to_device(batch)
            result = pl_module.predict_step(batch, 0)
            for k in outputs:
                outputs[k].append(result[k].double() if k != "index" else result[k])
    pl_module.train(was_training)
    local = {k: torch.cat(v) if v else torch.empty(0) for k, v in outputs.items()}
    gathered = {k: trainer.strategy.all_gather(v).reshape(-1).cpu().numpy() for k, v in local.items()}
    position = np.searchsorted(indices, gathered["index"])
    scores = {k: np.full(len(indices), np.nan) for k in SCORE_NAMES}
    for k in SCORE_NAMES:
        scores[k][position] = gathered[k]
    return scores
