"""``lightning-al predict``: write the uncertainty scores of the unlabeled pool, one row per id."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from lightning_al.model.inference import gather_examples
from lightning_al.scoring.statistics import SCORE_NAMES


class ScoreWriter(BasePredictionWriter):
    """Gathers ``predict_step`` outputs from every rank and writes them once, in pool order.

    Args:
        output_path: ``.jsonl`` or ``.parquet`` file (default: ``<run dir>/scores.jsonl``).
    """

    def __init__(self, output_path: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.output_path = output_path

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        # Scores in float64; embeddings float16, as predict_step returns them.
        local = {k: torch.cat([p[k] for p in predictions]) for k in ("index", *SCORE_NAMES, "embedding")}
        local.update({k: local[k].double() for k in SCORE_NAMES})
        rows = gather_examples(trainer.strategy, local)  # DDP pads with repeats: each example once
        if not trainer.is_global_zero:
            return
        embedding = rows.pop("embedding")
        frame = pd.DataFrame(rows)
        frame["embedding"] = list(embedding)
        dm = trainer.datamodule
        frame.insert(0, "task", dm.tasks[frame["index"].to_numpy()])
        frame.insert(0, "id", dm.ids[frame["index"].to_numpy()])
        frame = frame.drop(columns="index")
        frame["num_tokens"] = frame["num_tokens"].astype(int)
        path = Path(self.output_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".parquet":
            frame.to_parquet(path, index=False)
        else:
            frame.to_json(path, orient="records", lines=True)
        print(f"Wrote the scores of {len(frame)} pool examples to {path}")
