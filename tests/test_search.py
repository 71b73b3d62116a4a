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


def test_device_flags_of_index_search_and_serve(tiny_run, tmp_path, capsys):
    # No CUDA GPU here (the CI machine has none either): one line before any loading.
    for argv in (
        ["search", str(tiny_run), "--text", "a bird"],
        ["search", str(tiny_run), "--queries", "-"],
        ["index", str(tiny_run), "--out", str(tmp_path / "i"), "--quiet"],
        ["serve", str(tiny_run), "--port", "1"],
    ):
        assert run_cli([*argv, "--device", "cuda:7"]) == 2
        line = one_error_line(capsys)
        assert "device 'cuda:7'" in line and "use cpu" in line
        assert run_cli([*argv, "--device", "gpu please"]) == 2
        assert "not a torch device" in one_error_line(capsys)
    assert not (tmp_path / "i").exists()
    assert run_cli(["search", str(tiny_run), "--text", "a bird", "--device", "cpu", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["results"]) == 10


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


# -- a living catalogue: updates and filters ---------------------------------------------
def _manifests(tiny_run: Path, tmp_path: Path) -> tuple[Path, Path, dict]:
    """The run's manifest changed: 3 rows removed, 2 texts changed, 3 items added (one of
    a class the model never saw); and a second change on top of it."""
    base = pd.read_csv(tiny_run.parent / "manifest.csv")
    demo = pd.read_csv(DEMO / "manifest_stripped.csv")
    demo["image"] = [str(DEMO / p) for p in demo["image"]]
    fresh = demo[~demo["id"].isin(base["id"])].head(3).copy()
    fresh["split"] = "train"
    fresh.loc[fresh.index[2], "classes"] = "novelty<gadgets"
    m2 = base.drop(index=base.index[[0, 5, 9]]).copy()
    m2.loc[m2.index[[3, 4]], "text"] = "a completely different description of it"
    m2 = pd.concat([m2, fresh], ignore_index=True)
    p2 = tmp_path / "m2.csv"
    m2.to_csv(p2, index=False)
    m3 = m2.iloc[1:].copy()
    m3.loc[m3.index[0], "text"] = "changed again"
    p3 = tmp_path / "m3.csv"
    m3.to_csv(p3, index=False)
    return p2, p3, {"removed": base["id"].iloc[[0, 5, 9]].tolist(), "new": fresh["id"].tolist()}


def _vectors_by_id(index) -> dict[str, np.ndarray]:
    ids = index.items["id"].tolist()
    both = [index.indexes[m].reconstruct_n(0, len(ids)) for m in ("image", "text")]
    return {i: np.concatenate([both[0][r], both[1][r]]) for r, i in enumerate(ids)}


def test_cli_update_adds_changes_removes_like_a_fresh_build(tiny_run, tmp_path, capsys):
    ix, fresh_ix = tmp_path / "ix", tmp_path / "fresh"
    assert run_cli(["index", str(tiny_run), "--out", str(ix), "--quiet"]) == 0
    p2, _, what = _manifests(tiny_run, tmp_path)
    capsys.readouterr()
    assert run_cli(["index", str(tiny_run), "--update", str(p2), "--out", str(ix), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "3 added, 2 changed, 3 removed, 111 unchanged; 116 items now" in out, out

    assert run_cli(["index", str(tiny_run), "--manifest", str(p2), "--out", str(fresh_ix)]) == 0
    updated, fresh = load_index(ix), load_index(fresh_ix)
    assert sorted(updated.items["id"]) == sorted(fresh.items["id"])
    assert not set(what["removed"]) & set(updated.items["id"])
    a, b = _vectors_by_id(updated), _vectors_by_id(fresh)
    for item_id, v in b.items():
        np.testing.assert_allclose(a[item_id], v, atol=1e-5)
    cols = ["id", "text", "classes", "content"]
    key = updated.items[cols].sort_values("id").reset_index(drop=True)
    pd.testing.assert_frame_equal(key, fresh.items[cols].sort_values("id").reset_index(drop=True))

    # The item of a class the model never saw is embedded, found, and shown with its class.
    s = Searcher.from_run(tiny_run, index=ix)
    novel = updated.items.set_index("id").loc[what["new"][2]]
    hits = s.search_image(novel["image"], k=3)
    assert hits[0].id == what["new"][2] and hits[0].classes == "novelty<gadgets"
    hits = s.search_text("gadget", k=5, under=["novelty"])
    assert [h.id for h in hits] == [what["new"][2]]

    # Nothing left to do: said so, nothing written.
    before = (ix / "index.json").stat().st_mtime_ns
    assert run_cli(["index", str(tiny_run), "--update", str(p2), "--out", str(ix), "--quiet"]) == 0
    assert "up to date: 0 added, 0 changed, 0 removed, 116 unchanged" in capsys.readouterr().out
    assert (ix / "index.json").stat().st_mtime_ns == before
    # --keep-missing keeps what the manifest no longer lists.
    _, p3, _ = _manifests(tiny_run, tmp_path)
    argv = ["index", str(tiny_run), "--update", str(p3), "--out", str(ix), "--keep-missing"]
    assert run_cli([*argv, "--quiet"]) == 0
    assert "0 added, 1 changed, 0 removed, 114 unchanged; 116 items now" in capsys.readouterr().out
    # --retrain trains the type anew on every item: the same items, one segment.
    argv = ["index", str(tiny_run), "--update", str(p3), "--out", str(ix), "--retrain"]
    assert run_cli([*argv, "--keep-missing", "--quiet"]) == 2
    assert "--keep-missing" in one_error_line(capsys)
    assert run_cli([*argv, "--quiet"]) == 0
    assert "rebuilt (retrained) index: 0 added, 0 changed, 1 removed, 115 unchanged" in (
        capsys.readouterr().out
    )
    assert len(load_index(ix)) == 115 and "segments" not in load_index(ix).info


def test_a_killed_update_leaves_the_old_index_and_a_rerun_completes_it(tiny_run, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    ix = tmp_path / "ix"
    assert run_cli(["index", str(tiny_run), "--out", str(ix), "--quiet"]) == 0
    before = load_index(ix)
    p2, _, _ = _manifests(tiny_run, tmp_path)
    # Killed at the worst moment: the new folder fully written, not yet swapped in.
    code = (
        "import os, signal, sys; import huse.index as I\n"
        "I._swap_in = lambda tmp, path: os.kill(os.getpid(), signal.SIGKILL)\n"
        "from huse.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    argv = ["index", str(tiny_run), "--update", str(p2), "--out", str(ix), "--quiet"]
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    after = load_index(ix)  # every checksum verified
    pd.testing.assert_frame_equal(after.items, before.items)
    assert sorted(p.name for p in ix.iterdir()) == sorted(["index.json", *after.info["files"]])
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".ix."))
    assert [n for n in left if n.startswith(".ix.tmp-")], left  # the killed run's new folder
    # The rerun does the whole update (the killed run's half is not trusted), and clears
    # what the killed run left: its temporary folder and its lock file.
    assert run_cli(argv) == 0
    done = load_index(ix)
    assert len(done) == 116 and "a completely different description of it" in set(
        done.items["text"]
    )
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ix.")] == []


def test_a_second_writer_of_one_index_stops_with_one_line(tiny_run, tmp_path, capsys):
    import subprocess
    import sys

    ix = tmp_path / "ix"
    assert run_cli(["index", str(tiny_run), "--out", str(ix), "--quiet"]) == 0
    before = load_index(ix)
    p2, _, _ = _manifests(tiny_run, tmp_path)
    capsys.readouterr()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; import huse.index as I\n"
         f"with I.writer_lock({str(ix)!r}):\n print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        argv = ["index", str(tiny_run), "--update", str(p2), "--out", str(ix), "--quiet"]
        assert run_cli(argv) == 2
        line = one_error_line(capsys)
        assert f"another huse process (pid {holder.pid} on " in line and str(ix) in line
        pd.testing.assert_frame_equal(load_index(ix).items, before.items)  # untouched
    finally:
        holder.kill()
        holder.wait()
    assert run_cli(argv) == 0  # the kernel dropped the dead holder's lock
    assert "a completely different description of it" in set(load_index(ix).items["text"])


def test_cli_search_within_a_branch(tiny_run, capsys):
    argv = ["search", str(tiny_run), "--text", "a bird", "-k", "5", "--json"]
    assert run_cli([*argv, "--under", "animals"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["query"]["under"] == ["animals"] and len(res["results"]) == 5
    assert all(r["class"].startswith("animals<") for r in res["results"])
    # Exactly the branch's top 5 by brute force over the index's own vectors.
    index = load_index(tiny_run / "index")
    s = Searcher.from_run(tiny_run)
    v = index.indexes["image"].reconstruct_n(0, len(index)) @ s.embed_text("a bird")[0]
    branch = index.items["classes"].str.startswith("animals<").to_numpy()
    top = np.argsort(-np.where(branch, v, -np.inf))[:5]
    assert [r["id"] for r in res["results"]] == index.items["id"].iloc[top].tolist()

    assert run_cli([*argv[:-1], "-k", "10", "--class", "animals<birds", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert {r["class"] for r in res["results"]} == {"animals<birds"}
    assert len(res["results"]) == 4  # the class holds 4 items; asked for 10
    assert run_cli([*argv, "--under", "anim"]) == 2  # a branch ends at the separator
    assert "did you mean 'animals" in one_error_line(capsys)
