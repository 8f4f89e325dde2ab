"""A Hub-shaped HTTP server on 127.0.0.1 for tests of `loff weights get` (no internet).

It answers what the real `huggingface_hub` client asks: HEAD and GET on
`/{org}/{name}/resolve/{revision}/{filename}` with `ETag`, `X-Repo-Commit`,
`X-Linked-Etag` (the LFS file's SHA-256), `X-Linked-Size` (files over 100 kB, "LFS"; smaller
ones get their git blob SHA-1 as `ETag`, as the Hub does), and `Range` requests (206 with
`Content-Range`). Knobs for failure stories: `cut_after` (drop the connection after so
many bytes of the next GET), `corrupt` (serve bytes that do not match the advertised
SHA-256), `delay` (seconds per chunk, so a test can press Stop mid-way), and for hostile
servers: `commit` (the `X-Repo-Commit` sent), `advertised_size` (the `X-Linked-Size`
sent, whatever the body), `git_etag` (an LFS-sized file announced by its git blob SHA-1
only, no `X-Linked-Etag`), `redirect_to` (answer HEAD and GET on a file with `302
Location: redirect_to + path`, the metadata on the redirect, as the Hub does for its CDN).
`seen` records each request's headers.
SHA-256), `delay` (seconds per chunk, so a test can press Stop mid-way). Gated repos
(`gated[repo] = token`): without `Authorization: Bearer <token>` the Hub's answer, 401 with
`X-Error-Code: GatedRepo`. `cdn_host` (e.g. "localhost"): an LFS file's resolve answers 302 to
`http://<cdn_host>:<port>/cdn/<sha256>` as the Hub redirects to its CDN; `hosts_seen` records
(host, path, Authorization header) of every request, so a test can see where a token went.
"""

from __future__ import annotations

import hashlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubServer:
    def __init__(self) -> None:
        self.files: dict[tuple[str, str], bytes] = {}
        self.cut_after: Optional[int] = None
        self.corrupt = False
        self.delay = 0.0
        self.commit = COMMIT
        self.advertised_size: Optional[int] = None
        self.git_etag = False
        self.redirect_to: Optional[str] = None
        self.seen: list[tuple[str, str, dict[str, str]]] = []  # (method, path, headers by lower-case name)
        self.requests: list[tuple[str, str, Optional[str]]] = []  # (method, path, Range header)
        self.gated: dict[str, str] = {}  # repo -> the token it needs
        self.cdn_host: Optional[str] = None
        self.hosts_seen: list[tuple[str, str, Optional[str]]] = []  # (Host header, path, Authorization header)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _find(self) -> Optional[tuple[str, bytes]]:
                parts = self.path.split("?")[0].strip("/").split("/")
                if len(parts) == 2 and parts[0] == "cdn":  # the CDN: a signed URL, no token needed
                    data = next((d for d in server.files.values() if hashlib.sha256(d).hexdigest() == parts[1]), None)
                    return ("cdn", data) if data is not None else None
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo, filename = "/".join(parts[:2]), "/".join(parts[4:])
                    data = server.files.get((repo, filename))
                    if data is not None:
                        return filename, data
                return None

            def _refused(self) -> bool:
                """A gated repo without its token, or an LFS file the Hub hands to its CDN (302)."""
                parts = self.path.split("?")[0].strip("/").split("/")
                repo = "/".join(parts[:2])
                if repo in server.gated and self.headers.get("Authorization") != f"Bearer {server.gated[repo]}":
                    self.send_response(401)
                    self.send_header("X-Error-Code", "GatedRepo")
                    self.send_header("X-Error-Message", "Access to this model is restricted.")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return True
                found = self._find() if server.cdn_host and len(parts) >= 5 else None
                if found is not None and len(found[1]) > 100_000:
                    sha = hashlib.sha256(found[1]).hexdigest()
                    self.send_response(302)
                    self.send_header("Location", f"http://{server.cdn_host}:{self.server.server_address[1]}/cdn/{sha}")
                    self.send_header("X-Linked-Etag", f'"{sha}"')
                    self.send_header("X-Linked-Size", str(len(found[1])))
                    self.send_header("ETag", f'"{sha}"')
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return True
                return False

            def _headers(self, data: bytes, status: int, start: int = 0) -> None:
                self.send_response(status)
                if status == 302:
                    self.send_header("Location", server.redirect_to + self.path)
                if len(data) > 100_000 and not server.git_etag:  # an LFS file: its SHA-256 in X-Linked-Etag
                    sha = hashlib.sha256(data).hexdigest()
                    self.send_header("ETag", f'"{sha}"')
                    self.send_header("X-Linked-Etag", f'"{sha}"')
                    self.send_header("X-Linked-Size", str(len(data) if server.advertised_size is None
                                                          else server.advertised_size))
                else:  # a small file kept in git: ETag is its git blob SHA-1
                    sha1 = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
                    self.send_header("ETag", f'"{sha1}"')
                self.send_header("X-Repo-Commit", server.commit)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", "0" if status == 302 else str(len(data) - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()

            def do_HEAD(self) -> None:  # noqa: N802
                server.requests.append(("HEAD", self.path, self.headers.get("Range")))
                server.seen.append(("HEAD", self.path, {k.lower(): v for k, v in self.headers.items()}))
                server.hosts_seen.append((self.headers.get("Host", ""), self.path, self.headers.get("Authorization")))
                if self._refused():
                    return
                found = self._find()
                if found is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self._headers(found[1], 302 if server.redirect_to else 200)

            def do_GET(self) -> None:  # noqa: N802
                rng = self.headers.get("Range")
                server.requests.append(("GET", self.path, rng))
                server.seen.append(("GET", self.path, {k.lower(): v for k, v in self.headers.items()}))
                server.hosts_seen.append((self.headers.get("Host", ""), self.path, self.headers.get("Authorization")))
                if self._refused():
                    return
                found = self._find()
                if found is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = found[1]
                if server.redirect_to:
                    self._headers(data, 302)
                    return
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                self._headers(data, 206 if start else 200, start)
                body = data[start:]
                if server.corrupt:
                    body = bytes([body[0] ^ 0xFF]) + body[1:]
                limit, server.cut_after = server.cut_after, None
                sent = 0
                for i in range(0, len(body), 1 << 16):
                    piece = body[i:i + (1 << 16)]
                    if limit is not None and sent + len(piece) > limit:
                        self.wfile.write(piece[:max(0, limit - sent)])
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    try:
                        self.wfile.write(piece)
                    except (BrokenPipeError, ConnectionResetError):
                        return
                    sent += len(piece)
                    if server.delay:
                        time.sleep(server.delay)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "HubServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
