"""Checkpoints of an active-learning run, chosen so that a kill at any moment loses little.

``RunCheckpoint`` writes every checkpoint of a run into its run folder:

- right after every acquisition, round 0 included (``round=<r>.ckpt``): the labels of a round are
  never paid for twice;
- after a round's training and evaluation, before the next round's scoring pass;
- at the end of every epoch, and every ``every_n_train_steps`` steps / ``every_n_minutes`` minutes
  within an epoch (the train dataloader's position rides along, so a resumed run trains on the
  same batches in the same order);
- when SIGTERM, SIGINT or the SLURM requeue signal arrives: at the next point where the state is
  whole (after the current training batch, or the current batch of a scoring pass, whose partial
  scores are saved), then the process exits with 128 + the signal number and prints the command
  that resumes.

Each file is written beside its final name and renamed onto it, so ``last.ckpt`` is always a whole
checkpoint. ``resolve_checkpoint`` turns ``ckpt_path="last"`` into the newest loadable checkpoint of
the run folder, falling back past a corrupt one, or into a fresh start when there is none.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightning_al import run_folder

Retention = Literal["rounds", "epochs", "last"]

LAST = "last.ckpt"

class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded (truncated, corrupt, or not a checkpoint)."""


class RunCheckpoint(Checkpoint):
    """Checkpoints of an active-learning run, all in its run folder (see the module docstring for when).

    Args:
        dirpath: The run folder (linked from ``run_name`` by the CLI: ``checkpoints/<run_name>``).
        every_n_train_steps: Also checkpoint (``last.ckpt``) every this many training steps within an
            epoch; None: only ``every_n_minutes``.
        every_n_minutes: Also checkpoint within an epoch once this many minutes have passed since the
            last checkpoint; None: only ``every_n_train_steps``.
        keep: The checkpoints kept besides ``last.ckpt``: ``rounds`` (``round=<r>.ckpt``, the state right
            after round r's acquisition), ``epochs`` (those and ``epoch=<e>.ckpt`` of every epoch) or
            ``last`` (none).
        scores_every_n_batches: A scoring pass saves its partial scores (``scoring/``) every this many
            batches; None: only ``scores_every_n_minutes``.
        scores_every_n_minutes: ... and once this many minutes have passed since its last save.
    """

    def __init__(
        self,
        dirpath: str = "checkpoints/run",
        every_n_train_steps: int | None = None,
        every_n_minutes: float | None = 5.0,
        keep: Retention = "rounds",
        scores_every_n_batches: int | None = None,
        scores_every_n_minutes: float | None = 2.0,
    ) -> None:
        if keep not in ("rounds", "epochs", "last"):
            raise ValueError(f"checkpoint.keep: one of rounds, epochs, last; got {keep!r}")
        for key, value in (("every_n_train_steps", every_n_train_steps), ("every_n_minutes", every_n_minutes),
                           ("scores_every_n_batches", scores_every_n_batches),
                           ("scores_every_n_minutes", scores_every_n_minutes)):
            if value is not None and value <= 0:
                raise ValueError(f"checkpoint.{key}: must be > 0 (or null for off), got {value}")
        self.dirpath = Path(dirpath)
        self.every_n_train_steps = every_n_train_steps
        self.every_n_minutes = every_n_minutes
        self.keep = keep
        self.scores_every_n_batches = scores_every_n_batches
        self.scores_every_n_minutes = scores_every_n_minutes
        #: The signal that asked the run to stop at its next whole state (None: none yet).
        self.stop_signal: int | None = None
        #: A round acquired and not yet in a checkpoint: saved as ``round=<r>.ckpt`` at the next save.
        self._round_due: int | None = None
        self._last_save = time.monotonic()
        self._handlers: dict[int, Any] = {}
        self._requeue_signal: int | None = None
        self._interrupt_saved = False

    @property
    def last_model_path(self) -> str:
        return str(self.dirpath / LAST)

    # ---------------------------------------------------------------- signals
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.stop_signal = None
        self._interrupt_saved = False
        self._last_save = time.monotonic()
        # Installed before Lightning's own handlers (registered after on_fit_start), which call the ones
        # already there: so round 0's scoring pass is covered too. A requeue-signal handler of ours also
        # keeps Lightning from saving its hpc checkpoint from inside the handler, at an arbitrary point.
        environment = getattr(trainer.strategy, "cluster_environment", None)
        if environment is None and SLURMEnvironment.detect():
            environment = SLURMEnvironment()  # what Lightning uses on SLURM with a single-device strategy
        signals = [signal.SIGTERM, signal.SIGINT]
        if getattr(environment, "auto_requeue", False) and getattr(environment, "requeue_signal", None) is not None:
            self._requeue_signal = int(environment.requeue_signal)
            signals.append(environment.requeue_signal)
        if threading.current_thread() is threading.main_thread():
            for signum in signals:
                self._handlers[int(signum)] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        if self.stop_signal is None:
            self.stop_signal = signum
            name = signal.Signals(signum).name
            print(f"\n{name} received: checkpointing at the next whole state, then stopping"
                  + (" (Ctrl-C again to stop at once)" if signum == signal.SIGINT else ""), file=sys.stderr, flush=True)
        previous = self._handlers.get(signum)
        if signum == signal.SIGTERM and callable(previous):
            previous(signum, frame)

    def _restore_handlers(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum, handler in self._handlers.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._handlers = {}

    def stop_requested(self, trainer: Trainer) -> bool:
        """Whether a signal asked the run to stop (on any rank: every rank must stop at the same batch)."""
        asked = self.stop_signal is not None or trainer.received_sigterm
        if trainer.world_size > 1:
            asked = trainer.strategy.reduce_boolean_decision(asked, all=False)
        return bool(asked)

    def stop(self, trainer: Trainer, saved: str) -> None:
        """Stop the run after its state was saved (``saved`` says where): print how to resume and exit
        with 128 + the signal number."""
        signum = self.stop_signal or signal.SIGTERM
        self._interrupt_saved = True
        if trainer.is_global_zero:
            self._requeue(signum)
            print(f"Stopped by {signal.Signals(signum).name}; {saved}. Resume with:\n  {resume_command()}",
                  file=sys.stderr, flush=True)
        raise SIGTERMException(128 + int(signum))

    def _requeue(self, signum: int) -> None:
        job = os.environ.get("SLURM_JOB_ID")
        if signum != self._requeue_signal or job is None:
            return
        if os.environ.get("SLURM_ARRAY_JOB_ID"):
            job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        code = os.system(f"scontrol requeue {shlex.quote(job)}")
        print(f"Requeued SLURM job {job}" if code == 0 else f"scontrol requeue {job} failed ({code})",
              file=sys.stderr, flush=True)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._restore_handlers()
        if isinstance(exception, SIGTERMException):
            if exception.code in (None, 0):
                # Lightning's own SIGTERMException exits with 0, which a scheduler reads as "finished".
                exception.code = 128 + int(self.stop_signal or signal.SIGTERM)
            if not self._interrupt_saved and trainer.is_global_zero:
                print(f"Stopped by a signal before a whole state to checkpoint; the run resumes from its newest "
                      f"checkpoint in {self.dirpath}. Resume with:\n  {resume_command()}", file=sys.stderr, flush=True)
        elif isinstance(exception, KeyboardInterrupt) and trainer.is_global_zero:
            print(f"Interrupted; the run resumes from its newest checkpoint in {self.dirpath}. Resume with:\n"
                  f"  {resume_command()}", file=sys.stderr, flush=True)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._restore_handlers()

    # ---------------------------------------------------------------- saving
    def save(self, trainer: Trainer, name: str = LAST) -> Path:
        """Write a checkpoint of the run now (all ranks call this); ``last.ckpt`` always follows it."""
        target = self.dirpath / name
        partial = target.with_name(f".{target.name}.partial")
        trainer.save_checkpoint(partial, weights_only=False)  # the whole state, not the weights only
        if trainer.is_global_zero:
            os.replace(partial, target)  # a rename in one folder: last.ckpt is never half written
            if name != LAST:
                _link_or_copy(target, self.dirpath / LAST)
        trainer.strategy.barrier("RunCheckpoint.save")
        self._last_save = time.monotonic()
        return target

    def round_acquired(self, round: int) -> None:
        """The loop acquired ``round``: the next save is its round checkpoint."""
        self._round_due = round

    def save_round(self, trainer: Trainer) -> Path:
        """Save the pending round checkpoint (``last.ckpt`` only under ``keep=last``)."""
        round, self._round_due = self._round_due, None
        path = self.save(trainer, LAST if self.keep == "last" or round is None else f"round={round}.ckpt")
        if trainer.is_global_zero and round is not None:
            # Its scoring pass is in the checkpoint now: the partial scores are not needed any more.
            for stale in run_folder.scoring_files(self.dirpath, round):
                stale.unlink(missing_ok=True)
        return path

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Round 0 (and a round acquired on resume) was acquired in on_fit_start, before Lightning restored
        # the loops: here the checkpoint holds the whole state.
        if self._round_due is not None:
            path = self.save_round(trainer)
            if self.stop_requested(trainer):
                self.stop(trainer, f"checkpoint {path} (right after the acquisition, before training)")

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # The last batch of an epoch is left to the epoch-end checkpoint: from a checkpoint taken
        # there, Lightning would resume after the epoch end, skipping the validation and the round end.
        last_batch = batch_idx + 1 >= trainer.num_training_batches
        whole = (batch_idx + 1) % trainer.accumulate_grad_batches == 0 and not last_batch
        stop = self.stop_requested(trainer)
        if stop and whole:
            path = self.save(trainer)
            self.stop(trainer, f"checkpoint {path} (epoch {trainer.current_epoch}, step {trainer.global_step})")
        if stop or not whole:
            return
        due = self.every_n_train_steps is not None and trainer.global_step % self.every_n_train_steps == 0
        if self.every_n_minutes is not None:
            late = time.monotonic() - self._last_save >= 60 * self.every_n_minutes
            due |= bool(trainer.strategy.broadcast(late))  # every rank must save at the same step
        if due:
            self.save(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Runs after the loop's hook (Lightning orders checkpoint callbacks last): a round acquired at
        # this epoch's end is in this checkpoint, with its reset adapter and new optimizer.
        if self._round_due is not None:
            path = self.save_round(trainer)
            if self.keep == "epochs":
                _link_or_copy_on_zero(trainer, path, self.dirpath / f"epoch={trainer.current_epoch}.ckpt")
        else:
            path = self.save(trainer, f"epoch={trainer.current_epoch}.ckpt" if self.keep == "epochs" else LAST)
        if self.stop_requested(trainer):
            self.stop(trainer, f"checkpoint {path} (end of epoch {trainer.current_epoch})")


def _link_or_copy(source: Path, target: Path) -> None:
    """``target`` becomes a whole copy of ``source`` at once (a hard link where the file system has them)."""
    staged = target.with_name(f".{target.name}.partial")
    staged.unlink(missing_ok=True)
    try:
        os.link(source, staged)
    except OSError:
        import shutil

        shutil.copyfile(source, staged)
    os.replace(staged, target)


def _link_or_copy_on_zero(trainer: Trainer, source: Path, target: Path) -> None:
    if trainer.is_global_zero:
        _link_or_copy(source, target)


# -------------------------------------------------------------------- resuming
def check_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at ``path``; a ``CheckpointError`` naming ``path`` unless it loads (with
    ``torch.load(weights_only=True)``: a checkpoint of this system never needs more)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except Exception as error:  # noqa: BLE001 - any failure to load means the same thing here
        # torch's own message may suggest loading with weights_only=False: never do that with a file
        # that fails here, so only the kind of failure is kept.
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        detail = type(error).__name__
        if first and "weights_only" not in str(error):
            detail += f": {first}"
        raise CheckpointError(f"checkpoint {path} cannot be loaded; it is truncated or corrupt ({detail})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"checkpoint {path} cannot be loaded; it is not a Lightning checkpoint")
    return checkpoint


def _resuming_from(path: str | Path, checkpoint: dict[str, Any]) -> str:
    where = f"epoch {checkpoint.get('epoch', '?')}, global step {checkpoint.get('global_step', '?')}"
    rank_zero_info(f"Checkpoint {path} ({where})")
    return str(path)


def resolve_checkpoint(run_dir: str | Path, ckpt_path: str | Path | None) -> str | None:
    """The checkpoint ``fit`` should resume from.

    ``"last"``: ``last.ckpt`` of ``run_dir`` if it loads, else the newest other checkpoint there that
    loads (saying which one was skipped and why); None, with a one-line message, when the folder holds
    none (the run starts from the beginning; a partial scoring pass there is still reused). Any other
    path must load: a ``CheckpointError`` names it otherwise. None stays None.
    """
    if ckpt_path is None:
        return None
    if str(ckpt_path) != "last":
        return _resuming_from(ckpt_path, check_checkpoint(ckpt_path))
    run_dir = Path(run_dir)
    others = sorted((p for p in run_folder.checkpoint_files(run_dir) if p.name != LAST),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    candidates = [run_dir / LAST] * (run_dir / LAST).exists() + others
    skipped: list[str] = []
    for path in candidates:
        try:
            checkpoint = check_checkpoint(path)
        except CheckpointError as error:
            skipped.append(str(error))
            continue
        if skipped:
            rank_zero_warn("; ".join(skipped) + f". Resuming from the newest loadable one instead: {path}")
        return _resuming_from(path, checkpoint)
    if skipped:
        rank_zero_warn("; ".join(skipped) + ".")
    rank_zero_info(f"--ckpt_path last: no loadable checkpoint in {run_dir} yet, so the run starts from the "
                   "beginning (a partial scoring pass saved there is reused).")
    return None


def resume_command(argv: list[str] | None = None) -> str:
    """The command line that resumes this process's run: the same command plus ``--ckpt_path last``
    (a study resumes its cells by itself, so its command stays as it is)."""
    argv = list(argv if argv is not None else sys.argv)
    program = Path(argv[0]).name if argv else ""
    if program == "lightning-al":
        command = ["lightning-al"]
    elif program == "__main__.py" or program == "-m":
        command = [Path(sys.executable).name, "-m", "lightning_al"]
    else:
        return "the same fit call with ckpt_path=lightning_al.checkpointing.resolve_checkpoint(<run folder>, 'last')"
    args, skip = [], False
    for arg in argv[1:]:
        if skip:
            skip = False
            continue
        if arg == "--ckpt_path":
            skip = True
            continue
        if arg.startswith("--ckpt_path="):
            continue
        args.append(arg)
    if args[:1] != ["study"]:
        args += ["--ckpt_path", "last"]
    return shlex.join(command + args)
