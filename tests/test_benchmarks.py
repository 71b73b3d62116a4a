"""The benchmark scripts import the library's internals; a rename must not rot them."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


def test_every_benchmark_is_listed():
    names = {p.stem for p in SCRIPTS}
    assert {
        "quality",
        "ablation",
        "linear_probe",
        "image_views",
        "scale",
        "speed",
        "serve",
        "faults",
    } <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_benchmark_parses_its_arguments(script):
    out = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout


def _load_benchmark(name: str):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_posterior_ranking_by_hand():
    from huse.data.hierarchy import Hierarchy

    ablation = _load_benchmark("ablation")
    # Near one-hot posteriors: image predictions [0, 1, 1], text predictions [0, 0, 1].
    # i2t: image 0 -> text 1 (hit); image 1 -> text 2 (miss); image 2 -> texts 0 and 1
    # tie, the lower index wins (miss): 1/3. t2i: text 0 -> images 1 and 2 tie, image 1
    # (hit); text 1 -> image 0 (hit); text 2 -> image 1 (miss): 2/3.
    onehot = np.eye(2)
    li, lt = 10 * onehot[[0, 1, 1]], 10 * onehot[[0, 0, 1]]
    labels = np.array([0, 0, 1])
    h = Hierarchy(["a", "b"])
    assert ablation.posterior_cross_r1(li, lt, labels, h) == pytest.approx(0.5)
    assert ablation.posterior_cross_r1(li, lt, labels, h, temperature=2.0) == pytest.approx(0.5)


def test_posterior_ranking_matches_brute_force():
    from huse.data.hierarchy import Hierarchy

    ablation = _load_benchmark("ablation")
    rng = np.random.default_rng(0)
    n, k, t = 40, 5, 2.0
    li, lt = rng.normal(size=(n, k)) * 3, rng.normal(size=(n, k)) * 3
    labels = rng.integers(0, k, n)

    def softmax(x):
        z = np.exp(x / t - (x / t).max(1, keepdims=True))
        return z / z.sum(1, keepdims=True)

    def r1(pq, pg):
        hits = 0
        for i in range(n):
            scores = [(pq[i] @ pg[j], -j) for j in range(n) if j != i]
            best = -max(scores)[1]
            hits += labels[best] == labels[i]
        return hits / n

    pi, pt = softmax(li), softmax(lt)
    want = (r1(pi, pt) + r1(pt, pi)) / 2
    got = ablation.posterior_cross_r1(li, lt, labels, Hierarchy([f"c{c}" for c in range(k)]), t)
    assert got == pytest.approx(want)
