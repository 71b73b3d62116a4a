"""Checkpoints: a digest of the file's bytes checked before anything is read, plain
tensors only (``weights_only``), and the resume rules."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
import torch

import huse.checkpoint as ck
import huse.train
from huse.errors import HuseError
from huse.methods import resolve_config
from huse.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


def cfg(**kw):
    base = dict(epochs=3, batch_size=24, embed_dim=16, patience=100, min_epochs=1)
    return resolve_config("huse", **(base | kw))


@pytest.fixture(scope="module")
def fs(make_feature_set):
    return make_feature_set()


@pytest.fixture(scope="module")
def graph(fs, sibling_graph):
    return sibling_graph(fs.hierarchy)


def minimal_state(epoch: int = 1) -> dict:
    return {
        "net": {"w": torch.arange(6.0).reshape(2, 3)},
        "loss": {},
        "opt": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]},
        "epoch": epoch,
        "best_score": float("-inf"),
        "best_epoch": 0,
        "bad": 0,
        "history": [{"epoch": 1, "train_total": 0.5, "val_acc_image": None}],
        "config": {"lr": 0.1},
        "data": "abc",
    }


class WritesMarker:
    """Unpickling this writes a marker file: the proof that a pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def test_train_keeps_exporting_the_checkpoint_names():
    for name in ("CheckpointError", "CheckpointWarning", "save_checkpoint", "load_checkpoint",
                 "state_digest", "data_fingerprint"):  # fmt: skip
        assert getattr(huse.train, name) is getattr(ck, name)
    assert issubclass(ck.CheckpointError, HuseError)


def test_save_writes_a_sidecar_with_the_bytes_digest_and_rotates_both(tmp_path):
    last = tmp_path / "last.pt"
    ck.save_checkpoint(last, minimal_state(1))
    side = json.loads((tmp_path / "last.pt.json").read_text())
    data = last.read_bytes()
    assert side["sha256"] == hashlib.sha256(data).hexdigest() and side["bytes"] == len(data)
    ck.save_checkpoint(last, minimal_state(2))
    prev_side = json.loads((tmp_path / "prev.pt.json").read_text())
    assert prev_side["sha256"] == side["sha256"]
    assert hashlib.sha256((tmp_path / "prev.pt").read_bytes()).hexdigest() == side["sha256"]
    state = ck.load_checkpoint(last, resolve_config("huse", lr=0.1), None)
    assert state["epoch"] == 2
    assert torch.equal(state["net"]["w"], torch.arange(6.0).reshape(2, 3))
    assert state["history"] == minimal_state()["history"]
    assert state["best_score"] == float("-inf")


@pytest.mark.parametrize("sidecar", ["none", "forged"])
def test_a_pickle_placed_as_last_pt_never_runs_and_resume_uses_prev(tmp_path, fs, graph, sidecar):
    whole = train(fs, cfg(epochs=4), graph, out=tmp_path / "whole", progress=False)
    run = tmp_path / "run"
    train(fs, cfg(), graph, out=run, progress=False)
    last = run / "checkpoints" / "last.pt"
    marker = tmp_path / "marker"
    buf = io.BytesIO()
    torch.save({"net": WritesMarker(marker), "epoch": 9}, buf)  # what torch.save makes
    payload = buf.getvalue()
    torch.load(io.BytesIO(payload), weights_only=False)  # the bomb works when unpickled
    assert marker.read_text() == "pwned"
    marker.unlink()
    last.write_bytes(payload)
    if sidecar == "forged":  # digest right: weights_only must still refuse the object
        digest = hashlib.sha256(payload).hexdigest()
        (run / "checkpoints" / "last.pt.json").write_text(json.dumps({"sha256": digest}))
    else:
        (run / "checkpoints" / "last.pt.json").unlink()
    with pytest.warns(ck.CheckpointWarning, match=r"damaged checkpoint .*last\.pt.*prev\.pt"):
        resumed = train(fs, cfg(epochs=4), graph, out=run, resume=True, progress=False)
    assert not marker.exists()
    assert (run / "checkpoints" / "last.pt.damaged").read_bytes() == payload
    # prev.pt was epoch 2: epochs 3 and 4 redone give the uninterrupted run.
    assert resumed.epochs_run == 4
    sa, sb = resumed.net.state_dict(), whole.net.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_mismatching_or_missing_sidecar_means_damaged(tmp_path):
    last = tmp_path / "last.pt"
    ck.save_checkpoint(last, minimal_state(1))
    ck.save_checkpoint(last, minimal_state(2))
    (tmp_path / "last.pt.json").write_text(json.dumps({"sha256": "0" * 64}))
    with pytest.warns(ck.CheckpointWarning, match=r"do not match last\.pt\.json"):
        state = ck.load_checkpoint(last, resolve_config("huse", lr=0.1), None)
    assert state["epoch"] == 1  # from prev.pt
    (tmp_path / "prev.pt.json").unlink()
    with pytest.warns(ck.CheckpointWarning, match=r"no prev\.pt\.json digest"):
        assert ck.load_checkpoint(last, resolve_config("huse", lr=0.1), None) is None
    assert (tmp_path / "prev.pt.damaged").exists()


def test_a_crash_between_the_two_renames_keeps_prev_loadable(tmp_path):
    last = tmp_path / "last.pt"
    ck.save_checkpoint(last, minimal_state(1))
    # What a kill right after last.pt became prev.pt leaves: prev.pt, last.pt.json.
    last.replace(tmp_path / "prev.pt")
    state = ck.load_checkpoint(last, resolve_config("huse", lr=0.1), None)
    assert state["epoch"] == 1


def test_resume_rules_refuse_other_settings_data_and_missing_averages(tmp_path):
    state = minimal_state()
    c = resolve_config("huse", lr=0.1)
    state["config"] = {k: getattr(c, k) for k in ("lr", "embed_dim", "epochs")}
    ck.check_resumable(tmp_path / "last.pt", state, resolve_config("huse", lr=0.1, epochs=9), "abc")
    with pytest.raises(ck.CheckpointError, match=r"lr: checkpoint 0\.1, now 0\.2"):
        ck.check_resumable(tmp_path / "last.pt", state, resolve_config("huse", lr=0.2), "abc")
    with pytest.raises(ck.CheckpointError, match="other data"):
        ck.check_resumable(tmp_path / "last.pt", state, resolve_config("huse", lr=0.1), "xyz")
    with pytest.raises(ck.CheckpointError, match="no averaged weights"):
        ck.check_resumable(
            tmp_path / "last.pt", state, resolve_config("huse", lr=0.1, ema_decay=0.9), "abc"
        )
