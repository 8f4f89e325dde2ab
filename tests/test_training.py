"""Training: learns a separable toy problem, is reproducible, stops early / on request,
survives a (simulated) GPU out-of-memory, refuses bad input, and predicts like it trained."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import loff_core.training as training
from loff_cli import oom_once, train_step_faults
from loff_core.settings import AugmentConfig
from loff_core.errors import TrainingError
from loff_core.features import InMemoryFeatures
from loff_core.heads import build_head
from loff_core.progress import Cancelled, Progress
from loff_core.settings import TrainConfig
from loff_core.training import predict_probabilities, train_head

C, H, W = 8, 2, 2


def _source(n=96, k=3, seed=0, shift=3.0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    u0, u1 = rng.normal(size=(2, C))
    proto = shift * (u0 + np.arange(k)[:, None] * u1)  # ordered levels on a line, not through 0 (LayerNorm)
    cls = (rng.normal(size=(n, C)) + proto[y]).astype(np.float16)
    grid = (rng.normal(size=(n, C, H, W)) + proto[y][:, :, None, None]).astype(np.float16)
    return InMemoryFeatures([f"img{i:03d}" for i in range(n)], cls, grid), y.tolist()


def _split(src, y, n_train=64):
    ids = src.image_ids
    return ids[:n_train], y[:n_train], ids[n_train:], y[n_train:]


def _cfg(**kw):
    base = dict(head="attention", epochs=3, batch_size=16, width=16, depth=1, device="cpu", lr=3e-3)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("head", ["linear", "attention", "vit"])
@pytest.mark.parametrize("task", ["classification", "ordinal"])
def test_learns_and_predicts(head, task):
    src, y = _source()
    tr_ids, tr_y, va_ids, va_y = _split(src, y)
    seen = []
    result = train_head(src, tr_ids, tr_y, va_ids, va_y, _cfg(head=head, task=task, epochs=6, lr=3e-2 if head == "linear" else 3e-3),
                        num_classes=3,
                        progress=Progress(on_partial=lambda p: seen.append(p.value) if p.kind == "epoch" else None))
    monitor = "val_auc" if task == "classification" else "val_kendall_tau"
    assert result.monitor == monitor
    assert len(result.history) == len(seen) and seen[0]["epoch"] == 1
    assert set(seen[0]) == {"epoch", "train_loss", "val_loss", "val_accuracy", "val_balanced_accuracy", monitor,
                            "lr", "seconds", "batch_size", "monitor", "score", "best_epoch", "best_score"}
    assert set(result.history[0]) == set(seen[0]) - {"monitor", "score", "best_epoch", "best_score"}
    # each epoch says its validation score and the best epoch so far, as the history bears out
    for i, entry in enumerate(seen):
        assert entry["monitor"] == monitor and entry["score"] == entry[monitor]
        best = max(range(i + 1), key=lambda j: (seen[j][monitor], -j))  # ties: the engine may prefer a later lower loss
        assert entry["best_score"] == pytest.approx(seen[best][monitor], abs=1e-4)
        assert seen[entry["best_epoch"] - 1][monitor] == pytest.approx(entry["best_score"])
    assert seen[-1]["best_epoch"] == result.best_epoch
    assert result.best_score > 0.7
    assert 1 <= result.best_epoch <= len(result.history)
    assert all(v.device.type == "cpu" for v in result.state_dict.values())
    probs = predict_probabilities(result.head_config, result.state_dict, src, va_ids[::-1], device="cpu", batch_size=7)
    assert probs.shape == (len(va_ids), 3) and probs.dtype == np.float64
    assert np.allclose(probs.sum(1), 1)
    head = build_head(result.head_config).eval()
    head.load_state_dict(result.state_dict, strict=True)
    cls, grid = src.read(src.indices(va_ids[::-1]))
    with torch.no_grad():
        from loff_core.heads import probabilities
        want = probabilities(head(torch.from_numpy(cls).float(), torch.from_numpy(grid).float()), task).numpy()
    assert np.abs(probs - want).max() < 1e-5


def test_same_seed_same_history_and_weights():
    src, y = _source()
    args = _split(src, y)
    a = train_head(src, *args, _cfg(head="vit", seed=3), num_classes=3)
    b = train_head(src, *args, _cfg(head="vit", seed=3), num_classes=3)
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(a.history) == strip(b.history)
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    c = train_head(src, *args, _cfg(head="vit", seed=4), num_classes=3)
    assert strip(c.history) != strip(a.history)


def test_early_stopping_and_no_validation():
    src, y = _source()
    tr_ids, tr_y, _, _ = _split(src, y)
    # learning rate ~0 (0 itself is out of the declared range): nothing ever improves after epoch 1
    r = train_head(src, tr_ids, tr_y, [], [], _cfg(head="linear", epochs=10, patience=2, lr=1e-12, min_lr=0.0,
                                                    augment=AugmentConfig.off(), class_weights=False), num_classes=3)
    assert r.monitor == "train_loss_neg"
    assert r.stopped == "early_stopping" and len(r.history) == 3 and r.best_epoch == 1
    assert r.history[0]["val_loss"] is None


def test_auc_falls_back_when_validation_lacks_a_class():
    src, y = _source()
    ids = src.image_ids
    val = [i for i, label in zip(ids[64:], y[64:]) if label != 2]
    val_y = [label for label in y[64:] if label != 2]
    r = train_head(src, ids[:64], y[:64], val, val_y, _cfg(epochs=1), num_classes=3)
    assert r.monitor == "val_balanced_accuracy"


def test_user_stop_keeps_a_head():
    src, y = _source()
    progress = Progress()
    calls = []

    def on_report(done, total, msg):
        calls.append(done)
        if done == 2:
            progress.request_stop()

    progress.on_report = on_report
    r = train_head(src, *_split(src, y), _cfg(epochs=5), num_classes=3, progress=progress)
    assert r.stopped == "user_stop" and len(r.history) == 1 and r.state_dict
    assert max(calls) == 2


def test_cancel_propagates():
    src, y = _source()
    progress = Progress()
    progress.cancel()
    with pytest.raises(Cancelled):
        train_head(src, *_split(src, y), _cfg(), num_classes=3, progress=progress)


def test_out_of_memory_halves_the_batch(monkeypatch):
    src, y = _source()
    inject, raised = oom_once(32)
    train_step_faults(monkeypatch).fn = inject
    messages = []
    progress = Progress(on_report=lambda d, t, m: messages.append(m))
    r = train_head(src, *_split(src, y), _cfg(batch_size=32), num_classes=3, progress=progress)
    assert raised == [32]
    assert [e["batch_size"] for e in r.history] == [16, 16, 16]
    assert r.stopped == "completed"
    assert "GPU out of memory: retrying with batch size 16" in messages
    assert r.notes == ["GPU out of memory: retrying with batch size 16"]  # in the result, not only progress

    train_step_faults(monkeypatch).fn = lambda bs: (_ for _ in ()).throw(RuntimeError("out of memory"))
    with pytest.raises(TrainingError, match="batch size 1"):
        train_head(src, *_split(src, y), _cfg(batch_size=4), num_classes=3)


def test_out_of_memory_note_reaches_train_json_run_record_and_stderr(monkeypatch, tmp_path, capsys):
    """The OOM retry is in `loff train --json`'s `notes`, in the saved run.json, and on
    stderr even with --quiet (like extraction's notes)."""
    from loff_cli import loff_json

    from loff_core.project import Project

    loff_json(capsys, "demo", tmp_path / "p", "--patients", "8")
    loff_json(capsys, "extract", tmp_path / "p", "--backbone", "vit_tiny_patch16_224", "--random-init",
              "--image-size", "32", "--grid", "2", "--workers", "0")
    inject, raised = oom_once(8)
    faults = train_step_faults(monkeypatch)
    faults.fn = inject
    capsys.readouterr()
    from loff_core.cli import main

    assert main(["train", str(tmp_path / "p"), "--epochs", "1", "--batch-size", "8", "--json", "--quiet"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    note = "GPU out of memory: retrying with batch size 4"
    assert raised == [8] and out["notes"] == [note]
    assert Project.open(tmp_path / "p").run(out["run"]).record["notes"] == [note]
    assert f"loff train: note: {note}" in captured.err

    faults.fn = None
    clean = loff_json(capsys, "train", tmp_path / "p", "--epochs", "1")
    assert clean["notes"] == [] and Project.open(tmp_path / "p").run(clean["run"]).record["notes"] == []


def test_oom_retry_matches_a_clean_run_at_the_smaller_batch(monkeypatch):
    src, y = _source()
    clean = train_head(src, *_split(src, y), _cfg(batch_size=16, epochs=2), num_classes=3)
    state = {"n": 0}

    def inject(batch_size):  # fail in the middle of the first epoch at batch size 32
        if batch_size == 32:
            state["n"] += 1
            if state["n"] == 2:
                raise torch.cuda.OutOfMemoryError("out of memory")

    train_step_faults(monkeypatch).fn = inject
    retried = train_head(src, *_split(src, y), _cfg(batch_size=32, epochs=2), num_classes=3)
    # the epoch restarts from the snapshot with the same generator state; only the schedule
    # (computed from the batch size) is shared, so losses match a clean 16-batch run
    assert [e["train_loss"] for e in retried.history] == pytest.approx([e["train_loss"] for e in clean.history])


def test_bad_input_is_refused():
    src, y = _source()
    tr_ids, tr_y, va_ids, va_y = _split(src, y)
    with pytest.raises(TrainingError, match="empty"):
        train_head(src, [], [], va_ids, va_y, _cfg(), num_classes=3)
    with pytest.raises(TrainingError, match="outside"):
        train_head(src, tr_ids, [5] + tr_y[1:], va_ids, va_y, _cfg(), num_classes=3)
    with pytest.raises(TrainingError, match="outside"):
        train_head(src, tr_ids, tr_y, va_ids, [-1] + va_y[1:], _cfg(), num_classes=3)


class _DiskLike:
    """A source that refuses unsorted reads (like HDF5) and is too big for memory."""

    def __init__(self, inner):
        self.inner = inner
        self.image_ids = inner.image_ids
        self.feature_dim = inner.feature_dim
        self.grid_hw = inner.grid_hw
        self.to_memory_calls = 0

    def indices(self, ids):
        return self.inner.indices(ids)

    def read(self, indices):
        idx = np.asarray(indices)
        assert np.all(np.diff(idx) > 0), "reads must be sorted"
        return self.inner.read(idx)

    def nbytes_per_image(self):
        return 1 << 30

    def to_memory(self):
        self.to_memory_calls += 1
        return self.inner


def test_large_sources_are_streamed_in_sorted_batches():
    src, y = _source()
    disk = _DiskLike(src)
    r = train_head(disk, *_split(src, y), _cfg(epochs=1), num_classes=3)
    assert disk.to_memory_calls == 0 and r.history
    probs = predict_probabilities(r.head_config, r.state_dict, disk, src.image_ids[::-1], device="cpu")
    assert probs.shape == (96, 3)


def test_the_learning_rate_warms_up_then_follows_a_cosine_to_min_lr():
    from loff_core.training import lr_schedule

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = lr_schedule(optimizer, total=100, warmup=10, min_lr=1e-6)
    lrs = []
    for step in range(100):
        scheduler.step_update(step)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(1e-4) and all(a < b for a, b in zip(lrs[:10], lrs[1:11]))
    assert lrs[10] == pytest.approx(1e-3)  # the peak right after warm-up
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[55] == pytest.approx(1e-6 + (1e-3 - 1e-6) * 0.5 * (1 + math.cos(math.pi * 45 / 90)))
    again = lr_schedule(optimizer, total=100, warmup=10, min_lr=1e-6)  # e.g. rebuilt after an OOM retry
    again.step_update(55)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(lrs[55])
