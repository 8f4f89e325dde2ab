"""The HDF5 feature cache: contents, resume after a crash (bit for bit), bad files, OOM,
full disk, Stop, and fingerprints that never mix."""

from __future__ import annotations

import hashlib

import errno
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from loff_core.backbones import BackboneSpec, load_backbone
from loff_core.cache import extract_features
from loff_core.cache_reader import FeatureCache
from loff_core.errors import CacheError
from loff_core.progress import Progress

SPEC = BackboneSpec(name="vit_tiny_patch16_224", random_init=True, image_size=32, grid=2)


@pytest.fixture()
def images(tmp_path) -> list[tuple[str, Path]]:
    rng = np.random.default_rng(0)
    items = []
    for i in range(11):
        path = tmp_path / "img" / f"{i:02d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray((rng.random((40 + i, 30)) * 255).astype(np.uint8)).save(path)
        items.append((f"id{i:02d}", path))
    return items


@pytest.fixture
def faults(monkeypatch):
    """Faults injected into extraction (tests/loff_cli.py: the engine has no hook for them)."""
    from loff_cli import extraction_faults

    return extraction_faults(monkeypatch)


def _arrays(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    with FeatureCache.open(path) as c:
        mem = c.to_memory()
        return c.image_ids, mem.cls.copy(), mem.grid.copy()


def test_cache_holds_what_the_backbone_computes(images, tmp_path):
    result = extract_features(images, SPEC, tmp_path / "caches", device="cpu", batch_size=4, num_workers=0)
    assert result.extracted == 11 and result.skipped == 0 and result.failures == []
    with FeatureCache.open(result.cache_path) as c:
        assert c.image_ids == [i for i, _ in images]
        assert c.feature_dim == 192 and c.grid_hw == (2, 2)
        assert c.nbytes_per_image() == (2 * 2 * 192 + 192) * 2
        assert c.backbone["name"] == SPEC.name and c.fingerprint == result.cache_path.stem
        cls, grid = c.read(c.indices(["id03", "id07"]))
        assert cls.dtype == np.float16 and grid.shape == (2, 192, 2, 2)
        mem = c.to_memory()
        assert np.array_equal(mem.read(mem.indices(["id03", "id07"]))[1], grid)
    # the same numbers as running the backbone directly
    from loff_core.images import load_pixels

    b = load_backbone(SPEC, "cpu")
    x = torch.from_numpy(b.preprocessor(load_pixels(images[3][1])))[None]
    want_cls, want_grid = b.tokens(x)
    assert np.allclose(cls[0].astype(np.float32), want_cls[0].numpy(), atol=2e-2, rtol=1e-2)
    assert np.allclose(grid[0].astype(np.float32), want_grid[0].numpy(), atol=2e-2, rtol=1e-2)
    # a re-run has nothing to do
    again = extract_features(images, SPEC, tmp_path / "caches", device="cpu", batch_size=4, num_workers=0)
    assert again.extracted == 0 and again.skipped == 11


def test_resume_after_crash_is_bit_identical(images, tmp_path, faults):
    whole = extract_features(images, SPEC, tmp_path / "a", device="cpu", batch_size=3, num_workers=0)

    def crash(stage, n):
        if stage == "write" and n == 2:
            raise KeyboardInterrupt  # stands in for a kill between batches
    faults.fn = crash
    with pytest.raises(KeyboardInterrupt):
        extract_features(images, SPEC, tmp_path / "b", device="cpu", batch_size=3, num_workers=0)
    faults.fn = None
    parts = list((tmp_path / "b").glob("*.parts/*.h5"))
    assert len(parts) == 2 and not list((tmp_path / "b").glob("*.h5"))
    resumed = extract_features(images, SPEC, tmp_path / "b", device="cpu", batch_size=3, num_workers=0)
    assert resumed.skipped == 6 and resumed.extracted == 5
    a, b = _arrays(whole.cache_path), _arrays(resumed.cache_path)
    assert a[0] == b[0] and np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])
    assert not list((tmp_path / "b").glob("*.parts"))


def test_unreadable_files_are_listed_and_the_rest_cached(images, tmp_path):
    bad = tmp_path / "img" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    result = extract_features(images + [("bad", bad)], SPEC, tmp_path / "c", device="cpu", batch_size=4,
                              num_workers=1)
    assert result.extracted == 11
    assert len(result.failures) == 1 and result.failures[0].path == str(bad) and result.failures[0].reason
    with FeatureCache.open(result.cache_path) as c:
        assert "bad" not in c.image_ids and len(c.image_ids) == 11


def test_unreadable_files_are_remembered_and_a_rerun_rewrites_nothing(images, tmp_path):
    bad = tmp_path / "img" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    items = images + [("bad", bad)]
    first = extract_features(items, SPEC, tmp_path / "c", device="cpu", batch_size=4, num_workers=0)
    before = (first.cache_path.stat().st_mtime_ns, hashlib.sha256(first.cache_path.read_bytes()).hexdigest())
    again = extract_features(items, SPEC, tmp_path / "c", device="cpu", batch_size=4, num_workers=0)
    assert again.extracted == 0 and again.skipped == 12
    assert [(f.path, f.reason) for f in again.failures] == [(f.path, f.reason) for f in first.failures]
    after = (again.cache_path.stat().st_mtime_ns, hashlib.sha256(again.cache_path.read_bytes()).hexdigest())
    assert after == before, "a re-run with nothing new rewrote the cache"


def test_a_folder_with_no_readable_image_gives_an_empty_finished_cache(tmp_path):
    bad = []
    for i in range(3):
        path = tmp_path / f"broken{i}.png"
        path.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        bad.append((f"b{i}", path))
    result = extract_features(bad, SPEC, tmp_path / "c", device="cpu", batch_size=2, num_workers=0)
    assert result.extracted == 3 - len(result.failures) == 0 and len(result.failures) == 3
    with FeatureCache.open(result.cache_path) as c:
        assert len(c.image_ids) == 0


def test_out_of_memory_halves_the_batch_and_tells(images, tmp_path, faults):
    whole = extract_features(images, SPEC, tmp_path / "a", device="cpu", batch_size=4, num_workers=0)

    def oom(stage, n):
        if stage == "forward" and n > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
    faults.fn = oom
    messages = []
    result = extract_features(images, SPEC, tmp_path / "b", device="cpu", batch_size=4, num_workers=0,
                              progress=Progress(on_report=lambda d, t, m: messages.append(m)))
    assert "GPU out of memory: retrying with batch size 2" in result.notes
    assert any("retrying with batch size 2" in m for m in messages)
    a, b = _arrays(whole.cache_path), _arrays(result.cache_path)
    assert a[0] == b[0] and np.allclose(a[1].astype(np.float32), b[1].astype(np.float32), atol=1e-2)


def test_full_disk_stops_with_a_clear_message_and_keeps_finished_work(images, tmp_path, faults):
    def full(stage, n):
        if stage == "write" and n == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
    faults.fn = full
    with pytest.raises(CacheError, match="No space left on device.*kept"):
        extract_features(images, SPEC, tmp_path / "c", device="cpu", batch_size=4, num_workers=0)
    faults.fn = None
    assert len(list((tmp_path / "c").glob("*.parts/*.h5"))) == 1
    resumed = extract_features(images, SPEC, tmp_path / "c", device="cpu", batch_size=4, num_workers=0)
    assert resumed.skipped == 4 and resumed.extracted == 7


_FULL_DISK_RUN = """
import json, resource, signal, sys
from pathlib import Path
from loff_core.backbones import BackboneSpec
from loff_core.cache import extract_features
from loff_core.errors import CacheError
limit, caches, items, spec = int(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
import torch
torch.set_num_threads(int(sys.argv[5]))  # as the test's process: another thread count may round differently
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
try:
    extract_features([(i, Path(p)) for i, p in items], BackboneSpec(**spec), caches, device="cpu",
                     batch_size=1, num_workers=0)
except CacheError as exc:
    print(exc, file=sys.stderr)
    sys.exit(1)
"""


@pytest.mark.parametrize("fraction", [0.5, 0.97])  # in a dataset write / in the flush when the file closes
def test_full_disk_in_the_merge_exits_cleanly_and_resumes(images, tmp_path, fraction):
    """The shards fit but the merged file does not (a per-file size limit stands in for a full
    disk: no mount needed). HDF5 used to be left with a file it could not close, and the
    process segfaulted at exit (rc 139) after the message; now: one line, rc 1, nothing lost."""
    import json
    import subprocess
    import sys

    whole = extract_features(images, SPEC, tmp_path / "a", device="cpu", batch_size=1, num_workers=0)
    limit = int(whole.cache_path.stat().st_size * fraction)  # every shard is far smaller
    caches = tmp_path / "c"
    import torch

    run = subprocess.run([sys.executable, "-c", _FULL_DISK_RUN, str(limit), str(caches),
                          json.dumps([(i, str(p)) for i, p in images]), json.dumps(SPEC.__dict__),
                          str(torch.get_num_threads())],
                         capture_output=True, text=True, timeout=300)
    final = caches / whole.cache_path.name
    assert run.returncode == 1, run.stderr[-3000:]
    assert run.stderr.strip().splitlines() == [
        f"{final}: cannot write the feature cache (File too large); the finished batches are kept in "
        f"{final.stem}.parts/ and extract resumes from them"]
    assert not final.exists() and not list(caches.rglob(".*.tmp"))
    assert len(list(caches.glob("*.parts/*.h5"))) == len(images)
    resumed = extract_features(images, SPEC, caches, device="cpu", batch_size=1, num_workers=0)
    assert resumed.extracted == 0 and resumed.skipped == len(images)
    a, b = _arrays(whole.cache_path), _arrays(resumed.cache_path)
    assert a[0] == b[0] and np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])
    assert not list(caches.glob("*.parts")) and not list(caches.glob(".*.tmp"))


def test_stale_merge_temp_of_a_killed_run_is_removed(images, tmp_path):
    """A SIGKILL in the merge leaves `.<fingerprint>.h5.<pid>.tmp` (as big as the cache); the
    next extraction removes it, but not the temp file of a process that is still alive."""
    import subprocess
    import sys

    first = extract_features(images[:4], SPEC, tmp_path / "c", device="cpu", num_workers=0)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = first.cache_path.with_name(f".{first.cache_path.name}.{int(dead.stdout)}.tmp")
    live = first.cache_path.with_name(f".{first.cache_path.name}.1.tmp")  # pid 1 is alive
    stale.write_bytes(b"x" * 1000)
    live.write_bytes(b"x")
    extract_features(images, SPEC, tmp_path / "c", device="cpu", num_workers=0)
    assert not stale.exists() and live.exists()


def test_stop_keeps_what_is_done_and_resume_finishes(images, tmp_path):
    progress = Progress()
    progress.on_report = lambda d, t, m: progress.request_stop() if d >= 4 else None
    stopped = extract_features(images, SPEC, tmp_path / "c", device="cpu", batch_size=4, num_workers=0,
                               progress=progress)
    # on the CPU the next batch's forward runs while a shard is written: the batch under way
    # when Stop came is finished and kept too
    assert stopped.stopped and stopped.extracted in (4, 8)
    with FeatureCache.open(stopped.cache_path) as c:
        assert len(c.image_ids) == stopped.extracted
    rest = extract_features(images, SPEC, tmp_path / "c", device="cpu", batch_size=4, num_workers=0)
    assert rest.extracted == 11 - stopped.extracted
    with FeatureCache.open(rest.cache_path) as c:
        assert sorted(c.image_ids) == sorted(i for i, _ in images)


def test_other_settings_get_another_file(images, tmp_path):
    a = extract_features(images[:3], SPEC, tmp_path / "c", device="cpu", num_workers=0)
    b = extract_features(images[:3], BackboneSpec(**{**SPEC.__dict__, "grid": 1}), tmp_path / "c", device="cpu",
                         num_workers=0)
    assert a.cache_path != b.cache_path and a.cache_path.exists() and b.cache_path.exists()
    with FeatureCache.open(b.cache_path) as c:
        assert c.grid_hw == (1, 1)


def test_unfinished_file_is_refused(tmp_path):
    import h5py

    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        f.attrs["fingerprint"] = "x"
    with pytest.raises(CacheError, match="unfinished"):
        FeatureCache.open(path)


def test_read_only_location_is_a_clear_error(images, tmp_path, monkeypatch):
    """Tests run as root (chmod does not stop root), so the OS error is injected."""
    import errno as _errno

    real_mkdir = Path.mkdir

    def mkdir(self, *a, **kw):
        if self.name == "caches":
            raise OSError(_errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *a, **kw)
    monkeypatch.setattr(Path, "mkdir", mkdir)
    with pytest.raises(CacheError, match="cannot create the cache folder.*Read-only file system"):
        extract_features(images, SPEC, tmp_path / "caches", device="cpu", num_workers=0)


def test_merge_holds_one_shard_open_at_a_time(images, tmp_path, monkeypatch):
    """With batch size 1 every image is its own shard; the merge must not hold them all open
    (at 20k images that ran out of file descriptors and cost ~1 GB of HDF5 chunk caches)."""
    import h5py

    real_file = h5py.File
    open_now, most = [0], [0]

    class CountingFile(real_file):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            open_now[0] += 1
            most[0] = max(most[0], open_now[0])

        def close(self):
            if self.id.valid:
                open_now[0] -= 1
            super().close()

    monkeypatch.setattr(h5py, "File", CountingFile)
    result = extract_features(images, SPEC, tmp_path / "caches", device="cpu", batch_size=1, num_workers=0)
    assert result.extracted == 11
    assert most[0] <= 2, f"{most[0]} HDF5 files open at once"
    monkeypatch.setattr(h5py, "File", real_file)
    assert _arrays(result.cache_path)[0] == [i for i, _ in images]


@pytest.mark.parametrize("cores, cpu, gpu", [(1, 0, 0), (2, 1, 1), (3, 2, 2), (4, 3, 3), (16, 8, 4), (64, 8, 4)])
def test_decode_workers_follow_the_cores(monkeypatch, cores, cpu, gpu):
    """On the CPU one decode worker per core beside the forward's (capped): one worker caps an
    extraction at 1 / its time per image whatever the cores; 2 cores keep one."""
    from loff_core import cache as cache_module
    from loff_core import engines

    monkeypatch.setattr(engines, "available_cores", lambda: cores)
    assert cache_module._default_workers("cpu") == cpu
    assert cache_module._default_workers("cuda") == gpu
    assert cpu <= cache_module.CPU_DECODE_WORKERS_MAX


def test_no_more_decode_workers_than_batches_by_default(images, tmp_path, monkeypatch):
    from loff_core import cache as cache_module
    from loff_core import engines

    monkeypatch.setattr(engines, "available_cores", lambda: 16)
    seen = []
    real = cache_module.decode_loader

    def recording(paths, preprocessor, batches, workers, **kwargs):
        seen.append((len(batches), workers))
        return real(paths, preprocessor, batches, 0, **kwargs)  # decoded here: the count is what matters

    monkeypatch.setattr(cache_module, "decode_loader", recording)
    extract_features(images[:4], SPEC, tmp_path / "a", device="cpu", batch_size=2)
    extract_features(images, SPEC, tmp_path / "b", device="cpu", batch_size=1)
    extract_features(images, SPEC, tmp_path / "c", device="cpu", batch_size=1, num_workers=2)
    assert seen == [(2, 2), (11, 8), (11, 2)]


def test_several_decode_workers_give_the_cache_of_one(images, tmp_path):
    """Batches decoded by three workers come back in order: the same ids, features and
    failures as one worker (and as decoding in this process)."""
    bad = tmp_path / "img" / "bad.png"
    bad.write_bytes(b"not an image")
    items = images[:6] + [("bad", bad)] + images[6:]
    caches = {}
    for workers in (0, 1, 3):
        result = extract_features(items, SPEC, tmp_path / f"w{workers}", device="cpu", batch_size=2,
                                  num_workers=workers)
        assert [f.path for f in result.failures] == [str(bad)]
        caches[workers] = _arrays(result.cache_path)
    for workers in (1, 3):
        ids, cls, grid = caches[workers]
        assert ids == caches[0][0] == [i for i, _ in images]
        assert np.array_equal(cls, caches[0][1]) and np.array_equal(grid, caches[0][2])
