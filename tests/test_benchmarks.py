"""The benchmark scripts import the library's internals; a rename must not rot them."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


def test_every_benchmark_is_listed():
    names = {p.stem for p in SCRIPTS}
    assert {"quality", "ablation", "linear_probe", "scale", "speed", "serve", "faults"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_benchmark_parses_its_arguments(script):
    out = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout
