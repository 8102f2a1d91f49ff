"""The GPU check (benchmarks/gpu_check.py) runs end to end on the CPU with toy sizes, so that it is
known to work before the first GPU is available."""

import subprocess
import sys

from tests.conftest import REPO


def test_gpu_check_smoke_on_cpu(tmp_path):
    output = tmp_path / "gpu-check-cpu.md"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--tiny", "--device", "cpu", "--output", str(output)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    text = output.read_text()
    for check in ("scoring, prompt", "scoring, generated", "LoRA training"):
        row = next(line for line in text.splitlines() if line.startswith(f"| {check} |"))
        rate = float(row.split("|")[3])
        assert rate > 0, row
    assert "2-round active-learning run through the CLI: PASS" in text
