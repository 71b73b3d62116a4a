"""Search with a trained model: own-item retrieval, the Searcher, and the CLI commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("faiss")
pytestmark = pytest.mark.slow  # trains a tiny model once per session (~0.5-2 min)

from huse.index import CatalogueIndexError, load_index  # noqa: E402
from huse.search import Searcher  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "data" / "openclipart-demo"


def train_tiny_run(base: Path) -> Path:
    """A small trained run with its index: 4 demo items per class, 3 train and 1 test.

    No val split, so training keeps its last epoch (the tiny val set would pick epoch 1).
    Shared by the search and serve tests through the session's temp folder.
    """
    run = base / "run"
    if (run / "index" / "index.json").exists():
        return run
    from huse.cli import main
    from huse.runs import index_run

    if not (DEMO / "manifest_stripped.csv").exists():
        pytest.skip(f"demo data missing: {DEMO}")
    m = pd.read_csv(DEMO / "manifest_stripped.csv")
    m = m.groupby("classes", sort=False).head(4).copy()
    m["image"] = [str(DEMO / p) for p in m["image"]]
    m["split"] = np.where(m.groupby("classes").cumcount() == 3, "test", "train")
    base.mkdir(parents=True, exist_ok=True)
    m.to_csv(base / "manifest.csv", index=False)
    args = ["fit", str(base / "manifest.csv"), "--out", str(run), "--quiet"]
    assert main([*args, "--epochs", "12", "--train-batch-size", "16"]) == 0
    index_run(run, progress=False)
    return run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    return train_tiny_run(tmp_path_factory.getbasetemp() / "huse-tiny-run")


@pytest.fixture(scope="session")
def searcher(tiny_run) -> Searcher:
    return Searcher.from_run(tiny_run)


@pytest.fixture(scope="session")
def image_queries(searcher) -> np.ndarray:
    """Every catalogue image from its file through the whole model (not the feature cache)."""
    return searcher.model.encode_image(searcher.index.items["image"].tolist())


def own_ranks(scores_rows: tuple, own: np.ndarray) -> np.ndarray:
    _, rows, _ = scores_rows
    hit = rows == own[:, None]
    return np.where(hit.any(1), hit.argmax(1), rows.shape[1])


def test_own_image_ranks_own_text_high(searcher, image_queries):
    items = searcher.index.items
    q = image_queries
    ranks = own_ranks(searcher.index.search(q, k=5, modality="text"), np.arange(len(items)))
    train = (items["split"] == "train").to_numpy()
    # Measured on this run: every train item's own text in the top 5, 88% of all items.
    assert (ranks[train] < 5).mean() >= 0.9
    assert (ranks < 5).mean() >= 0.6
    # Chance would put the own text in the top 5 for 5/116 of the items.


def test_own_image_finds_itself_first(searcher, image_queries):
    items = searcher.index.items
    q = image_queries
    scores, rows, mods = searcher.index.search(q, k=3, modality="image")
    # The raw path and the cached features give the same vector: cosine 1 with itself.
    assert (rows[:, 0] == np.arange(len(items))).mean() >= 0.97
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-4)
    assert (mods == "image").all()


def test_search_text_and_hits(searcher):
    item = searcher.index.items.iloc[0]
    hits = searcher.search_text(item["text"], k=4, modality="text")
    assert [h.rank for h in hits] == [1, 2, 3, 4]
    assert hits[0].id == item["id"] and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    d = hits[0].to_dict()
    assert set(d) == {"rank", "id", "image", "text", "class", "score", "modality"}
    assert d["class"] == item["classes"] and d["image"] == item["image"]

    both = searcher.search_image(item["image"], k=10, modality="both")
    assert len({h.id for h in both}) == 10
    assert {h.modality for h in both} <= {"image", "text"}
    assert both[0].id == item["id"] and both[0].modality == "image"
    like = searcher.search_item(item["id"], k=3)
    assert like[0].id == item["id"]
    with pytest.raises(KeyError):
        searcher.search_item("no-such-id")
    with pytest.raises(ValueError, match="modality"):
        searcher.search_text("x", modality="audio")
    with pytest.raises(ValueError, match="k must be"):
        searcher.search_text("x", k=0)


def test_index_built_by_another_model_is_refused(tiny_run, tmp_path):
    shutil.copytree(tiny_run / "index", tmp_path / "index")
    info_file = tmp_path / "index" / "index.json"
    info = json.loads(info_file.read_text())
    info["model"]["sha256"] = "0" * 64
    info_file.write_text(json.dumps(info))
    with pytest.raises(CatalogueIndexError, match="another model"):
        Searcher.from_run(tiny_run, index=tmp_path / "index")


# -- the CLI commands ------------------------------------------------------------------
def run_cli(argv: list[str]) -> int:
    """The real entry point: a user mistake is a HuseError that ``main`` turns into exit 2."""
    from huse.cli import main

    return main(argv)


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert captured.out == "" and err.startswith("error: ") and "\n" not in err, captured
    return err


def test_cli_index_and_search(tiny_run, tmp_path, capsys):
    out = tmp_path / "hnsw-index"
    assert run_cli(["index", str(tiny_run), "--factory", "hnsw", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "indexed 116 items" in printed and "HNSW32" in printed and str(out) in printed
    assert load_index(out).info["factory"] == "HNSW32"

    image = load_index(tiny_run / "index").items["image"].iloc[5]
    argv = ["search", str(tiny_run), "--image", image, "-k", "3", "--modality", "both", "--json"]
    assert run_cli(argv) == 0
    res = json.loads(capsys.readouterr().out)  # stdout holds only the JSON
    assert res["query"] == {"image": image, "k": 3, "modality": "both"}
    assert len(res["results"]) == 3 and res["results"][0]["image"] == image
    assert set(res["results"][0]) == {"rank", "id", "image", "text", "class", "score", "modality"}

    assert run_cli(["search", str(tiny_run), "--text", "a bird", "--index", str(out)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:5] == ["#", "score", "match", "class", "id"]
    assert len(table) == 11


def test_cli_errors_are_clear(tiny_run, tmp_path, capsys):
    assert run_cli(["search", str(tmp_path), "--text", "x"]) == 2
    assert "not a huse model directory" in capsys.readouterr().err
    shutil.copytree(tiny_run / "model", tmp_path / "run" / "model")
    assert run_cli(["search", str(tmp_path / "run"), "--text", "x"]) == 2
    assert "no index at" in capsys.readouterr().err
    assert run_cli(["search", str(tiny_run), "--image", str(tmp_path / "nope.png")]) == 2
    assert "no such image file" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    assert run_cli(["search", str(tiny_run), "--image", str(bad)]) == 2
    assert "not an image" in capsys.readouterr().err
    assert run_cli(["search", str(tiny_run), "--text", "   "]) == 2
    assert run_cli(["search", str(tiny_run), "--text", "x", "-k", "0"]) == 2
    argv = ["index", str(tiny_run), "--factory", "IVF4096,PQ16", "--out", str(tmp_path / "i")]
    assert run_cli([*argv, "--quiet"]) == 2
    assert "inverted lists" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["<b></b>", "\u200b\u200b", "https://example.com/x"])
def test_a_query_with_no_words_is_refused(searcher, tiny_run, capsys, text):
    from huse.errors import QueryError

    with pytest.raises(QueryError, match="empty query"):
        searcher.search_text(text)
    assert run_cli(["search", str(tiny_run), "--text", text]) == 2
    assert "empty query" in one_error_line(capsys)
    assert len(searcher.search_text(f"{text} bird", k=3)) == 3  # words beside junk: searched


def test_cli_run_and_out_mistakes_are_one_line(tiny_run, tmp_path, capsys):
    assert run_cli(["search", str(tmp_path / "nope"), "--text", "a bird"]) == 2
    assert "no such run folder" in one_error_line(capsys)
    assert run_cli(["index", str(tmp_path / "nope"), "--quiet"]) == 2
    assert "no such run folder" in one_error_line(capsys)

    # The reproduction: a folder with any index.json was deleted whole.
    v = tmp_path / "v"
    v.mkdir()
    (v / "index.json").write_text("{}")
    (v / "precious.txt").write_text("x\n")
    assert run_cli(["index", str(tiny_run), "--out", str(v), "--quiet"]) == 2
    assert "remove it by hand" in one_error_line(capsys)
    assert sorted(p.name for p in v.iterdir()) == ["index.json", "precious.txt"]
    assert (v / "precious.txt").read_text() == "x\n"

    f = tmp_path / "file.txt"
    f.write_text("data")
    for out in (f, f / "index"):
        assert run_cli(["index", str(tiny_run), "--out", str(out), "--quiet"]) == 2
        assert "is a file" in one_error_line(capsys)
    assert f.read_text() == "data"

    argv = ["index", str(tiny_run), "--factory", "Nonsense123", "--out", str(tmp_path / "i")]
    assert run_cli([*argv, "--quiet"]) == 2
    err = one_error_line(capsys)
    assert "could not parse" in err and "PQ" not in err
    assert not (tmp_path / "i").exists()
