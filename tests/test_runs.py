"""``huse.runs``: the run folder is huse's own, a refused resume changes nothing, small or
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
from huse.runs import RunDir, evaluate_run, find_index, fit, fit_features
from huse.train import SplitWarning

pytestmark = pytest.mark.usefixtures("one_thread")


def cfg(**kw):
    base = dict(epochs=2, batch_size=24, embed_dim=16, patience=100, min_epochs=1)
    return resolve_config("huse", **(base | kw))


@pytest.fixture(autouse=True)
def no_backbones(monkeypatch, sibling_graph):
    """The graph from the hierarchy alone: no text backbone loads in these tests."""
    monkeypatch.setattr("huse.runs.graph_for", lambda fs, c: (sibling_graph(fs.hierarchy), None))


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


def test_fit_records_its_command_and_run_dir_reads_what_fit_wrote(tmp_path, fs):
    manifest = manifest_of(fs, tmp_path / "m.csv")
    run = RunDir(tmp_path / "run")
    assert not run.is_run()
    m = fit(manifest, run.path, train_config=cfg(), features=fs, progress=False, command="train")
    assert run.info() == {"format": "huse-run/1", "manifest": str(manifest.resolve()),
                          "command": "train"}  # fmt: skip
    assert run.is_run() and run.manifest() == str(manifest.resolve())
    assert run.metrics() == json.loads(json.dumps(m))
    assert run.data_config() == fs.config
    assert run.train_config() == json.loads((run.path / "train_config.json").read_text())
    assert run.train_config()["epochs"] == 2
    assert len(run.log()) == 2 and run.graph().shape == (10, 10)
    assert run.missing() is None and run.require_model_dir() == run.model_dir
    # A bare model folder is its own model directory.
    assert RunDir(run.model_dir).require_model_dir() == run.model_dir
    assert set(p.name for p in run.path.iterdir()) <= set(RunDir.FILES) | set(RunDir.DIRS)
    target = run.write_eval_metrics({"x": 1})
    assert target == run.eval_metrics_file and json.loads(target.read_text()) == {"x": 1}
    (run.path / "metrics.json").unlink()
    assert run.metrics() == {"x": 1}  # eval_metrics.json stands in for an evaluated run


def test_fit_features_gives_fit_s_test_metrics_in_memory(tmp_path, fs):
    """The benchmarks' in-memory pipeline trains and scores exactly what ``fit`` writes."""
    m = fit(manifest_of(fs, tmp_path / "m.csv"), tmp_path / "run", train_config=cfg(),
            features=fs, progress=False)  # fmt: skip
    graphs: dict = {}
    got = fit_features(fs, cfg(), "test", graphs=graphs)
    for key in ("classification", "retrieval", "hierarchical", "mistake_severity"):
        assert got.metrics[key] == m[key]
    assert got.train.epochs_run == m["training"]["epochs_run"]
    assert len(graphs) == 1
    again = fit_features(fs, cfg(seed=1), None, graphs=graphs)
    assert again.metrics is None and again.graph is got.graph  # the cached graph


def test_find_index_takes_an_index_folder_or_a_run_folder(tmp_path):
    (tmp_path / "run" / "index").mkdir(parents=True)
    (tmp_path / "run" / "index" / "index.json").write_text("{}")
    assert find_index(tmp_path / "run") == tmp_path / "run" / "index"
    assert find_index(tmp_path / "run" / "index") == tmp_path / "run" / "index"
    assert find_index(tmp_path / "none") == tmp_path / "none"
