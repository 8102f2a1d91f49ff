"""The ``lightning-al`` command: one dispatch for every subcommand, the typed ``study:`` section, config layering,
and the papercuts a new user met (scores.output_path, predict without loop.budget, the report's folder, strategy
names spelled alike in fit, study and report)."""

import ast
import json
from pathlib import Path

import pytest
import yaml

from lightning_al import module
from lightning_al.cli import main
from lightning_al.commands import main as command
from lightning_al.evaluation import HeldOutAnswers
from lightning_al.report import load_run
from lightning_al.report.command import main as report
from lightning_al.study import StudyCLI
from lightning_al.study import main as study
from lightning_al.study_grid import StudyGrid, cells
from tests.conftest import REPO, tiny_run_args
from tests.test_report import write_run

PACKAGE = REPO / "lightning_al"


def _imports(path: Path) -> set[str]:
    """Every ``lightning_al`` module a file imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.startswith("lightning_al")}


def test_commands_import_one_way():
    """commands -> study -> cli -> study_grid, never back (lazy imports counted)."""
    below = {"cli": {"lightning_al.study", "lightning_al.commands"},
             "study_grid": {"lightning_al.cli", "lightning_al.study", "lightning_al.commands"},
             "study": {"lightning_al.commands"}}
    for name, forbidden in below.items():
        assert not _imports(PACKAGE / f"{name}.py") & forbidden, name
    importers = [p for p in PACKAGE.rglob("*.py") if "lightning_al.commands" in _imports(p)]
    assert [p.name for p in importers] == ["__main__.py"]


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as stop:
        command(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: lightning-al") and "Lightning Trainer command line tool" not in text
    table = text.split("commands:", 1)[1]
    for name in ("fit", "validate", "test", "predict", "study", "report"):
        assert f"\n  {name} " in table, name
    for name, option in (("study", "--cell"), ("report", "--out")):
        with pytest.raises(SystemExit) as stop:
            command([name, "--help"])
        assert stop.value.code == 0 and option in capsys.readouterr().out


def test_study_section_is_typed(tmp_path, capsys):
    config = tmp_path / "study.yaml"
    config.write_text("study:\n  name: mini\n  strategies: [entropy]\n")
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)["study"]
    assert printed == {"name": "mini", "strategies": ["entropy"], "rounds": [1], "seeds": [0], "records_dir": None}
    config.write_text("study:\n  name: mini\n  strategy: [entropy]\n")  # a typo: study has no key `strategy`
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--config", str(config), "--print_config"])
    assert stop.value.code != 0 and "strategy" in capsys.readouterr().err


def test_study_config_layers_on_its_base(capsys):
    base, grid = REPO / "configs" / "llama-3.2-1b-instruct.yaml", REPO / "configs" / "study-llama-3.2-1b.yaml"
    cli = StudyCLI(["--config", str(base), "--config", str(grid), "--seeds", "0", "1", "--trainer.devices=2"])
    assert cli.config.model.pretrained == "meta-llama/Llama-3.2-1B-Instruct" and cli.config.loop.budget == 50000
    grid = cli.grid()
    assert (grid.name, grid.strategies, grid.rounds, grid.seeds) == ("llama-3.2-1b", ["random", "entropy",
                                                                                       "confidence"], [1, 2], [0, 1])
    first = cells(grid)[0]
    fit = cli.cell_config(grid, first, "new")["fit"]
    assert fit["run_name"] == "llama-3.2-1b/random-m1-s0" and fit["seed_everything"] == 0
    assert fit["trainer"]["devices"] == "2" and fit["loop"]["rounds"] == 1 and fit["loop"]["overwrite"] is True
    assert fit["study"]["seeds"] == [0, 1] and "cell" not in fit and "list" not in fit


def test_study_cells_name_strategies_as_the_report_does():
    grid = StudyGrid(name="s", strategies=["lightning_al.strategies.EntropySampling", "min-margin", "random"],
                     rounds=[2], seeds=[0])
    assert [c.name for c in cells(grid)] == ["entropy-m2-s0", "min_margin-m2-s0", "random-m2-s0"]
    assert cells(grid)[0].strategy == "lightning_al.strategies.EntropySampling"  # what the cell's fit receives


def test_a_short_strategy_name_runs_alike_in_study_fit_and_report(workdir):
    (workdir / "study.yaml").write_text("study:\n  name: names\n  strategies: [entropy]\n  seeds: [5]\n")
    args = tiny_run_args(workdir, **{"loop.epochs_per_round": 1, "loop.diversity_sample": 0})
    overrides = [a for a in args if not a.startswith(("--run_name", "--seed_everything", "--loop.rounds"))]
    assert [c.name for c in study(["--config=study.yaml", "--no_report", *overrides])] == ["entropy-m1-s5"]
    run_dir = workdir / "checkpoints" / "names" / "entropy-m1-s5"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["loop"]["strategy"] == "entropy" and config["seed_everything"] == 5  # as `fit --loop.strategy entropy`
    rows = [json.loads(line) for line in (run_dir / "rounds" / "round_0.jsonl").read_text().splitlines()]
    assert len(rows) == 40 and all("entropy" in row for row in rows)  # scored: EntropySampling ran
    assert load_run(run_dir).strategy == "entropy"


def test_predict_needs_no_budget_and_writes_to_scores_output_path(workdir):
    # The default evaluation sets (data.evaluations left out; the other tiny runs generate shorter answers):
    # the held-out answers, made and prepared (predict does not run them).
    args = [a for a in tiny_run_args(workdir, **{"data.evaluations": None}) if not a.startswith("--loop.budget")]
    cli = main(["predict", *args, "--scores.output_path=scores/pool.jsonl"])
    rows = [json.loads(line) for line in (workdir / "scores" / "pool.jsonl").read_text().splitlines()]
    assert len(rows) == 104 and not (workdir / "checkpoints" / "tiny" / "scores.jsonl").exists()
    [default] = cli.datamodule.evaluations
    assert isinstance(default, HeldOutAnswers) and default.name == "heldout" and len(default.rows) == 16


def test_fit_without_budget_names_the_key(workdir, monkeypatch):
    monkeypatch.setattr(module, "load_causal_lm", lambda *a, **k: pytest.fail("the model was loaded first"))
    args = [a for a in tiny_run_args(workdir) if not a.startswith("--loop.budget")]
    with pytest.raises(ValueError, match=r"loop\.budget"):
        main(["fit", *args])
    assert not (workdir / "checkpoints").exists() and not (workdir / "lightning_logs").exists()


def test_report_default_folder_is_named_after_its_input(workdir, capsys):
    for study_name, strategy in (("first", "random"), ("second", "entropy")):
        write_run(workdir / "checkpoints" / study_name, strategy, 1, 0)
        report([f"checkpoints/{study_name}"])
        assert f"reports/{study_name}/report.md" in capsys.readouterr().out
    first, second = ((workdir / "reports" / name / "report.md").read_text() for name in ("first", "second"))
    assert "| random |" in first and "| entropy |" in second and "| entropy |" not in first
