"""`loff weights get NAME`: an explicit, resumable, verified download from the Hugging Face Hub.

Only ever called because the user asked (the CLI command, the app's Get button); nothing
else in LOFF Studio downloads. The file goes into the standard Hugging Face cache
(`huggingface_hub.constants.HF_HUB_CACHE`: `models--ORG--NAME/blobs/<sha256>` with a
`snapshots/<commit>/<file>` link and `refs/main`), so a file another tool downloaded is
reused and ours is found by timm and transformers.

How it works, with the real `huggingface_hub` client:
- `get_hf_file_metadata` (HEAD on `/{repo}/resolve/main/{file}`) gives the size
  (`X-Linked-Size`), the checksum (`X-Linked-Etag`: an LFS file's SHA-256; a small file
  kept in git has its git blob SHA-1 as `ETag`) and the commit (`X-Repo-Commit`);
- everything from the network is checked before it touches the disk: the commit must be
  40 hex digits, the checksum 64 or 40 hex digits, the file name plain path parts that stay
  in the snapshot folder; the advertised size must not exceed the registry's (plus
  `SIZE_MARGIN`) for the weights file, `EXTRA_FILE_MAX` for config files;
- the bytes stream (its `get_session()`, each network read written as it arrives, so
  memory stays bounded) into `blobs/<checksum>.loff-partial`, and reading stops at the
  advertised size; the token is dropped when the file lives on another host than the Hub
  (a CDN), as huggingface_hub does (`_is_same_or_hub_host`); Stop (the progress's cancel
  flag) or a dropped connection keeps what arrived, and the next Get asks only for the
  rest (`Range: bytes=N-`);
- the finished file's checksum must equal the Hub's (SHA-256 for an LFS file, the git
  blob SHA-1 otherwise; the result says which); a corrupt or truncated file is deleted
  and never used.

Why not `hf_hub_download`: in huggingface_hub 2.4 it writes the whole body before
comparing its size, never checks the SHA-256, and deletes a partial download on failure
(its temporary file has a per-process name), so Stop and resume across runs are lost. What
it does well is copied here: its metadata call, its redirect rule for the token, its
commit-id pattern (`REGEX_COMMIT_HASH`) and its snapshot-path containment check.

Gated repos (DINOv3: the Hub asks each user to accept the licence on the model page) need a
Hub access token: `get_weights(name, token=...)`, else `HF_TOKEN` / the token `hf auth login`
stored; without one the Get stops before any request, saying where to accept the licence.
The token goes only to the Hub's own host (the endpoint's origin): never to the CDN host a
file is redirected to (the HEAD stops at such a redirect; the GET there carries no token).

`HF_HUB_OFFLINE=1` (set by the launch script so nothing else ever reaches the network)
blocks every huggingface_hub request. An explicit Get lifts it for its own requests only
(`_online()`), and restores it after: the user asked for this one download.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from .errors import BackboneError, Remedy
from .fsutil import sha256_file
from .progress import Cancelled, Progress

CHUNK = 1 << 20
PARTIAL = ".loff-partial"
COMMIT_ID = re.compile(r"[0-9a-f]{40}")  # huggingface_hub's REGEX_COMMIT_HASH
SIZE_MARGIN = 1.02  # a registry weights file may be this much larger than its listed size (+ 0.1 MB rounding)
EXTRA_FILE_MAX = 8 << 20  # config.json / preprocessor_config.json are a few kB
CHECKSUM_KINDS = {64: "SHA-256", 40: "git blob SHA-1"}


@dataclass
class GetResult:
    name: str
    path: Path
    size: int
    checksum: str  # what the Hub gave and the file was checked against (see checksum_kind)
    checksum_kind: str  # "SHA-256" (an LFS file) or "git blob SHA-1" (a small file kept in git)
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


def _cache_paths(repo: str, filename: str, checksum: str, commit: str) -> tuple[Path, Path, Path]:
    """The repo's cache folder, the blob and the snapshot link; `checksum` and `commit` are
    checked hex strings, `filename` is checked here to stay inside the snapshot folder (as
    huggingface_hub's `_get_pointer_path` does)."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    root = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type="model")
    snapshot = root / "snapshots" / commit
    pointer = snapshot / _checked_filename(repo, filename)
    if Path(os.path.abspath(snapshot)) not in Path(os.path.abspath(pointer)).parents:  # not resolve(): a link
        raise BackboneError(f"{repo}/{filename}: the file name leaves the snapshot folder; refused")
    return root, root / "blobs" / checksum, pointer


def _checked_filename(repo: str, filename: str) -> str:
    """A file name of a Hub repo: '/'-separated plain parts (no '..', no absolute path, no
    backslash or NUL), or a BackboneError before anything touches the disk."""
    parts = filename.split("/") if isinstance(filename, str) else [""]
    if any(p in ("", ".", "..") or "\\" in p or "\0" in p for p in parts) or ":" in parts[0]:
        raise BackboneError(f"{repo}: file name {filename!r} is not a plain path inside the repository; refused")
    return os.path.join(*parts)


def _checked_metadata(repo: str, filename: str, meta: Any) -> tuple[str, str, str]:
    """(checksum, its kind, commit) from the HEAD answer, each checked (hex, right length)."""
    checksum = (meta.etag or "").strip('"').lower()
    if len(checksum) not in CHECKSUM_KINDS or any(c not in "0123456789abcdef" for c in checksum):
        raise BackboneError(f"{repo}/{filename}: the Hub gives no checksum for this file "
                            f"(etag {str(meta.etag)[:80]!r}); refusing a download that cannot be verified")
    commit = meta.commit_hash or ""
    if not COMMIT_ID.fullmatch(commit):
        raise BackboneError(f"{repo}/{filename}: the server's X-Repo-Commit {commit[:80]!r} is not a commit id "
                            f"(40 hex digits); nothing was written")
    return checksum, CHECKSUM_KINDS[len(checksum)], commit


def _same_or_hub_host(url: str, target: str) -> bool:
    """huggingface_hub's rule for keeping the token on a redirect (same origin or a Hub origin)."""
    try:
        from huggingface_hub.utils._http import _is_same_or_hub_host

        return bool(_is_same_or_hub_host(url, target))
    except ImportError:  # another huggingface_hub: the same origin only
        from urllib.parse import urlsplit

        a, b = urlsplit(url), urlsplit(target)
        return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port)


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


def registry_size_limit(k: Any) -> int:
    """The most bytes a Get accepts for a registry model's weights file."""
    return int(k.size_mb * 1e6 * SIZE_MARGIN) + 100_000


def hub_token() -> Optional[str]:
    """The user's Hub token, if one is set: HF_TOKEN, or the one `hf auth login` stored."""
    from huggingface_hub import get_token

    return get_token() or None


def needs_token(name: str) -> bool:
    """A gated suggested model with no Hub token set (the app and the CLI ask for one)."""
    from .weights import known

    k = known(name)
    return bool(k is not None and k.gated and not hub_token())


def get_weights(name: str, progress: Optional[Progress] = None, revision: str = "main",
                token: Optional[str] = None) -> GetResult:
    """Download a suggested model's weights (see the module docstring); resumable, verified.
    `token`: a Hub access token for a gated repo (else HF_TOKEN or the stored one)."""
    from .weights import add_weights, added, known

    k = known(name)
    if k is None:
        raise BackboneError(f"{name!r} is not a suggested backbone", remedy=Remedy.SUGGESTED_BACKBONES, own=True)
    if k.source != "hf":
        raise BackboneError(f"{name} needs no download: its weights are installed with LOFF Studio ({k.repo})")
    token = (token or "").strip() or None
    if k.gated:
        token = token or hub_token()
        if not token:
            raise BackboneError(f"{name}: {k.repo} is gated on the Hugging Face Hub: accept its licence on "
                                f"{endpoint()}/{k.repo} and give a Hub access token", remedy=Remedy.HUB_TOKEN,
                                name=name, repo=k.repo)
    progress = progress or Progress()
    with _online():
        path, size, checksum, kind, fetched, resumed = _download(k.repo, k.filename, revision, progress, name,
                                                                 registry_size_limit(k), token)
        for extra in k.extra_files():
            try:
                _download(k.repo, extra, revision, Progress(), name, EXTRA_FILE_MAX, token)
            except BackboneError:
                pass  # optional files: the conversion infers what they would say
    result = GetResult(name, path, size, checksum, kind, fetched, resumed)
    if k.layout != "timm":  # e.g. RAD-DINO in transformers' layout: converted once, into the weights folder
        entry = added(name)
        sha256 = checksum if kind == "SHA-256" else sha256_file(path)
        if entry is None or entry.source_sha256 != sha256:
            # the model's own preprocessor_config.json (image_mean / image_std / crop_size, read
            # by the conversion, which checks crop_size against the declared input size range)
            # wins over the registry's copy, which is only the fallback
            own = _json_file(path.parent / "preprocessor_config.json")
            has_norm = bool(own.get("image_mean") and own.get("image_std"))
            add_weights(path.parent, name, licence=k.licence, registry_name=name,
                        mean=None if has_norm else k.mean, std=None if has_norm else k.std,
                        native_size=None if k.layout == "hf-dinov2" and own.get("crop_size") else k.native_size,
                        replace=True)
        result.added = name
    return result


def _json_file(path: Path) -> dict:
    try:
        small = path.is_file() and path.stat().st_size <= EXTRA_FILE_MAX
        data = json.loads(path.read_text(encoding="utf-8")) if small else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _origin(url: str) -> tuple[str, str, int]:
    from urllib.parse import urlparse

    u = urlparse(url)
    return u.scheme, (u.hostname or "").lower(), u.port or {"http": 80, "https": 443}.get(u.scheme, 0)


def _headers_for(target: str, token: Optional[str]) -> dict[str, str]:
    """huggingface_hub's headers for a request to `target`; the token only if `target` is the
    Hub's own host (a file redirected to a CDN is fetched there without it)."""
    from huggingface_hub.utils import build_hf_headers

    headers = build_hf_headers(token=token)
    if _origin(target) != _origin(endpoint()):
        headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
    headers["Accept-Encoding"] = "identity"
    return headers


def _file_metadata(repo: str, filename: str, revision: str, name: str, token: Optional[str]) -> tuple[str, Any]:
    """(the file's resolve URL, the Hub's metadata of it: size, checksum, commit, location),
    after the file name and revision are checked as plain path parts."""
    import httpx2 as httpx
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    _checked_filename(repo, filename)
    _checked_filename(repo, revision)  # written as refs/<revision>
    url = hf_hub_url(repo, filename, revision=revision, endpoint=endpoint())
    try:
        return url, get_hf_file_metadata(url, token=token, endpoint=endpoint())
    except GatedRepoError:
        raise BackboneError(f"{repo}: the Hub refused the download (gated): accept the licence on "
                            f"{endpoint()}/{repo} with the account whose token was given", remedy=Remedy.HUB_TOKEN,
                            name=name, repo=repo) from None
    except (RepositoryNotFoundError, EntryNotFoundError) as exc:
        raise BackboneError(f"{repo}/{filename}: not found on the Hub ({type(exc).__name__})") from None
    except HfHubHTTPError as exc:
        raise BackboneError(f"{repo}/{filename}: the Hub answered {str(exc).splitlines()[0][:200]}") from None
    except (httpx.TransportError, OSError) as exc:
        raise _no_network(exc, name, url) from None


def _download(repo: str, filename: str, revision: str, progress: Progress, name: str,
              limit: int, token: Optional[str] = None) -> tuple[Path, int, str, str, int, int]:
    """One file into the cache: (snapshot path, size, checksum, its kind, bytes fetched now,
    bytes already in a partial file). `limit`: the most bytes accepted for this file;
    `token`: sent to the Hub's own host only."""
    from urllib.parse import urljoin

    import httpx2 as httpx
    from huggingface_hub import get_session

    url, meta = _file_metadata(repo, filename, revision, name, token)
    checksum, kind, commit = _checked_metadata(repo, filename, meta)
    size = meta.size
    if size is not None and size > limit:
        raise BackboneError(f"{repo}/{filename}: the Hub advertises {size / 1e6:.1f} MB, more than the "
                            f"{limit / 1e6:.1f} MB the registry allows for {name}; refused before downloading")
    cap = limit if size is None else size  # never read more than this
    root, blob, pointer = _cache_paths(repo, filename, checksum, commit)
    if blob.is_file() and blob.stat().st_size == size:
        _link(root, blob, pointer, commit, revision)
        progress.report(size or 0, size or 0, "already downloaded")
        return pointer, int(size or 0), checksum, kind, 0, 0
    blob.parent.mkdir(parents=True, exist_ok=True)
    part = blob.with_name(blob.name + PARTIAL)
    resumed = part.stat().st_size if part.is_file() else 0
    if resumed > cap:
        part.unlink()
        resumed = 0
    done = resumed
    fetched = 0
    if size is None or done < size:
        target = urljoin(url, meta.location or url)
        headers = _headers_for(target, token)
        if done:
            headers["Range"] = f"bytes={done}-"
        if not _same_or_hub_host(url, target):  # a CDN: the token stays with the Hub
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        answered = False
        try:
            with get_session().stream("GET", target, headers=headers, follow_redirects=True,
                                      timeout=30) as response:
                answered = True
                if response.status_code == 416 and size is not None and done >= size:
                    pass
                elif response.status_code not in (200, 206):
                    raise BackboneError(f"{repo}/{filename}: the Hub answered HTTP {response.status_code}")
                else:
                    mode = "ab"
                    if done and response.status_code == 200:  # the server ignored Range: start over
                        done, mode = 0, "wb"
                    with open(part, mode) as fh:
                        # each network read as it arrives (no 1 MB buffering): what arrived
                        # before a drop is on disk, and memory stays at one read
                        for block in response.iter_bytes():
                            if done + len(block) > cap:  # more than advertised: stop reading at the size
                                block = block[:cap - done]
                            fh.write(block)
                            done += len(block)
                            fetched += len(block)
                            progress.report(done, size or 0, f"{done / 1e6:.1f} of {(size or 0) / 1e6:.1f} MB")
                            if progress.cancelled or progress.stop_requested:
                                raise Cancelled()
                            if done >= cap:
                                break
            if size is None and done >= cap:
                part.unlink(missing_ok=True)
                raise BackboneError(f"{repo}/{filename}: the server sent more than the {cap / 1e6:.1f} MB the registry "
                                    f"allows for {name} (and no size); deleted")
        except (httpx.TransportError, OSError) as exc:
            if isinstance(exc, OSError) and not isinstance(exc, (ConnectionError, TimeoutError)):
                raise
            kept = part.stat().st_size if part.is_file() else 0
            if kept or answered:
                of = f" of {size / 1e6:.1f} MB" if size else ""
                raise BackboneError(f"{repo}/{filename}: the download broke off after {kept / 1e6:.1f} MB{of} "
                                    f"({type(exc).__name__}); the partial file is kept: Get again resumes from "
                                    f"there") from None
            raise _no_network(exc, name, url) from None
    if size is not None and part.stat().st_size < size:
        raise BackboneError(f"{repo}/{filename}: the download stopped at {part.stat().st_size} of {size} bytes; "
                            f"the partial file is kept: Get again resumes")
    digest = sha256_file(part, lambda done, total: progress.report(done, total, "checking SHA-256")) \
        if kind == "SHA-256" else _git_blob_sha1(part, progress)
    if digest != checksum or (size is not None and part.stat().st_size != size):
        part.unlink()
        raise BackboneError(f"{repo}/{filename}: the downloaded file is corrupt ({kind} {digest[:16]}... but the Hub "
                            f"says {checksum[:16]}...); it was deleted and is not used: Get again")
    os.replace(part, blob)
    _link(root, blob, pointer, commit, revision)
    return pointer, blob.stat().st_size, checksum, kind, fetched, resumed


def _git_blob_sha1(path: Path, progress: Optional[Progress] = None) -> str:
    """The git blob SHA-1 (what the Hub gives as ETag of a file kept in git), read in chunks."""
    total, done = path.stat().st_size, 0
    digest = hashlib.sha1(f"blob {total}\0".encode(), usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
            done += len(block)
            if progress is not None:
                progress.report(done, total, "checking the git blob SHA-1")
    return digest.hexdigest()


def describe_get(name: str) -> dict[str, Any]:
    """What a Get would fetch (shown before it starts): size, licence, source."""
    from .weights import known, present_file

    k = known(name)
    if k is None:
        raise BackboneError(f"{name!r} is not a suggested backbone", remedy=Remedy.SUGGESTED_BACKBONES)
    return {"name": k.name, "size_mb": k.size_mb, "licence": k.licence, "source": f"{k.source}:{k.repo}",
            "file": k.filename, "present": present_file(k) is not None, "gated": k.gated,
            "licence_url": k.licence_url, "page": f"{endpoint()}/{k.repo}", "trained_on": k.trained_on,
            "token_set": bool(k.gated and hub_token()),
            "partial_mb": round(p.stat().st_size / 1e6, 1) if (p := partial_file(name)) else 0.0}
