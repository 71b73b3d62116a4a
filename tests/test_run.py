"""``huse.run``: the run folder is huse's own, a refused resume changes nothing, small or
missing splits train and evaluate what they can, a damaged run says what to do."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pandas as pd
import pytest

import huse
from huse.checkpoint import CheckpointError
from huse.errors import DataError, RunError, UnsafeOutputError
from huse.methods import resolve_config
from huse.run import evaluate_run, fit
from huse.train import SplitWarning

pytestmark = pytest.mark.usefixtures("one_thread")


def cfg(**kw):
    base = dict(epochs=2, batch_size=24, embed_dim=16, patience=100, min_epochs=1)
    return resolve_config("huse", **(base | kw))


@pytest.fixture(autouse=True)
def no_backbones(monkeypatch, sibling_graph):
    """The graph from the hierarchy alone: no text backbone loads in these tests."""
    monkeypatch.setattr("huse.run.graph_for", lambda fs, c: (sibling_graph(fs.hierarchy), None))


@pytest.fixture(scope="module")
def fs(make_feature_set):
    return make_feature_set()


def manifest_of(fs, path: Path) -> Path:
    fs.items[["image", "text", "classes"]].to_csv(path, index=False)
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_fit_refuses_to_write_over_its_manifest(tmp_path, fs):
    run = tmp_path / "run"
    fit(manifest_of(fs, tmp_path / "m.csv"), run, train_config=cfg(), features=fs, progress=False)
    # The issue: the manifest is DIR/items.parquet, a name the run writes.
    manifest = run / "items.parquet"
    pd.DataFrame({"image": ["a.png"] * 21, "text": [" A  B "] * 21, "classes": "x"}).to_parquet(
        manifest
    )
    before = manifest.read_bytes()
    with pytest.raises(UnsafeOutputError, match=r"would overwrite the input .*items\.parquet"):
        fit(manifest, run, train_config=cfg(), features=fs, progress=False)
    assert manifest.read_bytes() == before
    assert len(pd.read_parquet(manifest)) == 21
    # Inside model/ or checkpoints/ too.
    inside = run / "checkpoints" / "m.csv"
    manifest_of(fs, inside)
    with pytest.raises(UnsafeOutputError, match=r"checkpoints"):
        fit(inside, run, train_config=cfg(), features=fs, progress=False)


def test_fit_refuses_a_folder_that_is_not_a_huse_run(tmp_path, fs):
    manifest = manifest_of(fs, tmp_path / "m.csv")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    (mine / "metrics.json").write_text('{"mine": true}')
    for resume in (False, True):
        with pytest.raises(UnsafeOutputError, match=r"not a huse run folder.*metrics\.json"):
            fit(manifest, mine, train_config=cfg(), features=fs, resume=resume, progress=False)
    assert snapshot(mine) == {"notes.txt": b"keep me", "metrics.json": b'{"mine": true}'}
    # The manifest's own folder, as --out: refused before anything is written.
    with pytest.raises(UnsafeOutputError):
        fit(manifest, tmp_path, train_config=cfg(), features=fs, progress=False)
    # An empty folder is fine, and so is fitting again into a run folder.
    (tmp_path / "empty").mkdir()
    fit(manifest, tmp_path / "empty", train_config=cfg(), features=fs, progress=False)
    m = fit(manifest, tmp_path / "empty", train_config=cfg(), features=fs, progress=False)
    assert m["training"]["epochs_run"] == 2
    info = json.loads((tmp_path / "empty" / "run.json").read_text())
    assert info["format"] == "huse-run/1" and info["manifest"] == str(manifest.resolve())


@pytest.mark.parametrize("change", ["data", "settings"])
def test_a_refused_resume_leaves_the_run_as_it_was(tmp_path, fs, make_feature_set, change):
    run = tmp_path / "run"
    manifest = manifest_of(fs, tmp_path / "m.csv")
    fit(manifest, run, train_config=cfg(), features=fs, progress=False)
    before = snapshot(run)
    assert {"run.json", "items.parquet", "data_config.json", "metrics.json"} <= before.keys()
    if change == "data":
        other = make_feature_set(per_class=10, seed=5, split=(6, 2, 2))
        other_manifest = manifest_of(other, tmp_path / "other.csv")
        kw = dict(features=other, train_config=cfg(epochs=4))
        match = "other data"
    else:
        other_manifest, kw, match = manifest, dict(features=fs, train_config=cfg(lr=0.01)), "lr"
    with pytest.raises(CheckpointError, match=match):
        fit(other_manifest, run, resume=True, progress=False, **kw)
    assert snapshot(run) == before


def all_train(fs):
    import dataclasses

    items = fs.items.copy()
    items["split"] = "train"
    return dataclasses.replace(fs, items=items)


def test_a_train_only_split_trains_saves_and_says_what_is_missing(tmp_path, fs):
    run = tmp_path / "run"
    with pytest.warns(SplitWarning, match="validation split has 0 items"):
        m = fit(manifest_of(fs, tmp_path / "m.csv"), run, train_config=cfg(), features=all_train(fs),
                progress=False)  # fmt: skip
    assert m["data"] == {"train": 120, "val": 0, "test": 0, "classes": 10, "skipped": 0}
    assert m["training"]["epochs_run"] == 2
    assert m["classification"] == {"image": None, "text": None, "fusion": None}
    assert m["retrieval"]["i2t"]["R@1"] is None and m["summary"]["cross_R@1"] is None
    assert m["raw_backbones"]["classification"]["fusion"] is None
    assert any("test split is empty" in n for n in m["notes"])
    assert any("validation split has 0 items" in n for n in m["notes"])
    assert json.loads((run / "metrics.json").read_text())["notes"] == m["notes"]
    loaded = huse.load(run)
    assert loaded.classes == fs.hierarchy.classes
    assert (run / "model" / "model.safetensors").exists()
    card = (run / "model" / "README.md").read_text()
    assert "> Note: the test split is empty" in card and "| i2t | — | — | — |" in card


def test_no_train_split_is_refused_before_anything_is_written(tmp_path, fs):
    import dataclasses

    items = fs.items.copy()
    items["split"] = "test"
    none = dataclasses.replace(fs, items=items)
    run = tmp_path / "run"
    with pytest.raises(DataError, match=r"train split is empty \(0 val, 120 test"):
        fit(manifest_of(fs, tmp_path / "m.csv"), run, train_config=cfg(), features=none,
            progress=False)  # fmt: skip
    assert not run.exists()


def test_fit_removes_the_temporary_files_of_a_killed_run(tmp_path, fs):
    run = tmp_path / "run"
    manifest = manifest_of(fs, tmp_path / "m.csv")
    fit(manifest, run, train_config=cfg(), features=fs, progress=False)
    dead = [
        run / "model" / ".model.safetensors.k1ll3d.tmp",
        run / "checkpoints" / ".last.pt.abc.tmp",
        run / ".metrics.json.xyz.tmp",
    ]
    for p in dead:
        p.write_bytes(b"\0" * 1000)
    kept = [run / "model" / "notes.txt", run / ".hidden"]
    for p in kept:
        p.write_text("not a temporary file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SplitWarning)
        fit(manifest, run, train_config=cfg(), features=fs, progress=False)
    assert [p.exists() for p in dead] == [False, False, False]
    assert all(p.read_text() == "not a temporary file" for p in kept)


def test_evaluate_run_on_a_missing_or_incomplete_run_says_so(tmp_path, fs):
    with pytest.raises(RunError, match=r"nope does not exist"):
        evaluate_run(tmp_path / "nope")
    with pytest.raises(RunError, match=r"nope does not exist"):
        huse.load(tmp_path / "nope")
    run = tmp_path / "run"
    fit(manifest_of(fs, tmp_path / "m.csv"), run, train_config=cfg(), features=fs, progress=False)
    (run / "run.json").unlink()
    with pytest.raises(RunError, match=r"run\.json is missing.*huse fit"):
        evaluate_run(run)
    (run / "run.json").write_text("{not json")
    with pytest.raises(RunError, match=r"run\.json is damaged"):
        evaluate_run(run)
