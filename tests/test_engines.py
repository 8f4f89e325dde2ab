"""Issue 20: forward engines give the same features (so the cache fingerprint ignores them),
several blocks come from one forward pass into one cache, old caches keep opening, the
first batch says what the extraction will cost and the time left is smoothed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from loff_core.backbones import BackboneSpec, fingerprint_of, identity_of, load_backbone, parse_blocks
from loff_core.cache import FeatureCache, extract_features
from loff_core.engines import OnnxRuntimeEngine, TorchEngine, choose_engine
from loff_core.errors import BackboneError, CacheError
from loff_core.progress import Progress, TimeLeft

LITE = BackboneSpec(name="tf_efficientnet_lite0", random_init=True, image_size=64, grid=16)
VIT = BackboneSpec(name="vit_tiny_patch16_224", random_init=True, image_size=32, grid=2)


@pytest.fixture()
def images(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    items = []
    for i in range(11):
        path = tmp_path / "img" / f"{i:02d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray((rng.random((40 + i, 30)) * 255).astype(np.uint8)).save(path)
        items.append((f"id{i:02d}", path))
    return items


def _f16(x):
    return np.asarray(x, np.float32).astype(np.float16).astype(np.float32)


def _close_in_f16(a, b):
    """Equal within the cache's float16 precision: a few float16 steps of the values' scale."""
    a, b = _f16(a), _f16(b)
    scale = max(1.0, float(np.abs(a).max()))
    return float(np.abs(a - b).max()) <= 4 * 2.0 ** -10 * scale


@pytest.mark.parametrize("spec", [LITE, VIT], ids=["cnn", "vit"])
def test_engines_give_the_same_tokens_within_float16(spec):
    layers = "-2,last" if spec is LITE else "last,-2"
    b = load_backbone(BackboneSpec(**{**spec.__dict__, "layers": layers}), "cpu")
    x = torch.randn(3, 3, b.preprocessor.image_size, b.preprocessor.image_size, generator=torch.Generator().manual_seed(1))
    # the reference: plain NCHW eager PyTorch, as extraction ran before issue 20
    model = b.token_module()
    b.model.to(memory_format=torch.contiguous_format)
    with torch.inference_mode():
        ref = model(x.contiguous())
    torch_out = TorchEngine(b)(x)
    ort_out = OnnxRuntimeEngine(b, threads=1)(x)
    assert len(torch_out) == len(ort_out) == 2
    for i, (cls, grid) in enumerate(torch_out):
        assert _close_in_f16(cls, ref[2 * i]) and _close_in_f16(grid, ref[2 * i + 1])
        assert _close_in_f16(ort_out[i][0], ref[2 * i]) and _close_in_f16(ort_out[i][1], ref[2 * i + 1])
    assert not _close_in_f16(torch_out[0][1], torch_out[0][1] + 0.01 * (1 + torch_out[0][1].abs()))  # the check can fail


def test_onnxruntime_pools_uneven_grids_as_torch_does():
    """Lite2's -2 stage is 17 x 17 at 260 px, pooled to 16 x 16: uneven bins, which ONNX's
    pooling cannot express (the export failed and extraction fell back to torch); here
    Lite0's 4 x 4 stage at 64 px pooled to 3 x 3 has uneven bins too."""
    b = load_backbone(BackboneSpec(**{**LITE.__dict__, "grid": 3, "layers": "-2,last"}), "cpu")
    assert b.block_shapes[0][1] == (3, 3)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    want = TorchEngine(b)(x)
    got = OnnxRuntimeEngine(b, threads=1)(x)
    for (wc, wg), (gc, gg) in zip(want, got):
        assert _close_in_f16(gc, wc) and _close_in_f16(gg, wg)


def test_the_engine_is_recorded_but_does_not_change_the_fingerprint(images, tmp_path):
    a = extract_features(images, LITE, tmp_path / "a", device="cpu", batch_size=4, num_workers=0, engine="torch")
    b = extract_features(images, LITE, tmp_path / "b", device="cpu", batch_size=4, num_workers=0,
                         engine="onnxruntime")
    assert a.cache_path.name == b.cache_path.name
    with FeatureCache.open(a.cache_path) as ca, FeatureCache.open(b.cache_path) as cb:
        assert ca.engine.startswith("torch channels_last") and cb.engine.startswith("onnxruntime")
        ma, mb = ca.to_memory(), cb.to_memory()
        assert ca.image_ids == cb.image_ids
        assert _close_in_f16(ma.cls, mb.cls) and _close_in_f16(ma.grid, mb.grid)
    summary = json.loads(b.cache_path.with_suffix(".json").read_text())
    assert summary["engine"].startswith("onnxruntime")


def test_auto_engine_uses_onnxruntime_on_the_cpu_for_many_images_only():
    b = load_backbone(LITE, "cpu")
    assert isinstance(choose_engine(b, "auto", images=8), TorchEngine)  # the export would cost more than it saves
    assert isinstance(choose_engine(b, "auto", images=1000), OnnxRuntimeEngine)
    assert isinstance(choose_engine(b, "torch", images=1000), TorchEngine)
    with pytest.raises(BackboneError, match="engine 'tensorrt'"):
        choose_engine(b, "tensorrt")


def test_the_exported_graph_is_kept_and_later_engines_start_from_it(monkeypatch, tmp_path):
    """The ONNX export (1-2 s for an EfficientNet) happens once per backbone on a machine."""
    import loff_core.engines as engines

    b = load_backbone(LITE, "cpu")
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    first = OnnxRuntimeEngine(b, threads=1)
    assert not first.from_cache and engines.cached_graph_path(b).is_file()
    exports = []
    monkeypatch.setattr(engines, "_export", lambda backbone: exports.append(1) or pytest.fail("exported again"))
    second = OnnxRuntimeEngine(b, threads=1)
    assert second.from_cache and not exports
    for (c1, g1), (c2, g2) in zip(first(x), second(x)):
        assert torch.equal(c1, c2) and torch.equal(g1, g2)
    # a few images with a cached graph: ONNX Runtime, the export being paid already
    assert isinstance(choose_engine(b, "auto", images=8), OnnxRuntimeEngine)
    # another backbone (here: other blocks) has a graph of its own
    other = load_backbone(BackboneSpec(**{**LITE.__dict__, "layers": "-2,last"}), "cpu")
    assert engines.cached_graph_path(other) != engines.cached_graph_path(b)


def test_a_damaged_cached_graph_is_exported_again(monkeypatch):
    import loff_core.engines as engines

    b = load_backbone(LITE, "cpu")
    path = engines.cached_graph_path(b)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an onnx graph")
    engine = OnnxRuntimeEngine(b, threads=1)
    assert not engine.from_cache and path.stat().st_size > 1000
    assert OnnxRuntimeEngine(b, threads=1).from_cache
    # an engine cache that cannot be written is not used, and extraction still runs
    monkeypatch.setenv("LOFF_ENGINE_CACHE_DIR", "/proc/no-such-folder")
    assert len(OnnxRuntimeEngine(b, threads=1)(torch.zeros(1, 3, 64, 64))) == 1


def test_the_engine_cache_keeps_the_newest_graphs_only(monkeypatch):
    import loff_core.engines as engines

    monkeypatch.setattr(engines, "ENGINE_CACHE_KEEP", 2)
    paths = []
    for grid in (1, 2, 3):
        b = load_backbone(BackboneSpec(**{**LITE.__dict__, "grid": grid}), "cpu")
        OnnxRuntimeEngine(b, threads=1)
        paths.append(engines.cached_graph_path(b))
    assert [p.is_file() for p in paths] == [False, True, True]


def test_parallel_runs_give_the_tokens_of_one_run():
    """From 2 threads the batch is cut into pieces run side by side on one thread each."""
    b = load_backbone(BackboneSpec(**{**LITE.__dict__, "layers": "-2,last"}), "cpu")
    x = torch.randn(11, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    one = OnnxRuntimeEngine(b, threads=2, parallel=False)
    parallel = OnnxRuntimeEngine(b, threads=2)
    assert parallel.runs == 2 and one.runs == 1 and "parallel" in parallel.label
    for (c1, g1), (c2, g2) in zip(one(x), parallel(x)):
        assert c2.shape == c1.shape and g2.shape == g1.shape
        assert torch.allclose(c1, c2, atol=1e-5) and torch.allclose(g1, g2, atol=1e-5)
    assert len(parallel(x[:1])[0][0]) == 1  # one image: one run
    parallel.close()


def test_onnxruntime_gives_the_same_tokens_for_every_batch_shape():
    """The batch sizes of one extraction (a full batch, a short last batch, the parallel runs'
    pieces, the warm-up's shape) give the tokens of one image at a time."""
    b = load_backbone(LITE, "cpu")
    engine = OnnxRuntimeEngine(b, threads=1)
    x = torch.randn(7, 3, 64, 64, generator=torch.Generator().manual_seed(9))
    whole = engine(x)
    singles = [engine(x[i:i + 1]) for i in range(len(x))]
    for k, (cls, grid) in enumerate(whole):
        assert torch.allclose(cls, torch.cat([s[k][0] for s in singles]), atol=1e-5)
        assert torch.allclose(grid, torch.cat([s[k][1] for s in singles]), atol=1e-5)


# -- several blocks from one forward pass ------------------------------------------------
def test_parse_blocks_and_the_default_preset():
    assert parse_blocks("last") == ["last"] and parse_blocks(" -2 , last ") == ["-2", "last"]
    assert parse_blocks("default") == ["-2", "last"]  # CNNs (docs/benchmarks.md, "Which layer")
    vit = load_backbone(VIT, "cpu").model
    assert parse_blocks("default", vit) == ["last"]
    for bad in ("last,last", "last,", "-2,top"):
        with pytest.raises(BackboneError):
            parse_blocks(bad)


def test_two_blocks_from_one_pass_equal_each_block_alone():
    both = load_backbone(BackboneSpec(**{**LITE.__dict__, "layers": "-2,last"}), "cpu")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    got = both.blocks_tokens(x)
    for (cls, grid), layers in zip(got, ("-2", "last")):
        alone = load_backbone(BackboneSpec(**{**LITE.__dict__, "layers": layers}), "cpu")
        want_cls, want_grid = alone.tokens(x)
        assert torch.allclose(cls, want_cls, atol=1e-5) and torch.allclose(grid, want_grid, atol=1e-5)
        # each block's record gives the fingerprint a cache of that block alone has
        entry = both.describe()["blocks"][["-2", "last"].index(layers)]
        assert entry["fingerprint"] == alone.fingerprint
        assert (entry["feature_dim"], tuple(entry["grid_hw"])) == (alone.feature_dim, alone.grid_hw)
    assert both.fingerprint not in {e["fingerprint"] for e in both.describe()["blocks"]}
    assert (both.feature_dim, both.grid_hw) == (got[0][0].shape[1], tuple(got[0][1].shape[2:]))


def test_a_cache_of_two_blocks_reads_each_block(images, tmp_path):
    spec = BackboneSpec(**{**LITE.__dict__, "layers": "-2,last"})
    res = extract_features(images, spec, tmp_path / "c", device="cpu", batch_size=4, num_workers=0)
    last = extract_features(images, LITE, tmp_path / "c", device="cpu", batch_size=4, num_workers=0)
    with FeatureCache.open(res.cache_path) as c, FeatureCache.open(last.cache_path) as alone:
        assert c.blocks == ["-2", "last"] and c.block == "-2"
        first = c.to_memory()
        assert first.grid.shape[1:] == (c.feature_dim, *c.grid_hw) and c.feature_dim != alone.feature_dim
        c.use_block("last")
        assert (c.feature_dim, c.grid_hw) == (alone.feature_dim, alone.grid_hw)
        ids = c.indices(["id01", "id05"])
        cls, grid = c.read(ids)
        want_cls, want_grid = alone.read(alone.indices(["id01", "id05"]))
        assert np.allclose(cls, want_cls, atol=2e-3) and np.allclose(grid, want_grid, atol=2e-3)
        assert c.block_backbone["fingerprint"] == alone.fingerprint == last.cache_path.stem
        assert c.block_backbone["layers"] == "last" and "blocks" not in c.block_backbone
        assert c.nbytes_per_image() == alone.nbytes_per_image()
        assert c.stored_bytes_per_image() == alone.nbytes_per_image() + first.cls.shape[1] * (
            1 + first.grid.shape[2] * first.grid.shape[3]) * 2
        with pytest.raises(CacheError, match="holds the blocks -2, last"):
            c.use_block("-3")
    with FeatureCache.open(res.cache_path, block="last") as c:
        assert c.block == "last"


def test_a_cache_in_the_format_before_issue_20_opens(tmp_path):
    """Written the way the code before issue 20 wrote a finished cache (datasets cls and
    tokens, the backbone's record without `blocks`, no `engine`)."""
    import h5py

    b = load_backbone(LITE, "cpu")
    old = {k: v for k, v in b.describe().items() if k != "blocks"}
    assert old["layers"] == "last" and fingerprint_of(identity_of(old)) == b.fingerprint
    path = tmp_path / f"{b.fingerprint}.h5"
    n, (h, w), c = 3, b.grid_hw, b.feature_dim
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f.create_dataset("image_ids", data=np.array(["a", "b", "c"], dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("cls", data=rng.normal(size=(n, c)).astype(np.float16))
        f.create_dataset("tokens", data=rng.normal(size=(n, h, w, c)).astype(np.float16))
        f.create_dataset("failed_ids", data=np.array([], dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("failed_reasons", data=np.array([], dtype=object), dtype=h5py.string_dtype())
        f.attrs.update(fingerprint=b.fingerprint, backbone=json.dumps(old, sort_keys=True), format_version=1,
                       created="2026-11-01T00:00:00+00:00", done=1)
    with FeatureCache.open(path) as cache:
        assert cache.blocks == ["last"] and cache.block == "last" and cache.engine == ""
        assert cache.block_backbone == old
        assert cache.read([1])[1].shape == (1, c, h, w)
    with FeatureCache.open(path, block="last"):
        pass


# -- the estimate up front and a steady time left -----------------------------------------
def test_the_first_batch_says_what_the_extraction_will_cost(images, tmp_path, monkeypatch):
    from loff_core import cache

    monkeypatch.setattr(cache, "ESTIMATE_NOTICE_SECONDS", 0.0)
    notices, reports = [], []
    res = extract_features(images, LITE, tmp_path / "c", device="cpu", batch_size=4, num_workers=0,
                           progress=Progress(on_report=lambda d, t, m: reports.append(m), on_notice=notices.append))
    assert len(notices) == 1 and notices[0].startswith("first batch: ") and "for the 11 images" in notices[0]
    assert notices[0] in res.notes
    assert reports[-1].endswith(" left") and "img/s" in reports[-1]


def test_time_left_is_steady_with_noisy_batches_and_follows_a_real_change():
    rng = np.random.default_rng(0)
    total, batch = 5840, 16
    est = TimeLeft(total, 0.0)
    now, done, lefts = 0.0, 0, []
    now += 9.0  # a slow first batch (workers start, first allocations)
    done += batch
    est.update(done, now)
    while done < total // 2:
        now += batch * 0.5 * rng.uniform(0.6, 1.4)  # 0.5 s per image on average, each batch up to +-40 %
        done += batch
        est.update(done, now)
        lefts.append((est.seconds_left(), (total - done) * 0.5))
    # after a few batches the estimate stays within 15 % of the truth although single batches are 40 % off
    assert all(abs(got - truth) <= 0.15 * truth for got, truth in lefts[10:])
    # and it never jumps up by more than 5 % from one batch to the next (the window's swings)
    assert all(b[0] <= a[0] * 1.05 for a, b in zip(lefts[10:], lefts[11:]))
    # a machine that becomes twice as slow is followed within ~60 batches (~1,000 images)
    for _ in range(60):
        now += batch * 1.0
        done += batch
        est.update(done, now)
    assert est.rate == pytest.approx(1.0, rel=0.05)
    assert TimeLeft(10, 0.0).seconds_left() is None


def test_the_cli_prints_a_notice_such_as_the_estimate_at_once(capsys):
    from loff_core.cli.terminal import TerminalProgress

    terminal = TerminalProgress("extract")
    terminal._tty = False
    terminal.progress.report(0, 100, "loading backbone")
    terminal.progress.notice("first batch: 2.0 s for 16 images (onnxruntime); about 12 min 10 s for the 5840 images")
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1] == "extract: first batch: 2.0 s for 16 images (onnxruntime); about 12 min 10 s for the 5840 images"
    terminal.close()


@pytest.mark.parametrize("threads", [1, 2])
def test_onnxruntime_is_warmed_up_on_the_shape_of_its_runs_before_the_first_real_batch(images, tmp_path,
                                                                                      monkeypatch, threads):
    """Extraction on the CPU runs ONE black input through ONNX Runtime while the first real
    batch is decoded (a shape's first run is slower, issue 20): the whole batch with one
    run, one piece with parallel runs (a batch would take every core from the decode worker).
    Its output is dropped, so the cache holds what the torch engine gives. Short extractions
    skip it."""
    import onnxruntime

    from loff_core import cache as cache_module
    from loff_core import engines

    runs = []  # (rows, black) of every ONNX Runtime run, in order
    real_run = onnxruntime.InferenceSession.run

    def recording(self, outputs, feed, *args, **kwargs):
        x = feed["image"]
        runs.append((len(x), bool((x == 0).all())))
        return real_run(self, outputs, feed, *args, **kwargs)

    monkeypatch.setattr(onnxruntime.InferenceSession, "run", recording)
    monkeypatch.setattr(engines, "cpu_threads", lambda: threads)
    batch, batches = 8, cache_module.WARM_UP_MIN_BATCHES  # the fewest batches that warm up
    images = [(f"{i}-{k}", p) for k, (i, p) in enumerate((images * batches * batch)[:batches * batch])]
    ort = extract_features(images, LITE, tmp_path / "ort", device="cpu", batch_size=batch, num_workers=0,
                           engine="onnxruntime")
    assert runs[0][1] and not any(black for _, black in runs[1:])  # one warm-up run, first
    real = [rows for rows, _ in runs[1:]]
    assert sum(real) == len(images)
    assert runs[0][0] == real[0]  # the shape the real runs get
    assert runs[0][0] == (batch if threads == 1 else real[0]) and (threads == 1) == (real[0] == batch)
    ref = extract_features(images, LITE, tmp_path / "torch", device="cpu", batch_size=batch, num_workers=0,
                           engine="torch")
    with FeatureCache.open(ort.cache_path) as co, FeatureCache.open(ref.cache_path) as ct:
        mo, mt = co.to_memory(), ct.to_memory()
        assert co.image_ids == ct.image_ids == [i for i, _ in images]
        assert _close_in_f16(mo.cls, mt.cls) and _close_in_f16(mo.grid, mt.grid)
    runs.clear()
    extract_features(images[:2 * batch], LITE, tmp_path / "short", device="cpu", batch_size=batch, num_workers=0,
                     engine="onnxruntime")
    assert runs and not any(black for _, black in runs)
