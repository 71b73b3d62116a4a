"""torchrun on the CPU (gloo, two processes) against one process: the same features, the
same optimisation, metrics in the same range."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "openclipart-demo"
CLASSES = [
    "animals<birds",
    "animals<mammals",
    "buildings<homes",
    "computer<hardware",
    "food<beverages",
    "food<desserts",
]

pytestmark = pytest.mark.slow


def _env(cache: Path) -> dict:
    return dict(
        os.environ,
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HUSE_CACHE=str(cache),
        PYTHONWARNINGS="ignore",
    )


def _run(args: list[str], cache: Path, nproc: int = 1, timeout: int = 300) -> str:
    """``python -m huse ARGS`` in one process, or under torchrun with ``nproc`` ranks."""
    if nproc == 1:
        cmd = [sys.executable, "-m", "huse", *args]
    else:
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", "-m", "huse", *args,
        ]  # fmt: skip
    p = subprocess.run(
        cmd, cwd=REPO, env=_env(cache), capture_output=True, text=True, timeout=timeout
    )
    assert p.returncode == 0, f"{' '.join(cmd)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout


def _cached_keys(cache: Path) -> list[str]:
    keys: list[str] = []
    for shard in sorted(cache.glob("features/*/shard-*.npz")):
        with np.load(shard) as z:
            keys += [str(k) for k in z["keys"]]
    return keys


@pytest.fixture(scope="module")
def subset(tmp_path_factory) -> Path:
    """96 demo rows, 16 items in each of 6 classes, images by absolute path."""
    d = pd.read_csv(DEMO / "manifest_stripped.csv")
    d = d[d["classes"].isin(CLASSES)].copy()
    d["image"] = [str((DEMO / p).resolve()) for p in d["image"]]
    path = tmp_path_factory.mktemp("dist") / "subset.csv"
    d.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def extracted(subset, tmp_path_factory):
    """The subset extracted by one process and by two torchrun ranks, each into an empty
    cache of its own (so both really compute)."""
    root = tmp_path_factory.mktemp("extract")
    one, two = root / "one", root / "two"
    _run(["extract", str(subset), "--out", str(one), "--cache", str(root / "c1"), "--quiet"], root)
    printed = _run(
        ["extract", str(subset), "--out", str(two), "--cache", str(root / "c2"), "--quiet"],
        root,
        nproc=2,
    )
    return root, one, two, printed


def test_torchrun_extract_equals_one_process(extracted):
    from huse.dataset import FeatureSet

    root, one, two, printed = extracted
    a, b = FeatureSet.load(one), FeatureSet.load(two)
    assert len(a) == len(b) == 96
    assert a.items["id"].tolist() == b.items["id"].tolist()
    assert a.items["split"].tolist() == b.items["split"].tolist()
    # Same per-item features, bit for bit: a backbone's output does not depend on batch
    # companions, and the ranks' shards hold exactly what one process would compute.
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.text, b.text)
    # Nothing computed twice, nothing lost: each content key sits in one shard once.
    k1, k2 = _cached_keys(root / "c1"), _cached_keys(root / "c2")
    assert len(k2) == len(set(k2)) and set(k2) == set(k1)
    assert len(list((root / "c2").glob("features/*/shard-*.npz"))) >= 4  # both ranks wrote
    # Rank 0 alone reports, with the counts of both ranks (one rank computed 48 images).
    assert printed.count("extracted 96 items") == 1
    assert "computed 96 images" in printed


def test_torchrun_train_metrics_in_range(extracted, tmp_path):
    _, one, _, _ = extracted
    args = ["--epochs", "8", "--quiet"]
    _run(["train", str(one), "--out", str(tmp_path / "r1"), *args], tmp_path)
    printed = _run(["train", str(one), "--out", str(tmp_path / "r2"), *args], tmp_path, nproc=2)
    assert printed.count("trained huse") == 1  # rank 0 logs and writes alone
    m1 = json.loads((tmp_path / "r1" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "r2" / "metrics.json").read_text())
    assert m2["training"]["epochs_run"] == 8
    for key in ("fusion", "mean_R@1", "mean_HP@5"):
        s1, s2 = m1["summary"][key], m2["summary"][key]
        assert s2 > 1 / len(CLASSES) + 0.1  # far above chance (6 classes)
        # 18 test items: one item is 0.056 of a score; dropout differs between the runs.
        assert abs(s1 - s2) <= 0.2, (key, s1, s2)
    ckpts = sorted(p.name for p in (tmp_path / "r2" / "checkpoints").iterdir())
    assert "last.pt" in ckpts and not any(".tmp" in c for c in ckpts)


# -- the optimisation itself: two ranks take exactly one process's steps -------------------

_TRAIN_SCRIPT = """
import sys, torch, numpy as np
torch.set_num_threads(1)
from huse._dist import is_main, teardown
from huse.dataset import FeatureSet
from huse.methods import resolve_config
from huse.train import train
fs = FeatureSet.load(sys.argv[1])
cfg = resolve_config(
    "huse", epochs=3, batch_size=32, dropout=0.0, input_dropout=0.0, patience=100
)
res = train(fs, cfg, np.load(sys.argv[2]), progress=False)
teardown()
if is_main():
    torch.save({"state": res.net.state_dict(), "history": res.history}, sys.argv[3])
"""


def test_two_ranks_take_one_process_steps(make_feature_set, tmp_path, one_thread):
    """Without dropout, DDP with the batch gathered across ranks is the same optimisation
    as one process: same global batches, same losses (graph and gap losses over the whole
    batch), same weights, up to float summation order."""
    import torch

    from huse.methods import resolve_config
    from huse.train import train

    fs = make_feature_set(per_class=10, split=(8, 0, 2))  # 80 train items, no val split
    fs.save(tmp_path / "fs")
    k = len(fs.hierarchy)
    rng = np.random.default_rng(0)
    graph = rng.uniform(0.2, 2.0, (k, k))
    graph = (graph + graph.T) / 2
    np.fill_diagonal(graph, 0.0)
    np.save(tmp_path / "graph.npy", graph)
    (tmp_path / "script.py").write_text(_TRAIN_SCRIPT)

    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(tmp_path / "script.py"), str(tmp_path / "fs"), str(tmp_path / "graph.npy"),
        str(tmp_path / "ddp.pt"),
    ]  # fmt: skip
    p = subprocess.run(
        cmd, env=_env(tmp_path / "cache"), capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr[-3000:]
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=False)

    cfg = resolve_config(
        "huse", epochs=3, batch_size=32, dropout=0.0, input_dropout=0.0, patience=100
    )
    one = train(fs, cfg, graph, progress=False)
    for h1, h2 in zip(one.history, ddp["history"], strict=True):
        for key in ("train_total", "train_graph", "train_gap"):
            assert h2[key] == pytest.approx(h1[key], rel=1e-4, abs=1e-6), key
    state = one.net.state_dict()
    for name, v in ddp["state"].items():
        torch.testing.assert_close(v, state[name], rtol=1e-4, atol=1e-5, msg=name)
