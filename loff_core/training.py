"""Train a compact head on cached features (with tensor augmentations) and predict with it.

`train_head` is seeded and deterministic on the CPU, keeps the best head by a validation
monitor, stops early, honours `progress.stop_requested` (keep the best so far) and
`progress.check()` (cancel), and survives CUDA out-of-memory by halving the batch size and
redoing the epoch from a snapshot.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .augment import TensorAugment
from .models import resolve_device
from .errors import Remedy, TrainingError, is_out_of_memory
from .heads import HeadConfig, build_head, predicted_class, probabilities
from .progress import Progress
from .settings import HEAD_KINDS, TASKS, TrainConfig  # declared once, with defaults and help

_MEMORY_LIMIT = 2 * 1024**3
_IMPROVEMENT = 1e-4


@dataclass
class TrainedHead:
    head_config: HeadConfig
    state_dict: dict[str, torch.Tensor]
    history: list[dict[str, Any]]
    best_epoch: int
    best_score: float
    monitor: str
    stopped: str  # "completed" | "early_stopping" | "user_stop" | "interrupted" (Ctrl-C / SIGTERM)
    notes: list[str] = field(default_factory=list)  # what was done differently, e.g. a GPU out-of-memory retry


def _in_memory(source: Any) -> Any:
    """The source itself, or its in-RAM copy when that fits in 2 GiB."""
    if not hasattr(source, "to_memory"):
        return source
    size = 0
    if hasattr(source, "nbytes_per_image"):
        size = len(source.image_ids) * int(source.nbytes_per_image())
    elif hasattr(source, "nbytes"):
        size = int(source.nbytes())
    return source.to_memory() if size <= _MEMORY_LIMIT else source


def _read(source: Any, indices: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of `indices` (already sorted ascending) as float32 tensors on `device`."""
    cls, grid = source.read(indices)
    cls_t = torch.from_numpy(np.ascontiguousarray(cls)).to(device).float()
    grid_t = torch.from_numpy(np.ascontiguousarray(grid)).to(device).float()
    return cls_t, grid_t


def lr_schedule(optimizer: torch.optim.Optimizer, total: int, warmup: int, min_lr: float) -> Any:
    """timm's cosine schedule per step: a linear warm-up over `warmup` steps from lr / warmup
    to the optimizer's lr, then cosine to `min_lr` at step `total`. Call
    `.step_update(step)` before each step; it depends only on the step number, so a new
    schedule (e.g. after the batch was halved) continues where the step count is."""
    from timm.scheduler import CosineLRScheduler

    lr = optimizer.param_groups[0].get("initial_lr", optimizer.param_groups[0]["lr"])
    # t_initial >= 2: with 1, timm warns that the schedule has no effect (it has none either way then)
    return CosineLRScheduler(optimizer, t_initial=max(2, total - warmup), lr_min=min_lr, warmup_t=warmup,
                             warmup_lr_init=lr / warmup if warmup > 0 else lr, warmup_prefix=True,
                             t_in_epochs=False)


def _loss(logits: torch.Tensor, onehot: torch.Tensor, class_w: torch.Tensor, task: str) -> torch.Tensor:
    """Weighted loss; `onehot` are (possibly mixed) soft class targets [B, K]."""
    sample_w = onehot @ class_w  # [B]
    if task == "ordinal":
        cum = torch.flip(torch.cumsum(torch.flip(onehot, [1]), 1), [1])[:, 1:]  # P(y > k)
        per = F.binary_cross_entropy_with_logits(logits, cum.clamp(0, 1), reduction="none").mean(dim=1)
    else:
        per = -(onehot * F.log_softmax(logits, dim=1)).sum(dim=1)
    return (per * sample_w).sum() / sample_w.sum().clamp(min=1e-12)


def _validate_labels(name: str, ids: Sequence[str], y: Sequence[int], num_classes: int) -> np.ndarray:
    if len(ids) != len(y):
        raise TrainingError(f"{name}: {len(ids)} image ids but {len(y)} labels")
    arr = np.asarray(list(y), dtype=np.int64) if len(y) else np.zeros(0, dtype=np.int64)
    bad = arr[(arr < 0) | (arr >= num_classes)]
    if bad.size:
        raise TrainingError(
            f"{name}: label {int(bad[0])} is outside the {num_classes} classes (expected 0..{num_classes - 1})"
        )
    return arr


@dataclass
class _Eval:
    loss: float
    accuracy: float
    balanced_accuracy: float
    score: float


def _val_metrics(task: str, monitor: str, y: np.ndarray, probs: np.ndarray, num_classes: int) -> tuple[float, float, float]:
    from scipy.stats import kendalltau
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

    pred = predicted_class(probs, task)
    acc = float(accuracy_score(y, pred))
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bal = float(balanced_accuracy_score(y, pred))
            if monitor == "val_kendall_tau":
                tau = kendalltau(y, pred).statistic
                score = -1.0 if tau is None or not np.isfinite(tau) else float(tau)
            elif monitor == "val_auc":
                try:
                    if num_classes == 2:
                        score = float(roc_auc_score(y, probs[:, 1]))
                    else:
                        score = float(roc_auc_score(y, probs, multi_class="ovr", average="macro",
                                                    labels=list(range(num_classes))))
                except ValueError:
                    score = float("nan")
                if not np.isfinite(score):
                    score = bal
            else:
                score = bal
    return acc, bal, score


def train_head(
    source: Any,
    train_ids: Sequence[str],
    train_y: Sequence[int],
    val_ids: Sequence[str],
    val_y: Sequence[int],
    config: TrainConfig,
    *,
    num_classes: int,
    progress: Progress = Progress(),
    on_epoch: Optional[Callable[[dict[str, Any]], None]] = None,
) -> TrainedHead:
    """Train a head; returns the best head (by the monitor) with its history."""
    if num_classes < 2:
        raise TrainingError(f"training needs at least two classes, got {num_classes}")
    if config.task not in TASKS:
        raise TrainingError(f"unknown task {config.task!r}; expected one of {', '.join(TASKS)}")
    if config.head not in HEAD_KINDS:
        raise TrainingError(f"unknown head {config.head!r}; expected one of {', '.join(HEAD_KINDS)}")
    if config.task == "ordinal" and num_classes < 3:
        raise TrainingError("the ordinal task needs at least three ordered levels")
    if len(train_ids) == 0:
        raise TrainingError("no training images: the training split is empty")
    if config.epochs < 1 or config.batch_size < 1:
        raise TrainingError(f"epochs and batch size must be at least 1 (got {config.epochs}, {config.batch_size})")
    ytr = _validate_labels("training labels", train_ids, train_y, num_classes)
    yva = _validate_labels("validation labels", val_ids, val_y, num_classes)

    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    device = resolve_device(config.device)
    data = _in_memory(source)
    try:
        train_idx = np.asarray(data.indices(list(train_ids)), dtype=np.int64)
        val_idx = np.asarray(data.indices(list(val_ids)), dtype=np.int64) if len(val_ids) else np.zeros(0, np.int64)
    except KeyError as exc:
        raise TrainingError(str(exc.args[0]) if exc.args else str(exc)) from None

    head_config = HeadConfig(
        kind=config.head, task=config.task, num_classes=int(num_classes),
        feature_dim=int(source.feature_dim), grid_hw=tuple(int(x) for x in source.grid_hw),
        width=int(config.width), depth=int(config.depth),
    )
    head = build_head(head_config).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    augment = TensorAugment(config.augment, gen)

    counts = np.bincount(ytr, minlength=num_classes).astype(np.float64)
    if config.class_weights:
        w = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
        w = w / w[counts > 0].mean()
    else:
        w = np.ones(num_classes)
    class_w = torch.tensor(w, dtype=torch.float32, device=device)

    has_val = len(val_idx) > 0
    if not has_val:
        monitor = "train_loss_neg"
    elif config.task == "ordinal":
        monitor = "val_kendall_tau"
    elif len(np.unique(yva)) == num_classes:
        monitor = "val_auc"
    else:
        monitor = "val_balanced_accuracy"  # AUC undefined with classes missing from validation

    n = len(train_idx)
    batch_size = int(config.batch_size)

    def schedule() -> tuple[int, int, int]:
        per_epoch = math.ceil(n / batch_size)
        total = per_epoch * config.epochs
        warmup = config.warmup_steps if config.warmup_steps is not None else int(0.05 * total)
        return per_epoch, total, int(warmup)

    def evaluate() -> _Eval:
        head.eval()
        losses, all_probs = [], []
        order = np.argsort(val_idx, kind="stable")
        eval_bs = max(batch_size, 64)
        with torch.inference_mode():
            for s in range(0, len(order), eval_bs):
                pos = order[s : s + eval_bs]
                cls, grid = _read(data, val_idx[pos], device)
                y = torch.from_numpy(yva[pos]).to(device)
                logits = head(cls, grid)
                onehot = F.one_hot(y, num_classes).float()
                losses.append(float(_loss(logits, onehot, torch.ones_like(class_w), config.task)) * len(pos))
                all_probs.append(probabilities(logits.float(), config.task).double().cpu().numpy())
        probs = np.concatenate(all_probs)
        probs = probs / probs.sum(axis=1, keepdims=True)
        acc, bal, score = _val_metrics(config.task, monitor, yva[order], probs, num_classes)
        return _Eval(sum(losses) / len(order), acc, bal, score)

    def train_epoch(epoch: int) -> tuple[float, float, bool]:
        """One pass over the training set; returns (mean loss, last lr, stop requested)."""
        per_epoch, total, warmup = schedule()
        scheduler = lr_schedule(optimizer, total, warmup, config.min_lr)
        head.train()
        perm = torch.randperm(n, generator=gen).numpy()
        loss_sum, seen, lr = 0.0, 0, config.lr
        for b in range(per_epoch):
            progress.check()
            pos = np.sort(perm[b * batch_size : (b + 1) * batch_size])  # train_idx positions
            pos = pos[np.argsort(train_idx[pos], kind="stable")]  # ascending cache rows
            step = epoch * per_epoch + b
            scheduler.step_update(step)
            lr = optimizer.param_groups[0]["lr"]
            cls, grid = _read(data, train_idx[pos], device)
            onehot = F.one_hot(torch.from_numpy(ytr[pos]), num_classes).float().to(device)
            cls, grid, onehot = augment(cls, grid, onehot)
            logits = head(cls, grid)
            loss = _loss(logits, onehot, class_w, config.task)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip and config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(head.parameters(), config.grad_clip)
            optimizer.step()
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise TrainingError(f"training diverged: the loss became {loss_value} in epoch {epoch + 1}; "
                                    "try a lower learning rate")
            loss_sum += loss_value * len(pos)
            seen += len(pos)
            progress.report(step + 1, total, f"epoch {epoch + 1}/{config.epochs} loss {loss_sum / seen:.4f}")
            if progress.stop_requested:
                return loss_sum / seen, lr, True
        return loss_sum / max(seen, 1), lr, False

    history: list[dict[str, Any]] = []
    best_state: Optional[dict[str, torch.Tensor]] = None
    best_score, best_epoch, best_loss = -math.inf, 0, math.inf
    stale = 0
    stopped = "completed"
    notes: list[str] = []
    epoch = 0
    while epoch < config.epochs:
        started = time.monotonic()
        snapshot = (
            copy.deepcopy(head.state_dict()),
            copy.deepcopy(optimizer.state_dict()),
            gen.get_state(),
            torch.get_rng_state(),
        )
        try:
            train_loss, lr, stop = train_epoch(epoch)
            finished_epoch = not stop
            if stop and best_state is not None:
                stopped = "user_stop"
                break
            ev = evaluate() if has_val else None
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the best head so far is the result
            if best_state is None:
                raise
            stopped = "interrupted"
            notes.append(f"interrupted during epoch {epoch + 1}: the best head so far (epoch {best_epoch}) is kept")
            break
        except Exception as exc:  # noqa: BLE001 - only OOM is handled, the rest re-raised
            if not is_out_of_memory(exc):
                raise
            if batch_size <= 1:
                raise TrainingError("GPU out of memory even with batch size 1", remedy=Remedy.HEAD_LINEAR) from None
            batch_size = max(1, batch_size // 2)
            message = f"GPU out of memory: retrying with batch size {batch_size}"
            notes.append(message)
            progress.notice(message)
            del exc
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            head.load_state_dict(snapshot[0])
            optimizer.load_state_dict(snapshot[1])
            gen.set_state(snapshot[2])
            torch.set_rng_state(snapshot[3])
            continue
        del snapshot
        score = ev.score if ev is not None else -train_loss
        entry: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": float(train_loss),
            "val_loss": None if ev is None else float(ev.loss),
            "val_accuracy": None if ev is None else float(ev.accuracy),
            "val_balanced_accuracy": None if ev is None else float(ev.balanced_accuracy),
            monitor: float(score),
            "lr": float(lr),
            "seconds": round(time.monotonic() - started, 3),
            "batch_size": int(batch_size),
        }
        history.append(entry)
        if on_epoch is not None:
            on_epoch(dict(entry))
        # better monitor, or (a saturated monitor such as AUC = 1) an equal one with a lower
        # validation loss: ranking alone would keep an early, badly calibrated head
        loss_now = ev.loss if ev is not None else train_loss
        tie_better = abs(score - best_score) <= _IMPROVEMENT and loss_now < best_loss - _IMPROVEMENT
        if best_state is None or score > best_score + _IMPROVEMENT or tie_better:
            best_score, best_epoch, stale, best_loss = float(score), epoch + 1, 0, float(loss_now)
            best_state = {k: v.detach().cpu().clone() for k, v in head.state_dict().items()}
        else:
            stale += 1
        epoch += 1
        if not finished_epoch:
            stopped = "user_stop"
            break
        if progress.stop_requested:
            stopped = "user_stop"
            break
        if stale >= config.patience and epoch < config.epochs:
            stopped = "early_stopping"
            break

    assert best_state is not None
    return TrainedHead(
        head_config=head_config,
        state_dict=best_state,
        history=history,
        best_epoch=best_epoch,
        best_score=float(best_score),
        monitor=monitor,
        stopped=stopped,
        notes=notes,
    )


def predict_probabilities(
    head_config: HeadConfig,
    state_dict: dict[str, Any],
    source: Any,
    image_ids: Sequence[str],
    *,
    device: str = "auto",
    batch_size: int = 256,
    progress: Optional[Progress] = None,
) -> np.ndarray:
    """[N, K] float64 probabilities of `image_ids` (no augmentation, eval mode). With a
    `progress`: reports the images done and checks for cancel between batches."""
    dev = resolve_device(device)
    head = build_head(head_config)
    head.load_state_dict(state_dict, strict=True)
    head = head.to(dev).eval()
    k = head_config.num_classes
    ids = list(image_ids)
    out = np.zeros((len(ids), k), dtype=np.float64)
    if not ids:
        return out
    idx = np.asarray(source.indices(ids), dtype=np.int64)
    with torch.inference_mode():
        for s in range(0, len(idx), batch_size):
            if progress is not None:
                progress.check()
                progress.report(s, len(idx), f"predicting {len(idx)} images")
            chunk = idx[s : s + batch_size]
            order = np.argsort(chunk, kind="stable")
            cls, grid = _read(source, chunk[order], dev)
            probs = probabilities(head(cls, grid), head_config.task).double().cpu().numpy()
            out[s + order] = probs
    if progress is not None:
        progress.report(len(idx), len(idx), f"predicted {len(idx)} images")
    return out / out.sum(axis=1, keepdims=True).clip(min=1e-300)
