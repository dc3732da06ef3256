"""A loopback stand-in for the Hub endpoints snapshot_download uses (model info, tree, resolve), so
downloads, progress, cancellation and gated errors run huggingface_hub's real code without network;
and `cache_model`, a model placed in a Hugging Face cache folder in the cache's own layout."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cache_model(cache: Path, repo_id: str, files: dict[str, bytes], commit: str = "a" * 40) -> Path:
    """The cache's own layout: models--org--name/{blobs/<sha256>, refs/main, snapshots/<commit>/<file> -> blob}."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return repo


class FakeHub:
    def __init__(self, repos: dict[str, dict[str, bytes]], gated: set[str] = frozenset(), chunk: int = 64 * 1024,
                 delay: float = 0.0):
        self.repos, self.gated, self.chunk, self.delay = repos, set(gated), chunk, delay
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub._serve(self, head=True)

            def do_GET(self):
                hub._serve(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def oid(data: bytes) -> str:
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

    def _json(self, handler, status, body, headers=None):
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(data)

    def _serve(self, handler, head: bool):
        path = handler.path.split("?")[0]
        ranged = handler.headers.get("Range")
        self.requests.append(f"{handler.command} {path}" + (f" [{ranged}]" if ranged else ""))
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/[^/]+)?", path)
        if m and m.group(1) in self.repos:
            repo = m.group(1)
            return self._json(handler, 200, {"id": repo, "sha": COMMIT, "private": False,
                                             "gated": "manual" if repo in self.gated else False,
                                             "siblings": [{"rfilename": f} for f in self.repos[repo]]})
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/[^/]+(?:/.*)?", path)
        if m and m.group(1) in self.repos:
            files = self.repos[m.group(1)]
            return self._json(handler, 200, [{"type": "file", "oid": self.oid(d), "size": len(d), "path": f}
                                             for f, d in files.items()])
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/[^/]+/(.+)", path)
        if m and m.group(1) in self.repos and m.group(2) in self.repos[m.group(1)]:
            repo, name = m.groups()
            if repo in self.gated:
                return self._json(handler, 401, {"error": "gated"}, {
                    "X-Error-Code": "GatedRepo",
                    "X-Error-Message": f"Access to model {repo} is restricted. You must have access to it and be "
                                       "authenticated to access it. Please log in."})
            data = self.repos[repo][name]
            start = 0
            if ranged and not head:
                start = int(re.match(r"bytes=(\d+)-", ranged).group(1))
            handler.send_response(206 if start else 200)
            handler.send_header("X-Repo-Commit", COMMIT)
            handler.send_header("ETag", f'"{self.oid(data)}"')
            handler.send_header("Content-Length", str(len(data) - start))
            if start:
                handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            handler.end_headers()
            if head:
                return
            try:
                for offset in range(start, len(data), self.chunk):
                    handler.wfile.write(data[offset:offset + self.chunk])
                    handler.wfile.flush()
                    if self.delay:
                        time.sleep(self.delay)
            except (BrokenPipeError, ConnectionResetError):
                pass
            return
        return self._json(handler, 404, {"error": "not found"}, {"X-Error-Code": "RepoNotFound",
                                                                 "X-Error-Message": "Repository not found"})
