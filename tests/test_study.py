"""The study command: a 2 strategies x 2 m grid on the tiny setup, killed mid-cell and run again,
then the report computed from the run directories."""

import json
import shutil
from pathlib import Path

import pandas as pd

from lightning_al.report.command import make_report
from lightning_al.study import main as study
from tests.conftest import tiny_run_args
from tests.helpers import read_rounds

CONFIG = "study:\n  name: mini\n  strategies: [random, entropy]\n  rounds: [1, 2]\n  seeds: [3]\n"


def _ids(run_dir):
    return {row["id"] for rows in read_rounds(run_dir).values() for row in rows}


def test_study_resumes_after_a_kill_and_reports(workdir, driver):
    (workdir / "study.yaml").write_text(CONFIG)
    overrides = [a for a in tiny_run_args(workdir, **{"loop.epochs_per_round": 1,
                                                      "data.pool.init_args.num_examples": 64})  # 48 candidates
                 if not a.startswith(("--run_name", "--seed_everything"))]
    # `lightning-al study` in a process of its own, killed (SIGKILL) in the middle of the second cell: at the
    # end of its first training step, after the checkpoint of its round 0.
    kill = json.dumps({"class_path": "tests.kill_switch.KillAt",
                       "init_args": {"phases": ["step:1"], "marker_dir": str(workdir / "markers"),
                                     "run": "random-m2-s3"}})
    code, log = driver.run(workdir, ["lightning-al", "study", "--config=study.yaml", "--no_report", *overrides,
                                     f"--trainer.callbacks=[{kill}]"])
    assert code == -9, log[-3000:]
    second = workdir / "checkpoints" / "mini" / "random-m2-s3"
    assert (second / "last.ckpt").exists()
    first = workdir / "checkpoints" / "mini" / "random-m1-s3"
    assert (first / "metrics.jsonl").exists() and not (second / "metrics.jsonl").exists()
    stamps = {p: p.stat().st_mtime_ns for p in [*first.rglob("*.jsonl"), second / "rounds" / "round_0.jsonl"]}

    ran = study(["--config=study.yaml", "--report_dir=report", "--records_dir=records", *overrides])
    assert [c.name for c in ran] == ["random-m2-s3", "entropy-m1-s3", "entropy-m2-s3"]
    # The finished cell is untouched; the interrupted one resumed (its round 0 is not acquired again).
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items())
    runs = {c: workdir / "checkpoints" / "mini" / c for c in ("random-m1-s3", "random-m2-s3", "entropy-m1-s3",
                                                               "entropy-m2-s3")}
    for name, run_dir in runs.items():
        m = int(name.split("-m")[1][0])
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert sorted({r["round"] for r in rows}) == list(range(m)) and len(_ids(run_dir)) == 40
    assert study(["--config=study.yaml", "--no_report", *overrides]) == []  # nothing left to do

    report = workdir / "report"
    text = (report / "report.md").read_text()
    for cell in ("random", "entropy"):
        assert f"| {cell} |" in text
    for name in ("metrics.csv", "acquired.csv", "overlap.csv", "selection.csv", "cost.csv", "final.csv",
                 "plots/final_metrics.png", "plots/task_composition.png", "plots/score_distributions.png",
                 "plots/lengths.png", "plots/curve_heldout_loss.png"):
        assert (report / name).stat().st_size > 0, name
    final = pd.read_csv(report / "final.csv")
    assert len(final[(final["evaluation"] == "heldout") & (final["metric"] == "loss")]) == 4  # 2 strategies x 2 m
    overlap = pd.read_csv(report / "overlap.csv")
    ids = {name: _ids(run_dir) for name, run_dir in runs.items()}

    def jaccard(a, b):
        return len(ids[a] & ids[b]) / len(ids[a] | ids[b])

    expected = {("random-m1-s3", "random-m2-s3"), ("entropy-m1-s3", "entropy-m2-s3"),
                ("random-m1-s3", "entropy-m1-s3"), ("random-m2-s3", "entropy-m2-s3")}
    got = {}
    for row in overlap.itertuples():
        a, b = row.run_a.rsplit("/", 1)[-1], row.run_b.rsplit("/", 1)[-1]
        got[tuple(sorted((a, b), key=list(runs).index))] = row.jaccard
    assert set(got) == expected
    for a, b in expected:
        assert abs(got[(a, b)] - jaccard(a, b)) < 1e-12

    # Light records: what the report reads, no checkpoint or adapter; with them, a cell never runs again
    # even where its run directory is gone (a fresh clone), and the report reads them alone.
    records = workdir / "records"
    for name, run_dir in runs.items():
        kept = {p.relative_to(records / name) for p in (records / name).rglob("*") if p.is_file()}
        assert {p.suffix for p in kept} == {".yaml", ".jsonl"} and Path("config.yaml") in kept
        for path in kept:
            assert (records / name / path).read_bytes() == (run_dir / path).read_bytes()
        assert Path("rounds/round_0.jsonl") in kept and any(p.parts[0] == "evaluations" for p in kept)
    shutil.rmtree(workdir / "checkpoints" / "mini")
    assert study(["--config=study.yaml", "--no_report", "--records_dir=records", *overrides]) == []
    from_records = make_report([records], workdir / "report-records")
    assert pd.read_csv(from_records.parent / "final.csv").equals(pd.read_csv(workdir / "report" / "final.csv"))
