"""A test-only callback that kills its own process at a named phase of a run, once.

Phases (the first whose marker file is missing is armed; its marker is written just before the kill,
so the same command run again passes it and stops at the next one):

- ``scoring:<round>:<k>``: at the start of the k-th batch (1-based) of round <round>'s scoring pass;
- ``acquired:<round>``: after round <round>'s acquisition in ``on_fit_start``, before its checkpoint;
- ``step:<n>``: at the end of training step n, before that step's checkpoint;
- ``eval:<epoch>``: after the first batch of the evaluation sets in epoch <epoch>'s validation.

A phase ending in ``@SIGTERM`` (``@SIGINT``, ...) sends that signal instead of SIGKILL: the run stops
itself at its next whole state. With ``run``, only the run whose folder has that name is killed (a study's cell).
"""

import os
import signal
from pathlib import Path

from lightning.pytorch import Callback

from lightning_al.loop import ActiveLearningLoop


class KillAt(Callback):
    def __init__(self, phases: list[str], marker_dir: str, run: str | None = None) -> None:
        self.phases = phases
        self.marker_dir = Path(marker_dir)
        self.run = run
        self.scored: dict[int, int] = {}

    @property
    def armed(self) -> tuple[str, int] | None:
        for phase in self.phases:
            if not (self.marker_dir / phase.replace(":", "_")).exists():
                name, _, how = phase.partition("@")
                return name, getattr(signal, how) if how else signal.SIGKILL
        return None

    def _kill_if(self, name: str) -> None:
        if self.run is not None and self.loop.run_dir.name != self.run:
            return
        armed = self.armed
        if armed is not None and armed[0] == name:
            phase = next(p for p in self.phases if p.partition("@")[0] == name)
            self.marker_dir.mkdir(parents=True, exist_ok=True)
            (self.marker_dir / phase.replace(":", "_")).touch()
            os.kill(os.getpid(), armed[1])

    def setup(self, trainer, pl_module, stage) -> None:
        loop = next(c for c in trainer.callbacks if isinstance(c, ActiveLearningLoop))
        predict_step = pl_module.predict_step

        def counted(batch, *args, **kwargs):
            round = loop.round + 1  # the pass that acquires the next round
            self.scored[round] = self.scored.get(round, 0) + 1
            self._kill_if(f"scoring:{round}:{self.scored[round]}")
            return predict_step(batch, *args, **kwargs)

        pl_module.predict_step = counted
        self.loop = loop

    def on_train_start(self, trainer, pl_module) -> None:
        self._kill_if(f"acquired:{self.loop.round}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._kill_if(f"step:{trainer.global_step}")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if dataloader_idx >= 1 and not trainer.sanity_checking:
            self._kill_if(f"eval:{trainer.current_epoch}")
