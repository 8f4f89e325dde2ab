"""Feature extraction throughput against the fastest forward engine, and DICOM decode throughput.

Part 1 (issue 20): for each backbone (Lite0 at 224 px, Lite2 at 260 px; seeded random
weights: the speed is the architecture's) and each thread count (1 and 2 torch / ONNX
Runtime intra-op threads), in one process and one run:
  - the forward pass alone of every engine on the same preprocessed images in RAM, same
    batch size: PyTorch NCHW eager (what the CPU path ran before issue 20), PyTorch
    channels_last, ONNX Runtime with N intra-op threads, ONNX Runtime with N parallel
    1-thread runs (the engine's default from 2 threads); the FASTEST of them is the reference;
  - `loff extract` end to end (`extract_features` as the CLI runs it, engine "auto":
    backbone load, engine preparation, DataLoader decode + preprocess, forward, HDF5 shards
    + merge), one block (`last`) and two blocks (`-2,last`) from one pass; the engine cache
    holds the exported graph (the forward timing exported it) as on every extraction after
    a machine's first, and one more run starts from an empty engine cache (the export included).
Repeats interleaved, medians. Targets: end to end / fastest forward >= 0.8; two blocks /
one block <= 1.15 (time). Beside the ratio, the decode worker's CPU per image (its rusage,
the DataLoader run alone) and the ratio that CPU allows (an estimate: the reference's threads
taken as fully busy): when the forward's threads take every core, the worker's time is taken
from the forward (docs/benchmarks.md, section 2).

Part 2: DICOM decode throughput on one core for 16-bit (12 stored) RLE Lossless and JPEG 2000
Lossless 512x416 synthetic mammograms: pydicom + pylibjpeg, pydicom + GDCM, SimpleITK;
decoded arrays are checked against the same images written uncompressed.

    nice -n 5 python benchmarks/extraction.py            # full: 320 images (~ mini-MIAS), 2 repeats
    python benchmarks/extraction.py --quick
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (bench_parser, parse_bench_args, Timer, machine_block, machine_info, median, synthetic_items, table,  # noqa: E402
                     write_json)

TARGET_RATIO = 0.8
TARGET_TWO_BLOCKS = 1.15
RLE = "1.2.840.10008.1.2.5"
J2K = "1.2.840.10008.1.2.4.90"
RAW = "1.2.840.10008.1.2.1"
BACKBONES = {"tf_efficientnet_lite0": 224, "tf_efficientnet_lite2": 260}


def bench_one(args: argparse.Namespace, work: Path, name: str, size: int, threads: int,
              items: list[tuple[str, Path]]) -> dict[str, Any]:
    import numpy as np
    import torch

    from loff_core.backbones import BackboneSpec, load_backbone
    from loff_core.cache import extract_features
    from loff_core.engines import OnnxRuntimeEngine, TorchEngine
    from loff_core.images import load_pixels
    from loff_core.progress import Progress
    from loff_core.settings import ExtractSettings

    torch.set_num_threads(threads)
    if args.smoke:
        size = 64
    # the crop `loff extract` applies by default (ExtractSettings.crop): its box is found in
    # the decode worker, so it is part of the end-to-end cost
    spec = BackboneSpec(name=name, random_init=True, image_size=size, grid=16, crop=ExtractSettings.crop)
    two = BackboneSpec(name=name, random_init=True, image_size=size, grid=16, layers="-2,last",
                       crop=ExtractSettings.crop)
    backbone = load_backbone(spec, device="cpu")
    images = torch.from_numpy(np.stack([backbone.preprocessor(load_pixels(p)) for _, p in items]))
    bs = args.batch_size
    module = backbone.token_module()

    def nchw(x: Any) -> Any:  # the CPU path before issue 20: NCHW eager
        with torch.inference_mode():
            return module(x)
    t0 = time.perf_counter()
    ort = OnnxRuntimeEngine(backbone, threads=threads, use_cache=False)  # the export's cost, timed
    ort_setup = time.perf_counter() - t0
    ort_intra = OnnxRuntimeEngine(backbone, threads=threads, parallel=False)  # fills the engine cache
    backbone.model.to(memory_format=torch.contiguous_format)
    engines: dict[str, Any] = {"torch NCHW (before)": nchw}
    cl = None

    def channels_last(x: Any) -> Any:
        return cl(x)
    engines["torch channels_last"] = channels_last
    engines["onnxruntime intra-op"] = ort_intra
    if threads > 1:
        engines["onnxruntime parallel runs"] = ort
    fwd: dict[str, list[float]] = {k: [] for k in engines}
    e2e: dict[str, list[float]] = {"one block": [], "two blocks": [], "cold": []}
    seconds: dict[str, list[float]] = {"one block": [], "two blocks": [], "cold": []}
    n_slow = min(len(images), max(bs, args.nchw_images))  # NCHW is slow: fewer images, same batches

    def run_fwd(key: str) -> None:
        nonlocal cl
        if key == "torch NCHW (before)":
            backbone.model.to(memory_format=torch.contiguous_format)
        elif key == "torch channels_last":
            cl = TorchEngine(backbone)
        fn = engines[key]
        n = n_slow if key.startswith("torch NCHW") else len(images)
        fn(images[:bs])  # warm-up
        with Timer("cpu") as t:
            for s in range(0, n, bs):
                fn(images[s:s + bs].contiguous())
        fwd[key].append(n / t.seconds)

    steady: list[float] = []  # one block: images / s between the first batch's end and the last's

    def run_e2e(key: str, r: int) -> None:
        marks: list[tuple[float, int]] = []
        progress = Progress(on_report=lambda done, total, msg: marks.append((time.perf_counter(), done))
                            if ("img/s" in msg or msg.startswith("first batch")) else None)
        cache_env = os.environ.get("LOFF_ENGINE_CACHE_DIR")
        if key == "cold":  # the first extraction on a machine: an empty engine cache, the export included
            os.environ["LOFF_ENGINE_CACHE_DIR"] = str(work / f"engines-cold-{name}-{threads}-{r}")
        try:
            with Timer("cpu") as t:
                res = extract_features(items, two if key == "two blocks" else spec,
                                       work / f"c-{name}-{threads}-{key}-{r}", device="cpu", batch_size=bs,
                                       num_workers=args.workers, progress=progress)
        finally:
            if cache_env is None:
                os.environ.pop("LOFF_ENGINE_CACHE_DIR", None)
            else:
                os.environ["LOFF_ENGINE_CACHE_DIR"] = cache_env
        assert res.extracted == len(items) and not res.failures, res
        e2e[key].append(len(items) / t.seconds)
        seconds[key].append(t.seconds)
        if key == "one block" and len(marks) >= 2:
            steady.append((marks[-1][1] - marks[0][1]) / (marks[-1][0] - marks[0][0]))

    t0 = time.perf_counter()
    for _, p in items[:32]:
        backbone.preprocessor(load_pixels(p))
    decode_ms = (time.perf_counter() - t0) / min(32, len(items)) * 1000
    worker_ms = worker_cpu_ms(items, backbone.preprocessor, bs)

    jobs = [lambda k=k: run_fwd(k) for k in engines]
    for r in range(args.repeats):
        order = jobs + [lambda r=r: run_e2e("one block", r), lambda r=r: run_e2e("two blocks", r),
                        lambda r=r: run_e2e("cold", r)]
        for job in (order if r % 2 == 0 else list(reversed(order))):
            job()
    best_name = max(fwd, key=lambda k: median(fwd[k]))
    best = median(fwd[best_name])
    # what the decode worker leaves to the forward: it runs on a core of its own when the
    # forward's threads leave one free, otherwise its CPU time is taken from the forward
    from loff_core.engines import available_cores

    forward_ms = threads / best * 1000  # CPU per image of the reference, its threads all busy
    bound = min(1.0, available_cores() * forward_ms / (threads * (forward_ms + worker_ms)), forward_ms / worker_ms)
    one, both, cold = median(e2e["one block"]), median(e2e["two blocks"]), median(e2e["cold"])
    return {"backbone": name, "image_size": size, "threads": threads, "images": len(items), "batch_size": bs,
            "forward_img_s": fwd, "forward_median": {k: median(v) for k, v in fwd.items()},
            "fastest_engine": best_name, "fastest_img_s": best, "onnx_setup_s": ort_setup,
            "e2e_img_s": e2e, "e2e_median": one, "e2e_two_blocks_median": both, "e2e_seconds": seconds,
            "ratio": one / best, "two_over_one_time": one / both, "e2e_cold_median": cold, "ratio_cold": cold / best,
            "steady_img_s": steady, "steady_median": median(steady) if steady else None,
            "fixed_s": median(seconds["one block"]) - len(items) / median(steady) if steady else None,
            "decode_ms": decode_ms, "worker_cpu_ms": worker_ms, "forward_cpu_ms": forward_ms, "bound": bound,
            "cores": available_cores()}


def worker_cpu_ms(items: list[tuple[str, Path]], preprocessor: Any, batch_size: int) -> float:
    """CPU of the decode worker per image (its rusage, its start included), with the DataLoader
    of `loff extract` (one worker, the same dataset and collate) run alone, nothing forwarded."""
    import resource

    from loff_core.cache import decode_loader

    batches = [list(range(s, min(s + batch_size, len(items)))) for s in range(0, len(items), batch_size)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    loader = decode_loader([str(p) for _, p in items], preprocessor, batches, 1)
    for _ in loader:
        pass
    del loader  # the worker exits and is waited for: its rusage is then counted
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return used / len(items) * 1000


def bench_extract(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    import torch

    threads_before = torch.get_num_threads()
    items, _ = synthetic_items(work / "extract-images", args.images, (256, 208))
    rows = []
    for name, size in BACKBONES.items():
        if args.backbones and name not in args.backbones:
            continue
        for threads in args.thread_counts:
            rows.append(bench_one(args, work, name, args.image_size or size, threads, items))
            e = rows[-1]
            print(f"# {name} {threads} thread(s): forward {e['forward_median']}, end to end {e['e2e_median']:.1f} "
                  f"(two blocks {e['e2e_two_blocks_median']:.1f}) img/s, ratio {e['ratio']:.2f}",
                  file=sys.stderr, flush=True)
    torch.set_num_threads(threads_before)
    return rows


def _decoders() -> dict[str, Any]:
    import numpy as np

    found: dict[str, Any] = {}
    try:
        from pydicom.pixels import pixel_array

        found["pydicom+pylibjpeg"] = lambda p: pixel_array(p, decoding_plugin="pylibjpeg")
        found["pydicom+gdcm"] = lambda p: pixel_array(p, decoding_plugin="gdcm")
        found["pydicom native (RLE only)"] = lambda p: pixel_array(p, decoding_plugin="pydicom")
    except ImportError:
        pass
    try:
        import gdcm

        def gdcm_direct(p: Any) -> Any:
            reader = gdcm.ImageReader()
            reader.SetFileName(str(p))
            if not reader.Read():
                raise RuntimeError("gdcm could not read the file")
            image = reader.GetImage()
            cols, rows = image.GetDimension(0), image.GetDimension(1)
            return np.frombuffer(image.GetBuffer().encode("utf-8", "surrogateescape"), dtype=np.uint16).reshape(rows, cols)

        found["gdcm (python-gdcm, direct)"] = gdcm_direct
    except ImportError:
        pass
    try:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
        found["SimpleITK"] = lambda p: np.asarray(sitk.GetArrayFromImage(sitk.ReadImage(str(p))))[0]
    except ImportError:
        pass
    return found


def bench_decode(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    import numpy as np
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    size = (512, 416)
    raw_items, _ = synthetic_items(work / "decode-raw", args.decode_images, size, syntaxes=[RAW])
    from pydicom.pixels import pixel_array

    import pydicom

    truth = [pixel_array(p).astype(np.int64) for _, p in raw_items]
    # SimpleITK converts MONOCHROME1 to MONOCHROME2 (max - value); compare it after undoing that
    inverted = [2 ** int(ds.BitsStored) - 1 - t if ds.PhotometricInterpretation == "MONOCHROME1" else t
                for t, ds in zip(truth, (pydicom.dcmread(p, stop_before_pixels=True) for _, p in raw_items))]
    decoders = _decoders()
    rows = []
    for syntax, label in ((RLE, "RLE Lossless"), (J2K, "JPEG 2000 Lossless")):
        items, _ = synthetic_items(work / f"decode-{syntax}", args.decode_images, size, syntaxes=[syntax])
        paths = [p for _, p in items]
        mb = sum(p.stat().st_size for p in paths) / len(paths) / 1e6
        usable = {}
        for name, fn in decoders.items():
            if name.startswith("pydicom native") and syntax != RLE:
                continue
            try:
                arrays = [fn(p) for p in paths]  # warm-up + correctness
            except Exception as exc:  # noqa: BLE001 - a missing plugin is a result, not a crash
                rows.append({"syntax": label, "decoder": name, "img_s": None, "equal": None,
                             "note": f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}", "mb_per_file": mb})
                continue
            ref = inverted if name == "SimpleITK" else truth
            equal = all(a.shape == t.shape and np.array_equal(a.astype(np.int64), t) for a, t in zip(arrays, ref))
            usable[name] = (fn, equal)
        speeds: dict[str, list[float]] = {n: [] for n in usable}
        for r in range(args.repeats):
            names = list(usable) if r % 2 == 0 else list(reversed(usable))
            for name in names:
                fn = usable[name][0]
                t0 = time.perf_counter()
                for p in paths:
                    fn(p)
                speeds[name].append(len(paths) / (time.perf_counter() - t0))
        for name, (_, equal) in usable.items():
            rows.append({"syntax": label, "decoder": name, "img_s": median(speeds[name]), "runs": speeds[name],
                         "equal": equal, "note": "", "mb_per_file": mb})
    torch.set_num_threads(threads)
    return rows


def report(ext: list[dict[str, Any]], dec: list[dict[str, Any]], info: dict[str, Any], args: argparse.Namespace) -> str:
    rows = []
    for e in ext:
        f = e["forward_median"]
        verdict = "meets" if e["ratio"] >= TARGET_RATIO else "below"
        cold = "meets" if e["ratio_cold"] >= TARGET_RATIO else "below"
        two = "meets" if e["two_over_one_time"] <= TARGET_TWO_BLOCKS else "above"
        rows.append([e["backbone"].replace("tf_efficientnet_", ""), e["image_size"], e["threads"],
                     f["torch NCHW (before)"], f["torch channels_last"], f["onnxruntime intra-op"],
                     f.get("onnxruntime parallel runs", "-"), e["fastest_engine"],
                     e["e2e_median"], f"**{e['ratio']:.2f}** ({verdict})",
                     e["e2e_cold_median"], f"{e['ratio_cold']:.2f} ({cold})",
                     e["e2e_two_blocks_median"], f"{e['two_over_one_time']:.2f} ({two})",
                     e["steady_median"], f"{e['steady_median'] / e['fastest_img_s']:.2f}" if e["steady_median"] else "-",
                     e["fixed_s"], e["decode_ms"], e["worker_cpu_ms"], f"{e['bound']:.2f}"])
    t1 = table(["backbone", "input", "threads", "torch NCHW img/s (before)", "torch channels_last img/s",
                "onnxruntime intra-op threads img/s", "onnxruntime parallel 1-thread runs img/s", "fastest forward",
                "`loff extract` img/s (end to end, 1 block)", f"ratio to fastest (target >= {TARGET_RATIO})",
                "`loff extract` img/s, first on the machine (export included)", "that / fastest",
                "`loff extract` img/s, 2 blocks (-2,last)",
                f"time 2 blocks / 1 block (target <= {TARGET_TWO_BLOCKS})",
                "`loff extract` img/s after the first batch (1 block)", "that / fastest",
                "fixed cost s (end to end - images / steady rate)", "decode + preprocess ms/img (1 core)",
                "decode worker CPU ms/img", "ceiling the worker's CPU allows (estimate)"], rows)
    t2_rows = []
    for syntax in sorted({r["syntax"] for r in dec}):
        rows_ = [r for r in dec if r["syntax"] == syntax]
        ok = [r for r in rows_ if r["img_s"] and r["equal"]]
        best = max(ok, key=lambda r: r["img_s"])["decoder"] if ok else None
        for r in rows_:
            t2_rows.append([syntax, r["decoder"], r["mb_per_file"], r["img_s"],
                            {True: "yes", False: "NO", None: "n/a"}[r["equal"]],
                            "fastest correct" if r["decoder"] == best else r["note"]])
    t2 = table(["transfer syntax", "decoder", "MB/file", "images/s on 1 core", "equals uncompressed", "note"], t2_rows)
    setup = ", ".join(f"{e['backbone'].replace('tf_efficientnet_', '')} {e['threads']}t {e['onnx_setup_s']:.1f} s"
                      for e in ext)
    out = (f"## Extraction throughput\n\n{machine_block(info)}\n\n{t1}\n\n"
           f"- {ext[0]['images'] if ext else 0} synthetic DICOM images (256 x 208), batch {args.batch_size}, "
           f"medians of {args.repeats} interleaved repeats; NCHW forward timed on {args.nchw_images} images. "
           f"End to end = `extract_features` with engine auto (backbone load, engine preparation, decode + "
           f"preprocess in the DataLoader worker, forward, HDF5 shards + merge), the exported graph in the engine "
           f"cache; first on the machine: the same with an empty engine cache; forward = the engine alone on "
           f"preprocessed tensors in RAM. ONNX export + session (no engine cache): {setup}. After the first batch: the rate between "
           f"the first and the last batch's progress reports (what a long extraction runs at); fixed cost: what "
           f"end to end spends beyond that rate (backbone load, engine preparation, worker start, merge). "
           f"Decode worker CPU: its rusage per image, the DataLoader of `loff extract` run alone. Ceiling: the "
           f"ratio that CPU allows on {ext[0]['cores'] if ext else '?'} cores, min(1, cores x F / "
           f"(threads x (F + W)), F / W), F = threads / fastest forward (CPU per image of the reference), "
           f"W = the worker's CPU per image: with a core to spare the worker costs the forward nothing; "
           f"with every core in the forward, its time is taken from the forward.")
    if dec:
        out += (f"\n\n## DICOM decode, 512x416, 12 bits stored in 16, one thread\n\n{t2}\n\n"
                f"- {args.decode_images} files per syntax, medians of {args.repeats} interleaved passes; "
                f"decoded arrays compared with the same images written uncompressed (half the files are MONOCHROME1; "
                f"SimpleITK returns those inverted to MONOCHROME2, so its arrays are compared with max - stored "
                f"value). gdcm direct: gdcm.ImageReader + GetBuffer, without pydicom (pydicom 3 has no GDCM plugin "
                f"for RLE).")
    return out


def main(argv: list[str] | None = None) -> int:
    p = bench_parser(__doc__)
    p.add_argument("--backbones", nargs="*", default=None, help=f"a subset of {', '.join(BACKBONES)}")
    p.add_argument("--thread-counts", nargs="*", type=int, default=None, help="default: 1 2")
    p.add_argument("--image-size", type=int, default=None, help="default: each backbone's own")
    p.add_argument("--images", type=int, default=None)
    p.add_argument("--nchw-images", type=int, default=None, help="images for the slow NCHW forward")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the engine's)")
    p.add_argument("--decode-images", type=int, default=None)
    p.add_argument("--no-decode", action="store_true", help="skip part 2 (DICOM decoders)")
    p.add_argument("--repeats", type=int, default=None)
    args = parse_bench_args(p, argv)
    assert args is not None
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    d = {"full": dict(images=320, nchw_images=48, decode_images=48, repeats=2, thread_counts=[1, 2]),
         "quick": dict(images=128, nchw_images=32, decode_images=12, repeats=2, thread_counts=[1, 2]),
         "smoke": dict(images=16, nchw_images=16, decode_images=4, repeats=1, thread_counts=[1],
                       backbones=["tf_efficientnet_lite0"])}[mode]
    for k, v in d.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    info = machine_info(args.device)
    with tempfile.TemporaryDirectory(prefix="loff-bench-") as tmp:
        # the benchmark's own engine cache: "end to end" finds the graph the forward timing
        # exported (as every extraction after a machine's first does); "first on the machine"
        # starts from an empty one
        os.environ["LOFF_ENGINE_CACHE_DIR"] = str(Path(tmp) / "engines")
        ext = bench_extract(args, Path(tmp))
        dec = [] if args.no_decode else bench_decode(args, Path(tmp))
    print(report(ext, dec, info, args))
    write_json(args.json, {"benchmark": "extraction", "mode": mode, "machine": info, "extract": ext, "decode": dec})
    return 0


if __name__ == "__main__":
    sys.exit(main())
