"""The GPU suite (issue 26): everything a lent NVIDIA card should prove, in one run.

    bash benchmarks/gpu_suite.sh OUT            # on the GPU machine (installs .whl/ first)
    bash benchmarks/gpu_suite.sh OUT --smoke    # on a CPU: tiny ViT, every code path, < 2 min

Sections, each in its own process with its own time limit (a crash or a hang in one is
recorded and the others still run); each writes OUT/<section>.json and OUT/<section>.md,
and OUT/suite.json + OUT/suite.md gather them:

1. finetune    LOFF-TA vs fine-tuning (benchmarks/loff_vs_finetune.py --configs): ViT-L/14
               (DINOv2 architecture, random init) at 224 and 518 px (518 pooled to a 16x16
               grid) and ViT-B/14 at 224: per-epoch time and torch.cuda.max_memory_allocated
               of (a) full fine-tuning + linear head, pixel augmentations, bf16 autocast, and
               (b) the LOFF-TA head on the cache with tensor augmentations; ratios; MFU.
2. extraction  `extract_features` end to end vs the forward pass alone on device tensors,
               ViT-L/14 at 518, same batch (benchmarks/extraction_gpu.py), with the engine's
               default loader workers and with more (before / after in the same run).
3. cuda_path   `loff demo` + extract / train / evaluate / export --onnx / predict with
               --device cuda (in one process, through `loff_core.cli.main` as `loff` runs
               it); the same cache's predictions on the CPU equal within 1e-3; then the
               window's own steps (`loff_core.steps`, called as the app's pages call them)
               on a second demo with the CUDA device chosen.
4. oom         a real CUDA out-of-memory during extraction (a batch far too big for the
               allocator's share of the card), retried with smaller batches and finished.
5. window      the desktop app offscreen (PySide6 permitting): extract + train + evaluate
               clicked through its pages with the CUDA device chosen.

With --smoke (CPU): the same sections, tiny; the out-of-memory error is simulated (a wrapper
raises torch.OutOfMemoryError for batches over 2 images) since a CPU never raises one.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from _common import fmt, machine_block, machine_info, table  # noqa: E402

SCRIPT = Path(__file__).resolve()
#: |p_cuda - p_cpu| allowed for the same cache and head
EQUAL_WITHIN = 1e-3

# What each mode runs. GPU sizes are chosen so the whole suite takes about 6-7 minutes on an
# H100/H200 (process start-up with CUDA and a ViT-L random init is ~10-15 s of it each time).
GPU = {
    "finetune": dict(configs=["vit_large_patch14_dinov2@224", "vit_large_patch14_dinov2@518",
                              "vit_base_patch14_dinov2@224"], images=512, batch_size=32, steps=10,
                     loff_epochs=5, repeats=1, grid=16, head="vit", limit=270),
    "extraction": dict(backbone="vit_large_patch14_dinov2", image_size=518, grid=16, images=512, batch_size=32,
                       repeats=2, compare_workers=[12], limit=150),
    "cuda_path": dict(backbone="vit_base_patch14_dinov2", image_size=224, grid=16, patients=40, batch_size=32,
                      epochs=10, head="attention", bootstrap=200, predict_files=16, limit=180),
    "oom": dict(backbone="vit_large_patch14_dinov2", image_size=518, grid=16, patients=64, batch_size=128,
                cap_gib=3.0, limit=90),
    "window": dict(backbone="vit_base_patch14_dinov2", image_size=224, grid=16, patients=20, epochs=3, limit=120),
}
SMOKE = {
    "finetune": dict(configs=["vit_tiny_patch16_224@32"], images=8, batch_size=4, steps=1, loff_epochs=2,
                     repeats=1, grid=2, head="vit", limit=300),
    "extraction": dict(backbone="vit_tiny_patch16_224", image_size=32, grid=2, images=8, batch_size=4, repeats=1,
                       compare_workers=[0], limit=240),
    "cuda_path": dict(backbone="vit_tiny_patch16_224", image_size=32, grid=2, patients=10, batch_size=8, epochs=2,
                      head="attention", bootstrap=20, predict_files=4, limit=300),
    "oom": dict(backbone="vit_tiny_patch16_224", image_size=32, grid=2, patients=4, batch_size=8, cap_gib=None,
                limit=180),
    "window": dict(backbone="vit_tiny_patch16_224", image_size=32, grid=2, patients=10, epochs=1, limit=240),
}
SECTIONS = ["finetune", "extraction", "cuda_path", "oom", "window"]


# -- helpers ---------------------------------------------------------------------------------
def _cli(argv: list[str]) -> dict[str, Any]:
    """`loff ARGV --json --quiet` in this process (as the `loff` script runs it); its JSON."""
    from loff_core.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main([*argv, "--json", "--quiet"])
    if rc != 0:
        raise RuntimeError(f"loff {' '.join(argv)} exited {rc}: {buf.getvalue()[-2000:]}")
    return json.loads(buf.getvalue())


def _timed(log: list[dict[str, Any]], name: str, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    out = fn()
    log.append({"step": name, "seconds": round(time.perf_counter() - t0, 2)})
    print(f"[suite] {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return out


def _device_info(device: str) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"device": device}
    if device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name(0)
        out["max_memory_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
    return out


def _demo_files(root: Path, n: int) -> list[str]:
    files = sorted(p for p in (root / "images").rglob("*") if p.is_file() and p.suffix.lower() == ".dcm")
    return [str(p) for p in files[:n]]


def _max_diff(a: Any, b: Any) -> float:
    import numpy as np

    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))) if len(a) else 0.0


# -- section 3: the CUDA path ------------------------------------------------------------------
def section_cuda_path(cfg: dict[str, Any], device: str, work: Path) -> dict[str, Any]:
    import numpy as np

    from loff_core.project import Project
    from loff_core.training import predict_probabilities

    log: list[dict[str, Any]] = []
    root = work / "demo"
    spec = ["--backbone", cfg["backbone"], "--random-init", "--image-size", str(cfg["image_size"]),
            "--grid", str(cfg["grid"])]
    demo = _timed(log, "loff demo", lambda: _cli(["demo", str(root), "--patients", str(cfg["patients"])]))
    ext = _timed(log, f"loff extract --device {device}", lambda: _cli(
        ["extract", str(root), *spec, "--batch-size", str(cfg["batch_size"]), "--device", device]))
    after_extract = _device_info(device)
    tr = _timed(log, f"loff train --device {device}", lambda: _cli(
        ["train", str(root), "--head", cfg["head"], "--epochs", str(cfg["epochs"]), "--device", device]))
    ev = _timed(log, "loff evaluate", lambda: _cli(["evaluate", str(root), "--bootstrap", str(cfg["bootstrap"])]))
    exp = _timed(log, "loff export --onnx", lambda: _cli(["export", str(root), str(work / "export"), "--onnx"]))
    files = _demo_files(root, cfg["predict_files"])
    pred_dev = _timed(log, f"loff predict --device {device}", lambda: _cli(
        ["predict", str(work / "export"), *files, "--device", device, "--random-init", "--bootstrap", "0"]))
    pred_cpu = _timed(log, "loff predict --device cpu", lambda: _cli(
        ["predict", str(work / "export"), *files, "--device", "cpu", "--random-init", "--bootstrap", "0"]))

    # the same cache and head: the run's probabilities on the device vs on the CPU
    project = Project.open(root)
    run = project.run(tr["run"])
    cache = project.open_cache(run.record["cache_fingerprint"])
    head_config, state = project.load_head(run)
    ids = list(cache.image_ids)
    p_dev = _timed(log, f"head on the cache, {device}", lambda: predict_probabilities(
        head_config, state, cache, ids, device=device))
    p_cpu = _timed(log, "head on the cache, cpu", lambda: predict_probabilities(
        head_config, state, cache, ids, device="cpu"))
    same_cache = _max_diff(p_dev, p_cpu)
    by_path = {r["path"]: r["probabilities"] for r in pred_cpu["predictions"]}
    rows = [(r["probabilities"], by_path[r["path"]]) for r in pred_dev["predictions"] if r["path"] in by_path]
    predict_diff = _max_diff([a for a, _ in rows], [b for _, b in rows]) if rows else float("nan")
    agree = sum(int(np.argmax(a) == np.argmax(b)) for a, b in rows)
    onnx_diff = (exp.get("onnx") or {}).get("max_abs_diff_vs_torch")
    checks = {
        "same_cache_max_abs_diff": same_cache,
        "same_cache_equal_within_1e-3": bool(same_cache <= EQUAL_WITHIN),
        "predict_files_max_abs_diff": predict_diff,
        "predict_files_equal_within_1e-3": bool(predict_diff <= EQUAL_WITHIN),
        "predict_files_same_class": f"{agree}/{len(rows)}",
        "onnx_max_abs_diff_vs_torch": onnx_diff,
    }
    steps_out = section_window_steps(cfg, device, work)
    return {
        "device": device, "images": demo.get("imported"), "extract": {k: ext.get(k) for k in
                                                                     ("images", "extracted", "seconds", "notes", "backbone")},
        "after_extract": after_extract,
        "train": {k: tr.get(k) for k in ("run", "head", "epochs", "best_epoch", "stopped", "notes")},
        "train_device": run.record["train_config"].get("device"),
        "evaluate": {"split": ev.get("split"), "n": ev.get("n"), **{k: (ev.get("metrics") or {}).get(k) for k in
                                                                   ("accuracy", "balanced_accuracy", "auc", "kendall_tau")}},
        "export": {"files": exp.get("files"), "onnx": exp.get("onnx")},
        "predict": {"files": len(files), "predictions": len(pred_dev["predictions"])},
        "checks": checks, "log": log, "window_steps": steps_out, **_device_info(device),
    }


def section_window_steps(cfg: dict[str, Any], device: str, work: Path) -> dict[str, Any]:
    """The app's pages' calls into `loff_core.steps`, on a fresh demo, with `device` chosen
    (cache page: ExtractSettings(device=...), train page: TrainConfig(device=...), results,
    viewer, predict page), without Qt."""
    from loff_core import steps
    from loff_core.backbones import BackboneSpec
    from loff_core.demo import create_demo_project
    from loff_core.progress import Progress
    from loff_core.settings import EvaluateSettings, ExtractSettings, PredictSettings, TrainConfig

    log: list[dict[str, Any]] = []
    root = work / "window-steps"
    project = _timed(log, "demo (create_demo_project, the app's first launch)",
                     lambda: create_demo_project(root, n_patients=cfg["patients"]))
    spec = BackboneSpec(name=cfg["backbone"], random_init=True, seed=0, image_size=cfg["image_size"],
                        grid=cfg["grid"])
    ext = _timed(log, "steps.extract", lambda: steps.extract(
        project, spec, ExtractSettings(device=device, batch_size=cfg["batch_size"]), progress=Progress()))
    tr = _timed(log, "steps.train", lambda: steps.train(
        project, TrainConfig(head=cfg["head"], task="ordinal", epochs=cfg["epochs"], device=device),
        progress=Progress(on_partial=lambda item: None)))
    ev = _timed(log, "steps.evaluate", lambda: steps.evaluate(
        project, tr.run, "test", EvaluateSettings(bootstrap=cfg["bootstrap"]), progress=Progress()))
    ids = list(project.open_cache().image_ids)[:4]
    ex = _timed(log, "steps.explain", lambda: steps.explain(project, tr.run, ids, progress=Progress()))
    out = _timed(log, "steps.export", lambda: steps.export(project, work / "window-export", run_id=tr.run,
                                                           progress=Progress()))
    files = _demo_files(root, 4)
    pr = _timed(log, "steps.predict", lambda: steps.predict(work / "window-export", files, PredictSettings(
        random_init=True, device=device, require_predictions=False), progress=Progress()))
    record = project.run(tr.run).record
    return {"extracted": ext.extracted, "images": ext.images, "run": tr.run, "epochs": tr.epochs,
            "train_device": record["train_config"].get("device"), "evaluate_n": ev.n,
            "explained": len(ex.image_ids), "exported": sorted(out.files), "predicted": len(pr.predictions),
            "log": log}


# -- section 4: out of memory ----------------------------------------------------------------
def section_oom(cfg: dict[str, Any], device: str, work: Path) -> dict[str, Any]:
    import torch

    from loff_core.backbones import BackboneSpec, FrozenBackbone
    from loff_core.cache import FeatureCache, extract_features
    from loff_core.demo import create_demo_project

    project = create_demo_project(work / "oom-demo", n_patients=cfg["patients"])
    root = project.images_root()
    items = [(e.image_id, root / e.path) for e in project.catalog().entries]
    spec = BackboneSpec(name=cfg["backbone"], random_init=True, seed=0, image_size=cfg["image_size"], grid=cfg["grid"])
    out: dict[str, Any] = {"device": device, "images": len(items), "batch_size": cfg["batch_size"]}
    if device.startswith("cuda"):
        total = torch.cuda.get_device_properties(0).total_memory
        fraction = min(1.0, cfg["cap_gib"] * 2**30 / total)
        # The caching allocator refuses more than this share of the card: the same
        # torch.OutOfMemoryError as a card that small, raised for real by CUDA's allocator.
        torch.cuda.set_per_process_memory_fraction(fraction, 0)
        out.update(how=f"real: torch.cuda.set_per_process_memory_fraction({fraction:.4f}) = {cfg['cap_gib']} GiB "
                       f"of {total / 2**30:.0f} GiB; a batch of {cfg['batch_size']} images is far too big for it",
                   simulated=False)
        restore: Callable[[], None] = lambda: None
    else:
        real = FrozenBackbone.blocks_tokens  # what the torch engine runs (the extraction below uses it)
        raised = {"n": 0}

        def tokens(self: Any, images: Any) -> Any:
            if len(images) > 2:
                raised["n"] += 1
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")
            return real(self, images)

        FrozenBackbone.blocks_tokens = tokens  # type: ignore[method-assign]
        out.update(how="simulated (CPU): torch.OutOfMemoryError raised for batches over 2 images", simulated=True)

        def restore() -> None:
            FrozenBackbone.blocks_tokens = real  # type: ignore[method-assign]
    t0 = time.perf_counter()
    try:
        res = extract_features(items, spec, work / "oom-caches", device=device, batch_size=cfg["batch_size"],
                               engine="torch")  # the out-of-memory retry is the torch engine's
    finally:
        restore()
    out["seconds"] = round(time.perf_counter() - t0, 2)
    with FeatureCache.open(res.cache_path) as cache:
        cached = len(cache.image_ids)
    out.update(extracted=res.extracted, cached=cached, failures=len(res.failures), notes=res.notes,
               retried=any("out of memory" in n for n in res.notes), recovered=cached == len(items))
    if device.startswith("cuda"):
        out["max_memory_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
    return out


# -- section 5: the window -------------------------------------------------------------------
def section_window(cfg: dict[str, Any], device: str, work: Path) -> dict[str, Any]:
    try:
        from PySide6.QtWidgets import QApplication
    except ImportError as exc:
        return {"skipped": f"PySide6 not importable here ({exc}); the window's steps ran without Qt in cuda_path"}
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from loff_core.demo import create_demo_project
    from loff_core.project import Project

    app = QApplication.instance() or QApplication([])
    from app.main import MainWindow
    from app.pages.train_page import _set_value

    log: list[dict[str, Any]] = []
    create_demo_project(work / "window-demo", n_patients=cfg["patients"])
    w = MainWindow()
    w.confirm_close = True
    w.show()
    messages: list[str] = []
    w.state.message.connect(lambda level, text: messages.append(f"{level}: {text}"))

    def wait(cond: Callable[[], bool], what: str, timeout: float = 300) -> None:
        end = time.monotonic() + timeout
        while not cond():
            app.processEvents()
            if time.monotonic() > end:
                raise TimeoutError(f"window: {what} did not happen in {timeout:.0f} s; messages: {messages[-5:]}")
            time.sleep(0.02)

    try:
        t0 = time.perf_counter()
        w.state.set_project(Project.open(work / "window-demo"))
        cache = w.cache_page
        cache.devices_found.setText("")
        cache.devices_button.click()  # "Find GPUs": the page's own device search, then pick the device
        wait(lambda: bool(cache.devices_found.text()) and cache.devices_button.isEnabled(), "device list")
        chosen = device if device == "cpu" else "cuda:0"
        if cache.device.findData(chosen) < 0:
            raise RuntimeError(f"window: the cache page did not offer {chosen}: {cache.devices_found.text()}")
        cache.device.setCurrentIndex(cache.device.findData(chosen))
        cache.backbone.setCurrentText(cfg["backbone"])
        cache.random_init.setChecked(True)
        cache.image_size.setValue(cfg["image_size"])
        cache.grid.setValue(cfg["grid"])
        cache.extract_button.click()
        wait(lambda: not w.state.busy and w.state.project.settings.active_cache is not None, "extraction")
        log.append({"step": "window extract", "seconds": round(time.perf_counter() - t0, 2)})
        t1 = time.perf_counter()
        page = w.train_page
        page.epochs.setValue(cfg["epochs"])
        if "device" in page.more:
            _set_value(page.more["device"], chosen)
        page.train_button.click()
        wait(lambda: not w.state.busy and page.runs.rowCount() == 1, "training")
        log.append({"step": "window train", "seconds": round(time.perf_counter() - t1, 2)})
        t2 = time.perf_counter()
        results = w.results_page
        results.split.setCurrentText("test")
        results.evaluate_button.click()
        wait(lambda: not w.state.busy and results.result is not None, "evaluation")
        log.append({"step": "window evaluate", "seconds": round(time.perf_counter() - t2, 2)})
        run = w.state.project.run()
        return {"device_chosen": cache.device.currentData(), "train_device": run.record["train_config"].get("device"),
                "epochs": len(run.record["history"]), "evaluated": results.result["n"],
                "devices_found": cache.devices_found.text(), "log": log}
    finally:
        w.state.runner.shutdown()
        w.close()


SECTION_FUNCS = {"cuda_path": section_cuda_path, "oom": section_oom, "window": section_window}


# -- reports ----------------------------------------------------------------------------------
def _md_cuda_path(d: dict[str, Any]) -> str:
    c = d["checks"]
    ws = d["window_steps"]
    rows = [
        ["loff demo + extract --device " + d["device"], f"{d['extract']['extracted']} of {d['extract']['images']} images",
         "; ".join(d["extract"]["notes"] or []) or "-"],
        [f"loff train --device {d['device']}", f"{d['train']['epochs']} epochs, run on {d['train_device']}",
         d["train"]["stopped"]],
        ["loff evaluate", f"test n={d['evaluate']['n']}, accuracy {fmt(d['evaluate'].get('accuracy'))}, "
                          f"Kendall tau {fmt(d['evaluate'].get('kendall_tau'))}", "random-init backbone: not a quality figure"],
        ["loff export --onnx", ", ".join(sorted(d["export"]["files"] or {})), f"ONNX vs torch {fmt(c['onnx_max_abs_diff_vs_torch'])}"],
        [f"loff predict --device {d['device']} vs --device cpu", f"{d['predict']['predictions']} files",
         f"max |dp| {fmt(c['predict_files_max_abs_diff'])}, same class {c['predict_files_same_class']}"],
        [f"same cache + head: {d['device']} vs cpu", f"max |dp| {fmt(c['same_cache_max_abs_diff'])}",
         "PASS (<= 1e-3)" if c["same_cache_equal_within_1e-3"] else "FAIL (> 1e-3)"],
        [f"window steps (loff_core.steps) on {d['device']}", f"extract {ws['extracted']}, train {ws['epochs']} epochs "
         f"on {ws['train_device']}, evaluate n={ws['evaluate_n']}, explain {ws['explained']}, export, "
         f"predict {ws['predicted']}", "-"],
    ]
    times = "; ".join(f"{e['step']} {e['seconds']} s" for e in d["log"] + ws["log"])
    mem = d.get("after_extract", {}).get("max_memory_allocated_bytes")
    return (table(["step", "result", "check"], rows) + f"\n\n- step times: {times}"
            + (f"\n- torch.cuda.max_memory_allocated after extract: {mem / 2**20:.0f} MiB" if mem else "")
            + "\n- predict on files runs the backbone on each device (bf16 autocast on CUDA, float32 on the CPU), "
              "so its difference includes the backbone's; the same-cache row compares the head alone.")


def _md_oom(d: dict[str, Any]) -> str:
    return table(["how", "batch asked", "images", "retried", "recovered (all cached)", "notes", "s"],
                 [[d["how"], d["batch_size"], d["images"], "yes" if d["retried"] else "NO",
                   "yes" if d["recovered"] else "NO", "; ".join(d["notes"]) or "-", d["seconds"]]])


def _md_window(d: dict[str, Any]) -> str:
    if "skipped" in d:
        return f"- skipped: {d['skipped']}"
    return table(["device chosen", "training ran on", "epochs", "evaluated", "step times"],
                 [[d["device_chosen"], d["train_device"], d["epochs"], d["evaluated"],
                   "; ".join(f"{e['step']} {e['seconds']} s" for e in d["log"])]])


TITLES = {
    "install": "0. Install (offline wheels from .whl/)",
    "finetune": "1. LOFF-TA vs fine-tuning",
    "extraction": "2. Extraction end to end vs forward-only",
    "cuda_path": "3. The CUDA path: demo, extract, train, evaluate, export --onnx, predict; the window's steps",
    "oom": "3b. Out of memory during extraction, retried",
    "window": "3c. The window, offscreen",
}


# -- driver ---------------------------------------------------------------------------------------
def run_section(name: str, cmd: list[str], limit: float, out: Path, env: dict[str, str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    log = out / f"{name}.log"
    with open(log, "w") as fh:
        # its own process group: on a time-out the section's workers (benchmark processes,
        # DataLoader workers) go with it and leave the GPU to the next section
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=fh, text=True, env=env, cwd=ROOT,
                                start_new_session=True)
        try:
            stdout, _ = proc.communicate(timeout=limit)
            status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            stdout, _ = proc.communicate()
            status = f"timed out after {limit:.0f} s"
    seconds = round(time.perf_counter() - t0, 1)
    print(f"[suite] section {name}: {status} ({seconds} s)", file=sys.stderr, flush=True)
    if stdout.strip() and not (out / f"{name}.md").exists():
        (out / f"{name}.md").write_text(stdout)
    return {"status": status, "seconds": seconds, "log": str(log.relative_to(out))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--device", default=None, help="default: cuda when a GPU is visible, else cpu (smoke only)")
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=None)
    p.add_argument("--deadline", type=float, default=None,
                   help="seconds for all sections together, each also has its own limit (default: "
                        "$LOFF_SUITE_DEADLINE_S, else 540 on a GPU: the command then ends inside the device's "
                        "10 minutes; 1200 for --smoke, for a loaded CI machine)")
    p.add_argument("--_section", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.deadline is None:
        args.deadline = float(os.environ.get("LOFF_SUITE_DEADLINE_S", "1200" if args.smoke else "540"))
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    plan = SMOKE if args.smoke else GPU
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args._section:  # one section, in this (fresh) process
        import tempfile

        if args.smoke:
            import torch

            torch.set_num_threads(1)  # tiny ops on a busy CPU: one thread is far faster
        with tempfile.TemporaryDirectory(prefix=f"loff-suite-{args._section}-") as tmp:
            data = SECTION_FUNCS[args._section](plan[args._section], args.device, Path(tmp))
        (out / f"{args._section}.json").write_text(json.dumps(data, indent=2, default=str))
        md = {"cuda_path": _md_cuda_path, "oom": _md_oom, "window": _md_window}[args._section](data)
        (out / f"{args._section}.md").write_text(md + "\n")
        print(md)
        return 0
    if not args.smoke and not args.device.startswith("cuda"):
        p.error("no CUDA device visible: the full suite needs a GPU (use --smoke on a CPU)")

    info = machine_info(args.device)
    try:
        import torch

        if args.device.startswith("cuda"):
            info["driver"] = _driver_version()
            info["cuda"] = torch.version.cuda
            info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    except Exception:  # noqa: BLE001 - information only
        pass
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", QT_QPA_PLATFORM="offscreen", MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [x for x in env.get("PYTHONPATH", "").split(os.pathsep) if x])
    py = sys.executable
    threads = ["--threads", "1"] if args.smoke else []
    started = time.perf_counter()
    results: dict[str, Any] = {}
    for name in args.only or SECTIONS:
        cfg = plan[name]
        left = args.deadline - (time.perf_counter() - started)
        if left < 20:
            results[name] = {"status": "not run: the suite's deadline was reached", "seconds": 0}
            continue
        if name == "finetune":
            cmd = [py, str(HERE / "loff_vs_finetune.py"), "--device", args.device, "--configs", *cfg["configs"],
                   "--images", str(cfg["images"]), "--batch-size", str(cfg["batch_size"]), "--steps", str(cfg["steps"]),
                   "--loff-epochs", str(cfg["loff_epochs"]), "--repeats", str(cfg["repeats"]), "--grid", str(cfg["grid"]),
                   "--head", cfg["head"], "--json", str(out / "finetune.json"), *threads]
        elif name == "extraction":
            cmd = [py, str(HERE / "extraction_gpu.py"), "--device", args.device, "--backbone", cfg["backbone"],
                   "--image-size", str(cfg["image_size"]), "--grid", str(cfg["grid"]), "--images", str(cfg["images"]),
                   "--batch-size", str(cfg["batch_size"]), "--repeats", str(cfg["repeats"]), "--no-decode",
                   "--compare-workers", *map(str, cfg["compare_workers"]), "--json", str(out / "extraction.json"), *threads]
        else:
            cmd = [py, str(SCRIPT), str(out), "--_section", name, "--device", args.device] + (["--smoke"] if args.smoke else [])
        results[name] = run_section(name, cmd, min(cfg["limit"], left - 5), out, env)
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    write_reports(out, info, results, args)
    failed = [n for n in SECTIONS if n in results and results[n]["status"] != "ok"]
    print(f"[suite] done in {results['total_seconds']} s; sections not ok: {failed or 'none'}; see {out / 'suite.md'}",
          file=sys.stderr)
    return 1 if failed else 0


def _driver_version() -> str | None:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def write_reports(out: Path, info: dict[str, Any], results: dict[str, Any], args: argparse.Namespace) -> None:
    doc: dict[str, Any] = {"suite": "gpu_suite", "mode": "smoke" if args.smoke else "full", "device": args.device,
                           "machine": info, "total_seconds": results["total_seconds"], "sections": {}}
    install = out / "install.json"
    if install.exists():
        doc["sections"]["install"] = {"status": "ok", "data": json.loads(install.read_text())}
    for name in SECTIONS:
        if name not in results:
            continue
        entry = dict(results[name])
        path = out / f"{name}.json"
        if path.exists() and entry["status"] == "ok":
            entry["data"] = json.loads(path.read_text())
        doc["sections"][name] = entry
    (out / "suite.json").write_text(json.dumps(doc, indent=2, default=str))
    parts = [f"# GPU suite ({doc['mode']}, device {args.device})\n", machine_block(info)
             + "".join(f"\n- {k}: {info[k]}" for k in ("driver", "cuda", "gpu_memory_gib") if k in info)
             + f"\n- total: {results['total_seconds']} s\n"]
    if "install" in doc["sections"]:
        d = doc["sections"]["install"]["data"]
        parts.append(f"## {TITLES['install']}\n\n- installed: {', '.join(d.get('installed') or []) or 'nothing'}"
                     f"\n- already present: {', '.join(d.get('present') or []) or 'nothing'}"
                     f"\n- mode: {d.get('mode')}\n")
    for name in SECTIONS:
        if name not in results:
            continue
        r = results[name]
        md = out / f"{name}.md"
        body = md.read_text().strip() if md.exists() and r["status"] == "ok" else f"- {r['status']} (see {r.get('log')})"
        parts.append(f"## {TITLES[name]}\n\n_status: {r['status']}, {r['seconds']} s_\n\n{body}\n")
    (out / "suite.md").write_text("\n".join(parts))


if __name__ == "__main__":
    sys.exit(main())
