"""`loff weights get NAME`: an explicit, resumable, verified download from the Hugging Face Hub.

Only ever called because the user asked (the CLI command, the app's Get button); nothing
else in LOFF Studio downloads. The file goes into the standard Hugging Face cache
(`huggingface_hub.constants.HF_HUB_CACHE`: `models--ORG--NAME/blobs/<sha256>` with a
`snapshots/<commit>/<file>` link and `refs/main`), so a file another tool downloaded is
reused and ours is found by timm and transformers.

How it works, with the real `huggingface_hub` client:
- `get_hf_file_metadata` (HEAD on `/{repo}/resolve/main/{file}`) gives the size
  (`X-Linked-Size`), the SHA-256 of an LFS file (`X-Linked-Etag`) and the commit
  (`X-Repo-Commit`);
- the bytes stream (its `get_session()`) into `blobs/<sha256>.loff-partial`; Stop (the
  progress's cancel flag) or a dropped connection keeps that partial file, and the next Get
  asks only for the rest (`Range: bytes=N-`). (huggingface_hub's own `hf_hub_download`
  deletes a partial download on failure, hence this loop.)
- the finished file's SHA-256 must equal the Hub's; a corrupt or truncated file is deleted
  and never used.

`HF_HUB_OFFLINE=1` (set by the launch script so nothing else ever reaches the network)
blocks every huggingface_hub request. An explicit Get lifts it for its own requests only
(`_online()`), and restores it after: the user asked for this one download.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from .errors import BackboneError, Remedy
from .fsutil import sha256_file
from .progress import Cancelled, Progress

CHUNK = 1 << 20
PARTIAL = ".loff-partial"


@dataclass
class GetResult:
    name: str
    path: Path
    size: int
    sha256: str
    downloaded: int  # bytes fetched by this call (0: already here)
    resumed_from: int  # bytes already in a partial file when this call began
    added: Optional[str] = None  # converted into the weights folder under this name (HF-layout repos)


def endpoint() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT", constants.ENDPOINT).rstrip("/")


@contextlib.contextmanager
def _online() -> Iterator[None]:
    """Lift HF_HUB_OFFLINE for the requests of one explicit Get (see the module docstring)."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = False
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _no_network(exc: BaseException, name: str, url: str) -> BackboneError:
    return BackboneError(f"cannot reach the Hugging Face Hub ({url.split('/')[2] if '//' in url else url}): "
                         f"{type(exc).__name__}", remedy=Remedy.WEIGHTS_COPY_AND_ADD, name=name)


def _cache_paths(repo: str, filename: str, sha256: str, commit: str) -> tuple[Path, Path, Path]:
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    root = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type="model")
    return root, root / "blobs" / sha256, root / "snapshots" / commit / filename


def _link(root: Path, blob: Path, pointer: Path, commit: str, revision: str) -> None:
    pointer.parent.mkdir(parents=True, exist_ok=True)
    if pointer.is_symlink() or pointer.exists():
        pointer.unlink()
    try:
        pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    except OSError:  # no symlinks (some Windows setups): a copy, as huggingface_hub does
        import shutil

        shutil.copyfile(blob, pointer)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / revision).write_text(commit)


def partial_file(name: str) -> Optional[Path]:
    """The partial download of a suggested model, if a Get was stopped (for the app's "resume")."""
    from .weights import known

    k = known(name)
    if k is None or k.source != "hf":
        return None
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    blobs = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=k.repo, repo_type="model") / "blobs"
    found = sorted(blobs.glob(f"*{PARTIAL}")) if blobs.is_dir() else []
    return found[0] if found else None


def get_weights(name: str, progress: Optional[Progress] = None, revision: str = "main") -> GetResult:
    """Download a suggested model's weights (see the module docstring); resumable, verified."""
    from .weights import add_weights, added, known

    k = known(name)
    if k is None:
        raise BackboneError(f"{name!r} is not a suggested backbone", remedy=Remedy.SUGGESTED_BACKBONES, own=True)
    if k.source != "hf":
        raise BackboneError(f"{name} needs no download: its weights are installed with LOFF Studio ({k.repo})")
    progress = progress or Progress()
    with _online():
        path, size, sha, fetched, resumed = _download(k.repo, k.filename, revision, progress, name)
        for extra in ("config.json", "preprocessor_config.json") if k.layout != "timm" else ():
            try:
                _download(k.repo, extra, revision, Progress(), name)
            except BackboneError:
                pass  # optional files: the conversion infers what they would say
    result = GetResult(name, path, size, sha, fetched, resumed)
    if k.layout != "timm":  # e.g. RAD-DINO in transformers' layout: converted once, into the weights folder
        entry = added(name)
        if entry is None or entry.source_sha256 != sha:
            # the model's own preprocessor_config.json (image_mean / image_std / crop_size, read
            # by the conversion) wins over the registry's copy, which is only the fallback
            own = _json_file(path.parent / "preprocessor_config.json")
            has_norm = bool(own.get("image_mean") and own.get("image_std"))
            add_weights(path.parent, name, licence=k.licence, registry_name=name,
                        mean=None if has_norm else k.mean, std=None if has_norm else k.std,
                        native_size=None if own.get("crop_size") else k.native_size, replace=True)
        result.added = name
    return result


def _json_file(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _download(repo: str, filename: str, revision: str, progress: Progress, name: str) -> tuple[Path, int, str, int, int]:
    import httpx2 as httpx
    from huggingface_hub import get_hf_file_metadata, get_session, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError
    from huggingface_hub.utils import build_hf_headers

    url = hf_hub_url(repo, filename, revision=revision, endpoint=endpoint())
    try:
        meta = get_hf_file_metadata(url, endpoint=endpoint())
    except (RepositoryNotFoundError, EntryNotFoundError) as exc:
        raise BackboneError(f"{repo}/{filename}: not found on the Hub ({type(exc).__name__})") from None
    except HfHubHTTPError as exc:
        raise BackboneError(f"{repo}/{filename}: the Hub answered {str(exc).splitlines()[0][:200]}") from None
    except (httpx.TransportError, OSError) as exc:
        raise _no_network(exc, name, url) from None
    sha = (meta.etag or "").strip('"').lower()
    if len(sha) not in (40, 64) or any(c not in "0123456789abcdef" for c in sha):
        raise BackboneError(f"{repo}/{filename}: the Hub gives no checksum for this file (etag {meta.etag!r}); "
                            f"refusing a download that cannot be verified")
    # 64 hex: an LFS file's SHA-256; 40 hex: a small file kept in git, its git blob SHA-1
    size, commit = meta.size, meta.commit_hash or revision
    root, blob, pointer = _cache_paths(repo, filename, sha, commit)
    if blob.is_file() and blob.stat().st_size == size:
        _link(root, blob, pointer, commit, revision)
        progress.report(size or 0, size or 0, "already downloaded")
        return pointer, int(size or 0), sha, 0, 0
    blob.parent.mkdir(parents=True, exist_ok=True)
    part = blob.with_name(blob.name + PARTIAL)
    resumed = part.stat().st_size if part.is_file() else 0
    if size is not None and resumed > size:
        part.unlink()
        resumed = 0
    done = resumed
    fetched = 0
    if size is None or done < size:
        headers = build_hf_headers()
        headers["Accept-Encoding"] = "identity"
        if done:
            headers["Range"] = f"bytes={done}-"
        try:
            with get_session().stream("GET", meta.location or url, headers=headers, follow_redirects=True,
                                      timeout=30) as response:
                if response.status_code == 416 and size is not None and done >= size:
                    pass
                elif response.status_code not in (200, 206):
                    raise BackboneError(f"{repo}/{filename}: the Hub answered HTTP {response.status_code}")
                else:
                    mode = "ab"
                    if done and response.status_code == 200:  # the server ignored Range: start over
                        done, mode = 0, "wb"
                    with open(part, mode) as fh:
                        for block in response.iter_bytes(CHUNK):
                            fh.write(block)
                            done += len(block)
                            fetched += len(block)
                            progress.report(done, size or 0, f"{done / 1e6:.1f} of {(size or 0) / 1e6:.1f} MB")
                            if progress.cancelled or progress.stop_requested:
                                raise Cancelled()
        except (httpx.TransportError, OSError) as exc:
            if isinstance(exc, OSError) and not isinstance(exc, (ConnectionError, TimeoutError)):
                raise
            kept = part.stat().st_size if part.is_file() else 0
            if kept:
                raise BackboneError(f"{repo}/{filename}: the download broke off after {kept / 1e6:.1f} MB "
                                    f"({type(exc).__name__}); the partial file is kept: Get again resumes") from None
            raise _no_network(exc, name, url) from None
    if size is not None and part.stat().st_size < size:
        raise BackboneError(f"{repo}/{filename}: the download stopped at {part.stat().st_size} of {size} bytes; "
                            f"the partial file is kept: Get again resumes")
    digest = sha256_file(part, lambda done, total: progress.report(done, total, "checking SHA-256")) \
        if len(sha) == 64 else _git_blob_sha1(part)
    if digest != sha or (size is not None and part.stat().st_size != size):
        part.unlink()
        raise BackboneError(f"{repo}/{filename}: the downloaded file is corrupt (checksum {digest[:16]}... but the Hub "
                            f"says {sha[:16]}...); it was deleted and is not used: Get again")
    os.replace(part, blob)
    _link(root, blob, pointer, commit, revision)
    return pointer, blob.stat().st_size, sha, fetched, resumed


def _git_blob_sha1(path: Path) -> str:
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    digest.update(path.read_bytes())
    return digest.hexdigest()


def describe_get(name: str) -> dict[str, Any]:
    """What a Get would fetch (shown before it starts): size, licence, source."""
    from .weights import known, present_file

    k = known(name)
    if k is None:
        raise BackboneError(f"{name!r} is not a suggested backbone", remedy=Remedy.SUGGESTED_BACKBONES)
    return {"name": k.name, "size_mb": k.size_mb, "licence": k.licence, "source": f"{k.source}:{k.repo}",
            "file": k.filename, "present": present_file(k) is not None,
            "partial_mb": round(p.stat().st_size / 1e6, 1) if (p := partial_file(name)) else 0.0}
