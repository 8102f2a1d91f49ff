"""The run folder: where one active-learning run keeps what it writes, and how it is read back.

Every writer (the loop, the evaluation records, the CLI's config) and every reader (the study runner,
the report) goes through this module, so the layout lives in one place::

    checkpoints/<run_name>/
        config.yaml                          the run's full LightningCLI config
        metrics.jsonl                        one row per (round, evaluation)
        rounds/round_<r>.jsonl               one row per example acquired in round r
        rounds/round_<r>/adapter/            the LoRA adapter trained in round r (peft format)
        evaluations/round_<r>/<set>.jsonl    one row per evaluation example
        scoring/round_<r>.rank<k>.pt         partial scores of a scoring pass cut short
        scores.jsonl                         the scores of ``lightning-al predict``
        *.ckpt                               checkpoints (lightning_al.checkpointing.RunCheckpoint)

A run is *finished* when ``metrics.jsonl`` holds a row of its last round. The *light records* of a run
(config, rounds, metrics, per-example evaluations) are all that the report reads: small enough to keep
in a repository, unlike checkpoints and adapters. Every JSON-lines file is written whole
(``write_jsonl``) with ``json.dumps`` rows, one per line, and read back by ``read_jsonl``.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

#: Where run folders go, relative to the working directory: ``checkpoints/<run_name>``.
ROOT = "checkpoints"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
ROUNDS = "rounds"
RECORDS = "evaluations"
SCORING = "scoring"
SCORES = "scores.jsonl"
#: What a run keeps as its light records: everything the report reads, no checkpoint or adapter.
LIGHT_RECORDS: tuple[str, ...] = (CONFIG, METRICS, f"{ROUNDS}/round_*.jsonl", f"{RECORDS}/**/*.jsonl")
_ROUND_FILE = re.compile(r"^round_(\d+)\.jsonl$")

Status = Literal["finished", "interrupted", "new"]


def run_dir_of(run_name: str) -> str:
    """The run folder of ``run_name``: ``checkpoints/<run_name>``."""
    return str(Path(ROOT) / run_name)


def scores_path_of(run_name: str) -> str:
    """Where ``lightning-al predict`` writes the pool's scores: ``checkpoints/<run_name>/scores.jsonl``."""
    return str(Path(run_dir_of(run_name)) / SCORES)


def metrics_file(run_dir: str | Path) -> Path:
    """``metrics.jsonl``: one row per (round, evaluation)."""
    return Path(run_dir) / METRICS


def rounds_dir(run_dir: str | Path) -> Path:
    """``rounds/``: the round files and the adapters."""
    return Path(run_dir) / ROUNDS


def round_file(run_dir: str | Path, round: int) -> Path:
    """``rounds/round_<r>.jsonl``: the examples acquired in round r."""
    return Path(run_dir) / ROUNDS / f"round_{round}.jsonl"


def adapter_dir(run_dir: str | Path, round: int) -> Path:
    """``rounds/round_<r>/adapter``: the adapter trained in round r."""
    return Path(run_dir) / ROUNDS / f"round_{round}" / "adapter"


def records_file(run_dir: str | Path, round: int, name: str) -> Path:
    """``evaluations/round_<r>/<name>.jsonl``: the per-example records of one evaluation of round r."""
    return Path(run_dir) / RECORDS / f"round_{round}" / f"{name}.jsonl"


def records_dir(run_dir: str | Path, round: int) -> Path:
    """``evaluations/round_<r>/``: the per-example records of round r's evaluations."""
    return Path(run_dir) / RECORDS / f"round_{round}"


def scoring_file(run_dir: str | Path, round: int, rank: int) -> Path:
    """``scoring/round_<r>.rank<k>.pt``: the partial scores of process k's scoring pass of round r."""
    return Path(run_dir) / SCORING / f"round_{round}.rank{rank}.pt"


def scoring_files(run_dir: str | Path, round: int) -> list[Path]:
    """Every process's partial scores of round r's scoring pass (see ``scoring_file``)."""
    return sorted((Path(run_dir) / SCORING).glob(f"round_{round}.*"))


def checkpoint_files(run_dir: str | Path) -> list[Path]:
    """The run's checkpoints (``*.ckpt``; named by ``lightning_al.checkpointing.RunCheckpoint``)."""
    return sorted(Path(run_dir).glob("*.ckpt"))


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is a run folder: it holds ``config.yaml`` and a ``rounds/`` folder."""
    path = Path(path)
    return (path / CONFIG).is_file() and (path / ROUNDS).is_dir()


def round_files(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(round, path) of every ``rounds/round_<r>.jsonl``, by round."""
    folder = Path(run_dir) / ROUNDS
    if not folder.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in folder.iterdir() if p.is_file() and (m := _ROUND_FILE.match(p.name)))


def read_records(run_dir: str | Path, round: int) -> dict[str, list[dict[str, Any]]]:
    """The per-example records of round r by evaluation name (the file's stem: ``heldout_loss``, ``bbh``, ...),
    in file-name order; {} when the round has none."""
    folder = records_dir(run_dir, round)
    if not folder.is_dir():
        return {}
    return {path.stem: read_jsonl(path) for path in sorted(folder.glob("*.jsonl"))}


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file; blank lines are skipped, a malformed line raises ValueError naming it."""
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: line {lineno}: malformed JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(  # noqa: TRY004 - bad file content, like the malformed line above
                    f"{path}: line {lineno}: expected a JSON object, got {type(row).__name__}"
                )
            rows.append(row)
    return rows


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write ``rows`` as JSON lines, replacing the file whole (a reader never sees half of it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    partial.replace(path)
    return path


def write_round(run_dir: str | Path, round: int, rows: Iterable[dict[str, Any]]) -> Path:
    """Write ``rounds/round_<r>.jsonl``, one row per acquired example."""
    return write_jsonl(round_file(run_dir, round), rows)


def write_records(run_dir: str | Path, round: int, name: str, rows: Iterable[dict[str, Any]]) -> Path:
    """Write ``evaluations/round_<r>/<name>.jsonl`` (replacing it: a round evaluated again after a resume)."""
    return write_jsonl(records_file(run_dir, round, name), rows)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl`` in file order; [] when there is none."""
    path = metrics_file(run_dir)
    return read_jsonl(path) if path.is_file() else []


def write_metrics(run_dir: str | Path, round: int, rows: Iterable[dict[str, Any]]) -> Path:
    """Write round r's rows of ``metrics.jsonl`` after the rows of earlier rounds. A round run again (after a
    resume from an earlier checkpoint) replaces its rows and drops those of later rounds."""
    kept = [row for row in read_metrics(run_dir) if row["round"] < round]
    return write_jsonl(metrics_file(run_dir), [*kept, *rows])


def metric_rounds(run_dir: str | Path) -> set[int]:
    """The rounds that have rows in ``metrics.jsonl`` (empty when there is none)."""
    return {int(row["round"]) for row in read_metrics(run_dir)}


def is_finished(run_dir: str | Path, rounds: int) -> bool:
    """Whether the run of ``rounds`` rounds wrote the metrics of its last round."""
    return rounds - 1 in metric_rounds(run_dir)


def progress(run_dir: str | Path, rounds: int) -> tuple[int, bool]:
    """(rounds done, finished) of a run of ``rounds`` rounds, as the report counts them: from ``metrics.jsonl``
    when it has rows (finished as in ``is_finished``); else, for a run that wrote no metrics, from the round
    files (finished when every round 0..m-1 has one)."""
    done = metric_rounds(run_dir)
    if done:
        return max(done) + 1, rounds - 1 in done
    present = {r for r, _ in round_files(run_dir)}
    return len(present), all(r in present for r in range(rounds))


def status(run_dir: str | Path, rounds: int) -> Status:
    """``finished`` (see ``is_finished``), ``interrupted`` (a killed run left something to resume from:
    a checkpoint, partial scores, an acquired round) or ``new``."""
    run_dir = Path(run_dir)
    if is_finished(run_dir, rounds):
        return "finished"
    started = bool(checkpoint_files(run_dir)) or any(run_dir.glob(f"{SCORING}/*")) or any(run_dir.glob(f"{ROUNDS}/*"))
    return "interrupted" if started else "new"


def save_records(run_dir: str | Path, records_dir: str | Path) -> Path:
    """Copy the light records of a run (see ``LIGHT_RECORDS``) to ``records_dir``, replacing an older copy
    whole; returns ``records_dir``."""
    run_dir, records_dir = Path(run_dir), Path(records_dir)
    staging = records_dir.with_name(records_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    for pattern in LIGHT_RECORDS:
        for source in sorted(run_dir.glob(pattern)):
            target = staging / source.relative_to(run_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    # Swapped in whole: a copy cut short never looks like a finished run's records.
    shutil.rmtree(records_dir, ignore_errors=True)
    staging.rename(records_dir)
    return records_dir
