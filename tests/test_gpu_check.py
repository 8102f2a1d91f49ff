"""The GPU check (benchmarks/gpu_check.py) runs end to end on the CPU with toy sizes, so that it is
known to work before the first GPU is available."""

import runpy
import sys

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def test_gpu_check_smoke_on_cpu(tmp_path, monkeypatch, capsys):
    """Run as `python benchmarks/gpu_check.py --tiny --device cpu ...` would (its folder first on sys.path), in
    this process: a new one would add only its imports."""
    output = tmp_path / "gpu-check-cpu.md"
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--tiny", "--device", "cpu", "--output", str(output)])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    printed = capsys.readouterr()
    assert stop.value.code in (0, None), printed.out[-2000:] + printed.err[-2000:]
    text = output.read_text()
    for check in ("scoring, prompt", "scoring, generated", "LoRA training"):
        row = next(line for line in text.splitlines() if line.startswith(f"| {check} |"))
        rate = float(row.split("|")[3])
        assert rate > 0, row
    assert "2-round active-learning run through the CLI: PASS" in text
