"""Test-only callbacks and readers of run outputs."""

import json
from pathlib import Path

from lightning.pytorch import Callback


class Crash(RuntimeError):
    pass


class CrashAtEpoch(Callback):
    """Simulates a pre-emption at the start of an epoch, after the previous epoch's checkpoint."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise Crash(f"simulated crash at epoch {self.epoch}")


def read_rounds(run_dir: Path) -> dict[int, list[dict]]:
    rounds = {}
    for path in sorted((run_dir / "rounds").glob("round_*.jsonl")):
        rounds[int(path.stem.split("_")[1])] = [json.loads(line) for line in path.read_text().splitlines()]
    return rounds
