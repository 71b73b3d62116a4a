"""Bounded memory and large-catalogue choices: chunking, memory maps, streamed statistics,
index sizing, the training sampler and the bf16 switch. Small inputs, numbers checked
against the plain computation."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from huse.evaluate import MIN_CHUNK_ROWS, SIM_BUDGET, chunk_rows, space_metrics


def test_chunk_rows_bounds_the_similarity_block():
    assert chunk_rows(500) == 1024  # small galleries: the caller's chunk
    assert chunk_rows(100_000) == SIM_BUDGET // 100_000 == 335
    assert chunk_rows(10**8) == MIN_CHUNK_ROWS
    assert chunk_rows(100_000, chunk_size=16) == 16


def test_space_metrics_do_not_depend_on_the_chunking(make_feature_set, monkeypatch):
    import huse.evaluate as ev

    fs = make_feature_set()
    img = fs.image[:, :16] / np.linalg.norm(fs.image[:, :16], axis=1, keepdims=True)
    txt = fs.text[:, :16] / np.linalg.norm(fs.text[:, :16], axis=1, keepdims=True)
    whole = space_metrics(img, txt, fs.labels, fs.hierarchy)
    monkeypatch.setattr(ev, "SIM_BUDGET", 7 * len(fs))  # 7-row chunks
    monkeypatch.setattr(ev, "MIN_CHUNK_ROWS", 1)
    assert ev.chunk_rows(len(fs)) == 7
    chunked = space_metrics(img, txt, fs.labels, fs.hierarchy)
    for part_c, part_w in zip(chunked, whole, strict=True):
        for d in part_w:  # per-chunk sums: equal up to float summation order
            assert part_c[d] == (None if part_w[d] is None else pytest.approx(part_w[d]))


def _gap_stats_brute(img, txt, labels):
    sim = img.astype(np.float64) @ txt.T.astype(np.float64)
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(len(labels), dtype=bool)
    return {
        "modality_gap": float(np.linalg.norm(img.mean(0) - txt.mean(0))),
        "pair_cos": float(np.diag(sim).mean()),
        "same_class_cos": float(sim[same & off].mean()),
        "other_class_cos": float(sim[~same].mean()),
    }


def test_gap_stats_without_the_pair_matrix():
    from huse.report.analysis import gap_stats

    rng = np.random.default_rng(0)
    img = rng.normal(size=(70, 8)).astype(np.float32)
    txt = rng.normal(size=(70, 8)).astype(np.float32)
    labels = rng.integers(0, 6, 70)
    got, want = gap_stats(img, txt, labels), _gap_stats_brute(img, txt, labels)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)
    # One item per class: no same-class pair of different items.
    assert gap_stats(img[:3], txt[:3], np.arange(3))["same_class_cos"] is None


def test_cross_similarities_sample_large_sets():
    from huse.report.analysis import COSINE_GROUPS, cross_similarities

    rng = np.random.default_rng(1)
    img, txt = rng.normal(size=(50, 4)), rng.normal(size=(50, 4))
    labels = rng.integers(0, 3, 50)
    groups = cross_similarities(img, txt, labels, limit=20)
    own = groups.pop(COSINE_GROUPS[0])
    assert len(own) == 20 and sum(len(v) for v in groups.values()) == 20 * 20 - 20
    full = cross_similarities(img, txt, labels)
    np.testing.assert_allclose(full[COSINE_GROUPS[0]], (img * txt).sum(1))


def test_column_mean_std_streams_blocks():
    from huse.train import column_mean_std

    rng = np.random.default_rng(2)
    x = (rng.normal(size=(1000, 5)) * [1, 10, 0.1, 3, 1e3] + 50).astype(np.float32)
    rows = rng.choice(1000, 611, replace=False)
    mean, std = column_mean_std(x, rows, block=97)
    ref = x[rows].astype(np.float64)
    np.testing.assert_allclose(mean, ref.mean(0), rtol=1e-12)
    np.testing.assert_allclose(std, ref.std(0), rtol=1e-9)


def test_input_stats_streamed_equal_the_direct_ones(make_feature_set, monkeypatch):
    import huse.train as tr
    from huse.methods import TrainConfig
    from huse.model import HUSENet

    fs = make_feature_set()
    rows = fs.split_indices("train")
    cfg = tr.model_config(fs, TrainConfig())
    direct, streamed = HUSENet(cfg), HUSENet(cfg)
    tr._set_input_stats(direct, fs, rows)
    monkeypatch.setattr(tr, "STATS_IN_ONE_GO", 0)
    tr._set_input_stats(streamed, fs, rows)
    for name in ("image_mean", "image_std", "text_mean", "text_std"):
        torch.testing.assert_close(
            getattr(streamed, name), getattr(direct, name), rtol=1e-5, atol=1e-6
        )


def test_feature_set_loads_as_memory_maps(make_feature_set, tmp_path):
    from huse.dataset import FeatureSet

    fs = make_feature_set()
    fs.save(tmp_path / "fs")
    mapped = FeatureSet.load(tmp_path / "fs")
    assert isinstance(mapped.image, np.memmap) and isinstance(mapped.text, np.memmap)
    assert not mapped.image.flags.writeable
    np.testing.assert_array_equal(mapped.image, fs.image)
    np.testing.assert_array_equal(mapped.text[[3, 1]], fs.text[[3, 1]])
    loaded = FeatureSet.load(tmp_path / "fs", mmap=False)
    assert not isinstance(loaded.image, np.memmap)
    mapped.save(tmp_path / "again")  # a mapped set saves like any other
    np.testing.assert_array_equal(np.load(tmp_path / "again" / "image.npy"), fs.image)


def test_one_process_keeps_the_old_batch_order():
    """The DistributedSampler of one process draws exactly the old per-epoch permutation."""
    n, seed, epoch = 37, 3, 5
    sampler = torch.utils.data.DistributedSampler(
        range(n), num_replicas=1, rank=0, shuffle=True, seed=seed * 100003, drop_last=True
    )
    sampler.set_epoch(epoch)
    old = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
    assert list(sampler) == old.tolist()
    # Two ranks: the same permutation, interleaved, so gathered batches are its slices.
    halves = []
    for rank in (0, 1):
        s = torch.utils.data.DistributedSampler(
            range(n), num_replicas=2, rank=rank, shuffle=True, seed=seed * 100003, drop_last=True
        )
        s.set_epoch(epoch)
        halves.append(list(s))
    assert len(halves[0]) == len(halves[1]) == n // 2
    assert [i for pair in zip(*halves) for i in pair] == old.tolist()[: 2 * (n // 2)]


def test_bf16_on_cpu_warns_and_trains_in_float32():
    from huse.methods import TrainConfig
    from huse.train import _autocast

    with pytest.warns(UserWarning, match="bf16 mixed precision needs a CUDA device"):
        ctx = _autocast(TrainConfig(bf16=True), torch.device("cpu"))
    with ctx:
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _autocast(TrainConfig(), torch.device("cpu"))


def test_cli_bf16_flag_reaches_the_config():
    from huse.cli import _train_config, build_parser

    args = build_parser().parse_args(["train", "feats", "--out", "run", "--bf16"])
    assert _train_config(args).bf16 is True
    args = build_parser().parse_args(["train", "feats", "--out", "run"])
    assert _train_config(args).bf16 is False


def test_python_dash_m_huse():
    p = subprocess.run(
        [sys.executable, "-m", "huse", "--help"], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0 and "extract" in p.stdout and "train" in p.stdout


# -- index sizing ---------------------------------------------------------------------------


def test_auto_index_type_follows_catalogue_size():
    pytest.importorskip("faiss")
    from huse.index import AUTO_FLAT_MAX, AUTO_SQ_MAX, resolve_factory

    assert resolve_factory("auto", 1000, 512) == "Flat"
    assert resolve_factory("auto", AUTO_FLAT_MAX, 512) == "Flat"
    assert resolve_factory("auto", AUTO_FLAT_MAX + 1, 512) == "IVF2048,SQ8"
    assert resolve_factory("auto", 1_000_000, 512) == "IVF4096,SQ8"
    assert resolve_factory("auto", AUTO_SQ_MAX + 1, 512) == "IVF16384,PQ64"
    assert resolve_factory("IVF4096,PQ32", 10**7, 512) == "IVF4096,PQ32"  # the override


@pytest.mark.parametrize(
    ("factory", "tolerance"),
    [
        ("Flat", 0.01),
        ("HNSW16", 0.25),
        ("IVF16,Flat", 0.05),
        ("IVF16,SQ8", 0.05),
        ("IVF16,PQ8x4", 0.1),
    ],
)
def test_index_memory_estimate_matches_faiss(factory, tolerance):
    faiss = pytest.importorskip("faiss")
    from huse.index import IndexConfig, _build_one, index_memory_bytes

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        index = _build_one(x, factory, IndexConfig(factory=factory))
    finally:
        faiss.omp_set_num_threads(threads)
    real = faiss.serialize_index(index).nbytes
    est = index_memory_bytes(factory, len(x), x.shape[1])
    assert est == pytest.approx(real, rel=tolerance)
