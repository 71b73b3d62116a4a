"""The training loop on a small synthetic feature set: every method, partial batches,
determinism, early stopping, resume and the per-epoch log."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from huse.errors import DataError
from huse.methods import resolve_config
from huse.train import SplitWarning, train

K = 10  # classes of the synthetic feature set
METHODS = ["huse", "shared", "separate", "contrastive", "huse-p", "notebook"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fs(make_feature_set):
    return make_feature_set()  # 10 classes × 12 items: 80 train, 20 val, 20 test


@pytest.fixture(scope="module")
def graph(fs, sibling_graph):
    return sibling_graph(fs.hierarchy)


@pytest.fixture(scope="module")
def class_emb():
    return np.random.default_rng(1).normal(size=(K, 16)).astype(np.float32)


def cfg(method="huse", **kw):
    base = dict(epochs=6, batch_size=24, embed_dim=32, patience=100, min_epochs=1)
    return resolve_config(method, **(base | kw))


def state(net) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items()}


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def without_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def test_every_registered_method_is_tested():
    from huse.methods import list_methods

    assert sorted(list_methods()) == sorted(METHODS)


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_and_its_loss_decreases(fs, graph, class_emb, method):
    # 80 train items in batches of 24: the last batch holds 8.
    r = train(fs, cfg(method), graph, class_emb, progress=False)
    assert r.epochs_run == len(r.history) == 6
    totals = [row["train_total"] for row in r.history]
    assert all(np.isfinite(totals))
    assert totals[-1] < totals[0] - 0.3, totals
    assert [row["epoch"] for row in r.history] == list(range(1, 7))
    assert 1 <= r.best_epoch <= 6
    assert not r.net.training
    # On this easy problem every method learns something: validation R@1 beats chance.
    assert max(row["val_score"] for row in r.history) > 2 / K
    if method == "huse":
        assert 0 < r.graph_active <= 1
        assert all(0 <= row["train_graph_active"] <= 1 for row in r.history)
    else:
        assert r.graph_active is None


@pytest.mark.parametrize("method", ["huse", "contrastive", "notebook"])
@pytest.mark.parametrize("batch_size", [79, 1000])
def test_partial_and_single_item_final_batches(fs, graph, class_emb, method, batch_size):
    # 79: a final batch of ONE item (where the notebook crashed); 1000: one partial batch.
    r = train(fs, cfg(method, epochs=2, batch_size=batch_size), graph, class_emb, progress=False)
    assert r.epochs_run == 2
    assert all(np.isfinite(row["train_total"]) for row in r.history)


def test_training_is_deterministic(fs, graph, class_emb):
    a = train(fs, cfg("huse", epochs=3), graph, class_emb, progress=False)
    b = train(fs, cfg("huse", epochs=3), graph, class_emb, progress=False)
    assert_same_weights(state(a.net), state(b.net))
    assert without_seconds(a.history) == without_seconds(b.history)
    c = train(fs, cfg("huse", epochs=3, seed=1), graph, class_emb, progress=False)
    assert not torch.equal(state(a.net)["classifier.weight"], state(c.net)["classifier.weight"])


def test_early_stopping_stops_before_the_cap(make_feature_set, graph, class_emb):
    easy = make_feature_set(spread=6.0, noise=0.3)
    r = train(easy, cfg("shared", epochs=60, patience=2), graph, class_emb, progress=False)
    assert r.stopped == "early_stopping"
    assert r.epochs_run < 60
    # It stops exactly `patience` epochs after the best one, and keeps the best weights.
    assert r.epochs_run == r.best_epoch + 2
    scores = [row["val_score"] for row in r.history]
    assert scores[r.best_epoch - 1] == max(scores)
    from huse.evaluate import evaluate_net, summary_scores

    again = summary_scores(evaluate_net(r.net, easy, "val"))["mean_R@1"]
    assert again == pytest.approx(scores[r.best_epoch - 1])


def test_min_epochs_holds_off_early_stopping(make_feature_set, graph, class_emb):
    easy = make_feature_set(spread=6.0, noise=0.3)
    r = train(easy, cfg("shared", epochs=60, patience=1, min_epochs=9), graph, class_emb,
              progress=False)  # fmt: skip
    assert r.epochs_run >= 9


@pytest.mark.parametrize("method", ["huse", "contrastive"])
def test_resume_equals_an_uninterrupted_run(tmp_path, fs, graph, class_emb, method):
    # contrastive also checks the loss's own parameter (InfoNCE's learnable temperature).
    first = train(fs, cfg(method, epochs=3), graph, class_emb, out=tmp_path / "a", progress=False)
    assert first.epochs_run == 3
    assert (tmp_path / "a" / "checkpoints" / "last.pt").exists()
    resumed = train(
        fs, cfg(method, epochs=6), graph, class_emb, out=tmp_path / "a", resume=True,
        progress=False,
    )  # fmt: skip
    whole = train(fs, cfg(method, epochs=6), graph, class_emb, out=tmp_path / "b", progress=False)
    assert resumed.epochs_run == whole.epochs_run == 6
    assert without_seconds(resumed.history) == without_seconds(whole.history)
    assert resumed.best_epoch == whole.best_epoch
    assert_same_weights(state(resumed.net), state(whole.net))  # the best weights
    last_a = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=False)
    last_b = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=False)
    assert last_a["epoch"] == last_b["epoch"] == 6
    assert_same_weights(last_a["net"], last_b["net"])  # the last weights
    assert_same_weights(last_a["loss"], last_b["loss"])


def test_ema_returns_the_running_average_of_the_step_weights(fs, graph, class_emb):
    # 80 train items, batch 24: 4 steps (the last of 8). With decay d the average is
    # e1 = w1, e_k = d·e_(k-1) + (1 - d)·w_k; after one epoch that is the returned net.
    steps: list[list[torch.Tensor]] = []
    hook = register_optimizer_step_post_hook(
        lambda opt, args, kwargs: steps.append(
            [p.detach().clone() for g in opt.param_groups for p in g["params"]]
        )
    )
    try:
        plain = train(fs, cfg(epochs=1), graph, class_emb, progress=False)
    finally:
        hook.remove()
    assert len(steps) == 4
    d = 0.6
    averaged = train(fs, cfg(epochs=1, ema_decay=d), graph, class_emb, progress=False)
    names = [n for n, _ in plain.net.named_parameters()]
    by_hand = steps[0][: len(names)]
    for w in steps[1:]:
        by_hand = [d * e + (1 - d) * x for e, x in zip(by_hand, w[: len(names)], strict=True)]
    got = dict(averaged.net.named_parameters())
    for name, e, last in zip(names, by_hand, steps[-1], strict=True):
        assert torch.allclose(got[name], e, atol=1e-6), name
        assert torch.equal(dict(plain.net.named_parameters())[name], last)  # raw = last step
    assert not torch.allclose(got[names[0]], steps[-1][0])  # the average is not the last step


def test_resume_with_ema_equals_an_uninterrupted_run(tmp_path, fs, graph, class_emb):
    c = dict(ema_decay=0.9)
    train(fs, cfg(epochs=3, **c), graph, class_emb, out=tmp_path / "a", progress=False)
    resumed = train(
        fs, cfg(epochs=6, **c), graph, class_emb, out=tmp_path / "a", resume=True, progress=False
    )
    whole = train(fs, cfg(epochs=6, **c), graph, class_emb, out=tmp_path / "b", progress=False)
    assert without_seconds(resumed.history) == without_seconds(whole.history)
    assert_same_weights(state(resumed.net), state(whole.net))


def test_resume_with_ema_needs_averaged_weights(tmp_path, fs, graph, class_emb):
    train(fs, cfg(epochs=2), graph, class_emb, out=tmp_path, progress=False)
    ckpt = tmp_path / "checkpoints" / "last.pt"
    state_ = torch.load(ckpt, weights_only=False)
    state_["config"].pop("ema_decay")  # as written before the option existed
    from huse.train import save_checkpoint

    save_checkpoint(ckpt, state_)
    with pytest.raises(ValueError, match="no averaged weights"):
        train(fs, cfg(epochs=4, ema_decay=0.9), graph, class_emb, out=tmp_path, resume=True,
              progress=False)  # fmt: skip


def test_resume_without_a_checkpoint_starts_fresh(tmp_path, fs, graph, class_emb):
    a = train(fs, cfg(epochs=2), graph, class_emb, out=tmp_path, resume=True, progress=False)
    b = train(fs, cfg(epochs=2), graph, class_emb, progress=False)
    assert_same_weights(state(a.net), state(b.net))


def test_train_log_has_one_row_per_epoch_with_the_loss_terms(tmp_path, fs, graph, class_emb):
    r = train(fs, cfg("huse", epochs=4), graph, class_emb, out=tmp_path, progress=False)
    with open(tmp_path / "train_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3, 4]
    cols = ("train_cls", "train_graph", "train_gap", "train_instance", "train_total", "val_score")
    for col in (*cols, "val_instance_xR@1", "val_mean_nDCG@10", "seconds"):
        assert col in rows[0], col
    eta = cfg("huse").instance_weight
    assert eta > 0  # the default huse objective has the instance term
    for row, h in zip(rows, r.history):
        total = (
            float(row["train_cls"]) + float(row["train_graph"]) + float(row["train_gap"])
            + eta * float(row["train_instance"])
        )  # fmt: skip
        assert float(row["train_total"]) == pytest.approx(total, rel=1e-5)
        assert float(row["train_total"]) == pytest.approx(h["train_total"])


def test_empty_train_split_is_an_error(make_feature_set, graph):
    fs = make_feature_set(per_class=4, split=(0, 2, 2))
    with pytest.raises(DataError, match=r"train split is empty \(20 val, 20 test items\)"):
        train(fs, cfg(), graph, progress=False)


def test_a_missing_validation_split_warns_and_trains_to_the_cap(make_feature_set, graph):
    fs = make_feature_set(per_class=6, split=(0, 0, 2))
    with pytest.warns(SplitWarning, match="validation split has 0 items"):
        r = train(fs, cfg(epochs=3), graph, progress=False)
    assert (r.epochs_run, r.stopped) == (3, "epoch_cap")
    assert all("val_score" not in row for row in r.history)


# --- the loop's parts ----------------------------------------------------------------------


def test_early_stopping_keeps_the_best_epoch_and_waits_out_patience():
    from huse.train import EarlyStopping

    net = torch.nn.Linear(2, 1)
    stop = EarlyStopping(patience=2, min_epochs=5, module=net)
    with torch.no_grad():
        for epoch, score in enumerate([0.1, 0.5, 0.5 + 1e-7, 0.4, 0.3, 0.2], start=1):
            net.weight.fill_(epoch)
            stop.step(epoch, score, net)
            # A gain within 1e-6 is no gain: epoch 3 does not replace epoch 2.
            assert stop.best_epoch == (1 if epoch == 1 else 2)
            assert stop.bad == max(0, epoch - 2)
            assert stop.should_stop(epoch) == (epoch >= 5)  # patience ran out at 4
    assert stop.best_score == 0.5
    assert torch.equal(stop.best_state["weight"], torch.full((1, 2), 2.0))  # a copy
    again = EarlyStopping(patience=2, min_epochs=5, module=net)
    again.load_state_dict(stop.state_dict())
    assert again.state_dict() == stop.state_dict()


def test_part_stopping_keeps_each_tower_pair_from_its_own_best_epoch():
    from huse.train import PartStopping

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.image_tower = torch.nn.Linear(2, 1)
            self.image_instance_tower = torch.nn.Linear(2, 1)

    net = Net()
    stop = PartStopping(patience=2, min_epochs=1, module=net, instance=True)
    cls_scores = [0.1, 0.5, 0.4, 0.3, 0.9, 0.9]  # stops at 4; epoch 5's 0.9 comes too late
    inst_scores = [0.1, 0.2, 0.3, 0.4, 0.5, 0.4, 0.3]  # best at 5, stops at 7
    stopped_at = None
    with torch.no_grad():
        for epoch in range(1, 8):
            for p in net.parameters():
                p.fill_(epoch)
            row = {"val_instance_score": inst_scores[epoch - 1]}
            stop.step(epoch, row, cls_scores[min(epoch, 6) - 1], net)
            if stop.should_stop(epoch):
                stopped_at = epoch
                break
    assert stopped_at == 7
    assert stop.best_epoch == 2 and stop.instance_best_epoch == 5
    best = stop.best_state()
    assert torch.equal(best["image_tower.weight"], torch.full((1, 2), 2.0))
    assert torch.equal(best["image_instance_tower.weight"], torch.full((1, 2), 5.0))
    assert set(stop.inst.best_state) == {"image_instance_tower.weight", "image_instance_tower.bias"}
    assert stop.cls.best_score == 0.5  # a stopped part is no longer scored
    again = PartStopping(patience=2, min_epochs=1, module=net, instance=True)
    again.load_state_dict(stop.state_dict())
    assert again.instance_best_epoch == 5 and again.should_stop(7)
    plain = PartStopping(patience=2, min_epochs=1, module=net, instance=False)
    for epoch, score in enumerate([0.1, 0.5, 0.4, 0.3], start=1):
        plain.step(epoch, {"val_instance_score": 1.0}, score, net)
    assert plain.should_stop(4) and plain.instance_best_epoch is None
    assert plain.state_dict()["instance_stopper"] is None


def test_instance_towers_stop_on_their_own_validation_score(make_feature_set, graph, class_emb):
    easy = make_feature_set(spread=6.0, noise=0.3)
    r = train(easy, cfg("huse", epochs=40, patience=3), graph, class_emb, progress=False)
    assert r.stopped == "early_stopping" and r.instance_best_epoch is not None
    cls_scores = [row["val_score"] for row in r.history]
    inst = [row["val_instance_score"] for row in r.history]

    def best_and_stop(scores, patience=3):  # the rule by hand: first best, then patience
        best = 0
        for e in range(len(scores)):
            if scores[e] > scores[best] + 1e-6:
                best = e
            if e - best >= patience:
                return best + 1, e + 1
        return best + 1, None

    # Each part keeps its own best epoch and stops on its own; the run ends with the later.
    (cls_best, cls_stop), (inst_best, inst_stop) = best_and_stop(cls_scores), best_and_stop(inst)
    assert (r.best_epoch, r.instance_best_epoch) == (cls_best, inst_best)
    assert r.epochs_run == max(cls_stop, inst_stop)
    assert r.best_epoch != r.instance_best_epoch  # so the kept weights come from two epochs
    from huse.evaluate import embed, instance_part_recall

    out = embed(r.net, easy, easy.split_indices("val"))
    kept = instance_part_recall(r.net, out, ks=(1,))
    assert kept == pytest.approx(inst[r.instance_best_epoch - 1])
    off = train(easy, cfg("huse", epochs=40, patience=3, instance_stopping=False), graph,
                class_emb, progress=False)  # fmt: skip
    assert off.instance_best_epoch is None and "val_instance_score" not in off.history[0]
    assert off.epochs_run == off.best_epoch + 3


def test_weight_average_without_decay_is_the_net_itself():
    from huse.train import WeightAverage

    net = torch.nn.Linear(2, 1)
    plain = WeightAverage(net, 0.0)
    plain.update(net)
    assert plain.module is net and plain.state_dict() is None
    averaged = WeightAverage(net, 0.5)
    assert averaged.module is not net
    with torch.no_grad():
        net.weight.fill_(1.0)
        averaged.update(net)  # the first update copies
        net.weight.fill_(3.0)
        averaged.update(net)
    assert torch.equal(averaged.module.weight, torch.full((1, 2), 2.0))


def test_loss_meter_averages_over_batches_and_skips_missing_terms():
    from huse.train import LossMeter

    meter = LossMeter()
    meter.add({"total": torch.tensor(1.0), "graph": None})
    meter.add({"total": 3.0, "graph": 0.5})
    assert meter.means() == {"total": 2.0, "graph": 0.25}
    assert meter.shown() == {"total": "2.000", "graph": "0.250"}


def test_train_log_writes_every_column_any_row_has(tmp_path):
    from huse.train import TrainLog

    TrainLog(None, 0).write([{"epoch": 1}])  # no run folder: nothing written
    TrainLog(tmp_path / "other", 1).write([{"epoch": 1}])  # not rank 0
    assert not (tmp_path / "other").exists()
    log = TrainLog(tmp_path, 0)
    log.write([{"epoch": 1, "train_total": 2.0}, {"epoch": 2, "val_score": 0.5}])
    log.close()
    with open(tmp_path / "train_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows == [
        {"epoch": "1", "train_total": "2.0", "val_score": ""},
        {"epoch": "2", "train_total": "", "val_score": "0.5"},
    ]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_training_validates_resumes_and_hands_back_a_cpu_model(tmp_path, fs, graph, class_emb):
    from huse.model import HUSEModel, ModelInfo

    gpu = dict(device="cuda")
    train(fs, cfg("huse", epochs=2, **gpu), graph, class_emb, out=tmp_path / "a", progress=False)
    resumed = train(
        fs, cfg("huse", epochs=4, **gpu), graph, class_emb, out=tmp_path / "a", resume=True,
        progress=False,
    )  # fmt: skip
    whole = train(fs, cfg("huse", epochs=4, **gpu), graph, class_emb, out=tmp_path / "b",
                  progress=False)  # fmt: skip
    assert resumed.epochs_run == whole.epochs_run == 4
    for a, b in zip(resumed.history, whole.history):
        assert a["train_total"] == pytest.approx(b["train_total"], rel=1e-4)
        assert a["val_score"] == pytest.approx(b["val_score"], abs=0.05)
    model = HUSEModel(whole.net, ModelInfo(model=whole.net.cfg, classes=fs.hierarchy.classes))
    emb = model.embed_image_features(fs.image[:3])
    assert emb.shape == (3, 32)
