"""Train a compact head on cached features (with tensor augmentations) and predict with it.

`train_head` is seeded and deterministic on the CPU, keeps the best head by a validation
monitor, stops early, honours `progress.stop_requested` (keep the best so far) and
`progress.check()` (cancel), and survives CUDA out-of-memory by halving the batch size and
redoing the epoch from a snapshot.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .augment import TensorAugment
from .models import resolve_device
from .errors import Remedy, TrainingError, is_out_of_memory
from .features import InMemoryFeatures
from .heads import HeadConfig, build_head, predicted_class, probabilities
from .progress import Progress
from .settings import TrainConfig  # declared once, with defaults and help

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


class TensorFeatures(InMemoryFeatures):
    """Features in RAM with their torch tensors made once (float32 when that fits in the
    memory limit, else the cache's float16, converted a batch at a time): what one
    cross-validation hands to every fold's training and prediction, so no fold or epoch
    converts the arrays again."""

    def __init__(self, image_ids: Sequence[str], cls: np.ndarray, grid: np.ndarray):
        super().__init__(image_ids, cls, grid)
        as_float = (cls.size + grid.size) * 4 <= _MEMORY_LIMIT
        convert = (lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))) if as_float \
            else (lambda a: torch.from_numpy(np.ascontiguousarray(a)))
        self.cls_t, self.grid_t = convert(cls), convert(grid)

    def to_memory(self) -> "TensorFeatures":
        return self

    def read_tensors(self, indices: np.ndarray, device: torch.device, grid: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        cls = self.cls_t.index_select(0, idx).to(device).float()
        if not grid:
            return cls, cls[:, :, None, None]
        return cls, self.grid_t.index_select(0, idx).to(device).float()


#: torch's intra-op threads while a cross-validation trains heads on the CPU (`cv_threads`),
#: unless OMP_NUM_THREADS or LOFF_CV_THREADS says otherwise: a head's step works on tensors of
#: about a million numbers, too small to split well, and on a busy 2-core machine a second
#: thread waits for a core another job holds (docs/benchmarks.md, "One configuration's CV").
CV_THREADS = 1


@contextlib.contextmanager
def cv_threads() -> Iterator[int]:
    """torch.set_num_threads for the time of a cross-validation: LOFF_CV_THREADS when set,
    else the user's OMP_NUM_THREADS (torch's own setting) when set, else CV_THREADS; never
    more than the cores this process may use. Restored afterwards. Inter-op threads are
    left alone (eager training runs no inter-op work, and they can be set only once)."""
    before = torch.get_num_threads()
    wanted = os.environ.get("LOFF_CV_THREADS") or ("" if os.environ.get("OMP_NUM_THREADS") else str(CV_THREADS))
    try:
        n = int(wanted) if wanted else before
    except ValueError:
        n = before
    try:
        cores = len(os.sched_getaffinity(0))  # the cores this process may run on (engines.available_cores)
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    n = max(1, min(n, cores))
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


def _in_memory(source: Any) -> Any:
    """The source itself, or its in-RAM copy (with its tensors, `TensorFeatures`) when that
    fits in 2 GiB."""
    if isinstance(source, TensorFeatures) or not hasattr(source, "to_memory"):
        return source
    size = 0
    if hasattr(source, "nbytes_per_image"):
        size = len(source.image_ids) * int(source.nbytes_per_image())
    elif hasattr(source, "nbytes"):
        size = int(source.nbytes())
    if size > _MEMORY_LIMIT:
        return source
    mem = source.to_memory()
    return TensorFeatures(mem.image_ids, mem.cls, mem.grid) if isinstance(mem, InMemoryFeatures) else mem


def _read(source: Any, indices: np.ndarray, device: torch.device,
          grid: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of `indices` (already sorted ascending) as float32 tensors on `device`.
    `grid` False (a head that never reads it, the linear probe): a [B, C, 1, 1] view of cls."""
    if isinstance(source, TensorFeatures):
        return source.read_tensors(indices, device, grid)
    cls, grid_a = source.read(indices)
    cls_t = torch.from_numpy(np.ascontiguousarray(cls)).to(device).float()
    if not grid:
        return cls_t, cls_t[:, :, None, None]
    grid_t = torch.from_numpy(np.ascontiguousarray(grid_a)).to(device).float()
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
) -> TrainedHead:
    """Train a head; returns the best head (by the monitor) with its history. Each epoch's
    history entry is an "epoch" partial result of `progress` as it finishes. `config`'s
    ranges were checked when it was built (TrainConfig.__post_init__)."""
    if num_classes < 2:
        raise TrainingError(f"training needs at least two classes, got {num_classes}")
    if config.task == "ordinal" and num_classes < 3:
        raise TrainingError("the ordinal task needs at least three ordered levels")
    if len(train_ids) == 0:
        raise TrainingError("no training images: the training split is empty")
    ytr = _validate_labels("training labels", train_ids, train_y, num_classes)
    yva = _validate_labels("validation labels", val_ids, val_y, num_classes)
    fit = _Fit.prepare(source, train_ids, ytr, val_ids, yva, config, num_classes, progress)
    return fit.run()


def _reads_grid(head: str) -> bool:
    """Whether a head kind reads the token grid (the linear probe reads only the pooled
    embedding: its grid is neither converted nor augmented)."""
    return head != "linear"


def _class_weights(y: np.ndarray, num_classes: int, balanced: bool) -> np.ndarray:
    """Inverse class frequency, mean 1 over the classes present (all ones when not `balanced`)."""
    if not balanced:
        return np.ones(num_classes)
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    w = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    return w / w[counts > 0].mean()


def _monitor(has_val: bool, task: str, yva: np.ndarray, num_classes: int) -> str:
    """The validation score that picks the best epoch."""
    if not has_val:
        return "train_loss_neg"
    if task == "ordinal":
        return "val_kendall_tau"
    if len(np.unique(yva)) == num_classes:
        return "val_auc"
    return "val_balanced_accuracy"  # AUC undefined with classes missing from validation


@dataclass
class _Fit:
    """One training in progress: the head, its optimizer and data, and what the epochs
    loop keeps (history, best head, stale epochs)."""

    config: TrainConfig
    data: Any
    head: torch.nn.Module
    head_config: HeadConfig
    optimizer: torch.optim.Optimizer
    augment: TensorAugment
    gen: torch.Generator
    device: torch.device
    train_idx: np.ndarray
    val_idx: np.ndarray
    ytr: np.ndarray
    yva: np.ndarray
    class_w: torch.Tensor
    num_classes: int
    monitor: str
    batch_size: int
    progress: Progress
    history: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    best_state: Optional[dict[str, torch.Tensor]] = None
    best_score: float = -math.inf
    best_epoch: int = 0
    best_loss: float = math.inf
    stale: int = 0

    @classmethod
    def prepare(cls, source: Any, train_ids: Sequence[str], ytr: np.ndarray, val_ids: Sequence[str],
                yva: np.ndarray, config: TrainConfig, num_classes: int, progress: Progress) -> "_Fit":
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
        class_w = torch.tensor(_class_weights(ytr, num_classes, config.class_weights), dtype=torch.float32,
                               device=device)
        augment = TensorAugment(config.augment, gen, grid=_reads_grid(config.head))
        return cls(config, data, head, head_config, optimizer, augment, gen, device,
                   train_idx, val_idx, ytr, yva, class_w, num_classes,
                   _monitor(len(val_idx) > 0, config.task, yva, num_classes), int(config.batch_size), progress)

    def schedule(self) -> tuple[int, int, int]:
        """(steps per epoch, all steps, warm-up steps) at the current batch size."""
        per_epoch = math.ceil(len(self.train_idx) / self.batch_size)
        total = per_epoch * self.config.epochs
        warmup = self.config.warmup_steps if self.config.warmup_steps is not None else int(0.05 * total)
        return per_epoch, total, int(warmup)

    def evaluate(self) -> _Eval:
        """Loss and the monitor on the validation images (no augmentation)."""
        head, config, val_idx = self.head, self.config, self.val_idx
        head.eval()
        losses, all_probs = [], []
        order = np.argsort(val_idx, kind="stable")
        eval_bs = max(self.batch_size, 64)
        with torch.inference_mode():
            for s in range(0, len(order), eval_bs):
                pos = order[s : s + eval_bs]
                cls, grid = _read(self.data, val_idx[pos], self.device, _reads_grid(config.head))
                y = torch.from_numpy(self.yva[pos]).to(self.device)
                logits = head(cls, grid)
                onehot = F.one_hot(y, self.num_classes).float()
                losses.append(float(_loss(logits, onehot, torch.ones_like(self.class_w), config.task)) * len(pos))
                all_probs.append(probabilities(logits.float(), config.task).double().cpu().numpy())
        probs = np.concatenate(all_probs)
        probs = probs / probs.sum(axis=1, keepdims=True)
        acc, bal, score = _val_metrics(config.task, self.monitor, self.yva[order], probs, self.num_classes)
        return _Eval(sum(losses) / len(order), acc, bal, score)

    def train_epoch(self, epoch: int) -> tuple[float, float, bool]:
        """One pass over the training set; returns (mean loss, last lr, stop requested)."""
        config, head, optimizer, progress = self.config, self.head, self.optimizer, self.progress
        batch_size, n = self.batch_size, len(self.train_idx)
        per_epoch, total, warmup = self.schedule()
        scheduler = lr_schedule(optimizer, total, warmup, config.min_lr)
        head.train()
        perm = torch.randperm(n, generator=self.gen).numpy()
        loss_sum, seen, lr = 0.0, 0, config.lr
        for b in range(per_epoch):
            progress.check()
            pos = np.sort(perm[b * batch_size : (b + 1) * batch_size])  # train_idx positions
            pos = pos[np.argsort(self.train_idx[pos], kind="stable")]  # ascending cache rows
            step = epoch * per_epoch + b
            scheduler.step_update(step)
            lr = optimizer.param_groups[0]["lr"]
            cls, grid = _read(self.data, self.train_idx[pos], self.device, _reads_grid(config.head))
            onehot = F.one_hot(torch.from_numpy(self.ytr[pos]), self.num_classes).float().to(self.device)
            cls, grid, onehot = self.augment(cls, grid, onehot)
            loss = _loss(head(cls, grid), onehot, self.class_w, config.task)
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
            progress.report(step + 1, total, f"epoch {epoch + 1}/{config.epochs} loss {loss_sum / seen:.4f}"
                                             f"{self.best_so_far()}")
            if progress.stop_requested:
                return loss_sum / seen, lr, True
        return loss_sum / max(seen, 1), lr, False

    def best_so_far(self) -> str:
        """', best val auc 0.812 (epoch 7)' once an epoch was scored on validation, else ''."""
        if not self.history or not self.monitor.startswith("val_"):
            return ""
        return f", best {self.monitor.replace('_', ' ')} {self.best_score:.3f} (epoch {self.best_epoch})"

    def snapshot(self) -> tuple[Any, ...]:
        return (copy.deepcopy(self.head.state_dict()), copy.deepcopy(self.optimizer.state_dict()),
                self.gen.get_state(), torch.get_rng_state())

    def after_out_of_memory(self, snapshot: tuple[Any, ...]) -> None:
        """Halve the batch size and go back to the epoch's start (`snapshot`)."""
        if self.batch_size <= 1:
            raise TrainingError("GPU out of memory even with batch size 1", remedy=Remedy.HEAD_LINEAR) from None
        self.batch_size = max(1, self.batch_size // 2)
        message = f"GPU out of memory: retrying with batch size {self.batch_size}"
        self.notes.append(message)
        self.progress.notice(message)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.head.load_state_dict(snapshot[0])
        self.optimizer.load_state_dict(snapshot[1])
        self.gen.set_state(snapshot[2])
        torch.set_rng_state(snapshot[3])

    def record_epoch(self, epoch: int, train_loss: float, lr: float, ev: Optional[_Eval], started: float) -> None:
        """The epoch's history entry and the best head so far; the entry goes out as an "epoch"
        partial result with `monitor` (the score's name), `score`, `best_epoch` and `best_score`."""
        score = ev.score if ev is not None else -train_loss
        entry: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": float(train_loss),
            "val_loss": None if ev is None else float(ev.loss),
            "val_accuracy": None if ev is None else float(ev.accuracy),
            "val_balanced_accuracy": None if ev is None else float(ev.balanced_accuracy),
            self.monitor: float(score),
            "lr": float(lr),
            "seconds": round(time.monotonic() - started, 3),
            "batch_size": int(self.batch_size),
        }
        self.history.append(entry)
        # better monitor, or (a saturated monitor such as AUC = 1) an equal one with a lower
        # validation loss: ranking alone would keep an early, badly calibrated head
        loss_now = ev.loss if ev is not None else train_loss
        tie_better = abs(score - self.best_score) <= _IMPROVEMENT and loss_now < self.best_loss - _IMPROVEMENT
        if self.best_state is None or score > self.best_score + _IMPROVEMENT or tie_better:
            self.best_score, self.best_epoch, self.stale, self.best_loss = float(score), epoch + 1, 0, float(loss_now)
            self.best_state = {k: v.detach().cpu().clone() for k, v in self.head.state_dict().items()}
        else:
            self.stale += 1
        # the partial result also says what the epoch's score is called and the best so far
        self.progress.partial("epoch", {**entry, "monitor": self.monitor, "score": float(score),
                                        "best_epoch": self.best_epoch, "best_score": float(self.best_score)})

    def run(self) -> TrainedHead:
        """The epochs: early stopping, Stop (keep the best so far), Ctrl-C (the same, noted),
        a GPU out-of-memory (halve the batch, redo the epoch)."""
        config, progress = self.config, self.progress
        stopped, epoch = "completed", 0
        while epoch < config.epochs:
            started = time.monotonic()
            snapshot = self.snapshot()
            try:
                train_loss, lr, stop = self.train_epoch(epoch)
                if stop and self.best_state is not None:
                    stopped = "user_stop"
                    break
                ev = self.evaluate() if len(self.val_idx) else None
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the best head so far is the result
                if self.best_state is None:
                    raise
                stopped = "interrupted"
                self.notes.append(f"interrupted during epoch {epoch + 1}: the best head so far (epoch "
                                  f"{self.best_epoch}) is kept")
                break
            except Exception as exc:  # noqa: BLE001 - only OOM is handled, the rest re-raised
                if not is_out_of_memory(exc):
                    raise
                del exc
                self.after_out_of_memory(snapshot)
                continue
            del snapshot
            self.record_epoch(epoch, train_loss, lr, ev, started)
            epoch += 1
            if stop or progress.stop_requested:
                stopped = "user_stop"
                break
            if self.stale >= config.patience and epoch < config.epochs:
                stopped = "early_stopping"
                break
        assert self.best_state is not None
        return TrainedHead(head_config=self.head_config, state_dict=self.best_state, history=self.history,
                           best_epoch=self.best_epoch, best_score=float(self.best_score), monitor=self.monitor,
                           stopped=stopped, notes=self.notes)


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
            cls, grid = _read(source, chunk[order], dev, _reads_grid(head_config.kind))
            probs = probabilities(head(cls, grid), head_config.task).double().cpu().numpy()
            out[s + order] = probs
    if progress is not None:
        progress.report(len(idx), len(idx), f"predicted {len(idx)} images")
    return out / out.sum(axis=1, keepdims=True).clip(min=1e-300)
