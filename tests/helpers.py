"""Test-only callbacks, readers of run outputs and the driver of ``lightning-al`` processes."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from lightning.pytorch import Callback

REPO = Path(__file__).resolve().parents[1]


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


DRIVER = textwrap.dedent("""
    import importlib.util, json, os, sys, traceback
    import __main__
    import lightning_al.cli, lightning_al.commands  # imported once; every run is a forked child
    for line in sys.stdin:
        log, cwd, argv = json.loads(line)
        pid = os.fork()
        if pid == 0:
            os.chdir(cwd)
            out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(out, 1)
            os.dup2(out, 2)
            sys.argv = argv
            # As under `python -m lightning_al`: Lightning's DDP launcher starts the other ranks with
            # `python -m lightning_al.__main__ <the same arguments>`.
            __main__.__spec__ = importlib.util.find_spec("lightning_al.__main__")
            code = 0
            try:
                lightning_al.commands.main()
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
            except BaseException:
                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(json.dumps(os.waitstatus_to_exitcode(status)), flush=True)
    os._exit(0)  # nothing to clean up: the interpreter's own shutdown takes seconds
""")


class Driver:
    """Runs ``lightning-al`` commands as a new process would, in forked children of one process that imported
    the package once (most of a command's start-up); returns the exit status (-9: SIGKILL) and the output."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen([sys.executable, "-c", DRIVER], cwd=log_dir, env=env, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.runs = 0

    def run(self, cwd: Path, argv: list[str]) -> tuple[int, str]:
        """``argv`` as sys.argv (``["lightning-al", "fit", ...]``), run in ``cwd``."""
        return self.result(self.start(cwd, argv))

    def start(self, cwd: Path, argv: list[str]) -> Path:
        """Starts a run (see ``run``) and returns at once; ``result`` waits for it. One run at a time."""
        self.runs += 1
        log = self.log_dir / f"run-{self.runs}.log"
        self.process.stdin.write(json.dumps([str(log), str(cwd), argv]) + "\n")
        self.process.stdin.flush()
        return log

    def result(self, log: Path) -> tuple[int, str]:
        """The exit status and output of the run that ``start`` started."""
        line = self.process.stdout.readline()
        assert line, f"the driver died; {log.read_text()[-3000:] if log.exists() else ''}"
        return json.loads(line), log.read_text()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)
