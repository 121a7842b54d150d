"""A Hugging Face Hub stand-in on 127.0.0.1 for tests, speaking the HTTP that the real ``huggingface_hub`` client uses.

- Download (``hf_hub_download``): ``HEAD``/``GET /{repo}/resolve/{revision}/{path}`` with ``X-Repo-Commit`` and
  ``ETag``. ``*.safetensors`` are served the way the Hub serves LFS files: a redirect to another host (``localhost``
  standing in for the CDN) carrying ``X-Linked-Etag`` (the sha256) and ``X-Linked-Size``.
- Upload (``create_repo``, ``upload_folder``, ``create_commit``, ``create_tag``): ``/api/repos/create``,
  ``/api/{models,spaces}/{repo}/preupload``, ``…/commit`` (NDJSON), ``…/tag``. Preupload answers ``regular`` for
  every file, so contents arrive base64 in the commit; the Hub would move large files through Xet storage, not
  emulated here. ``list_repo_files``: ``GET /api/{models,spaces}/{repo}/tree/{revision}`` (one page).
  A repo's type and SDK are kept (``created``), not acted on: no Space is built or run.

Repos live in memory as commits; ``tamper`` corrupts what is served while keeping the advertised hashes, as a
man-in-the-middle or a corrupted CDN object would. Errors carry the Hub's ``X-Error-Code`` so the client raises its
own typed errors.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
API = re.compile(r"^/api/(?:models|spaces)/(?P<repo>[^/]+/[^/]+)/(?P<op>preupload|commit|tag)/(?P<rev>[^/]+)$")
TREE = re.compile(r"^/api/(?:models|spaces)/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)$")
LFS_SUFFIXES = (".safetensors",)


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubServer:
    """``with HubServer() as hub:`` serves on ``hub.url`` until the block ends; ``stop()`` takes it down earlier."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, Any]] = {}  # repo_id -> {"refs": {name: oid}, "commits": {oid: files}}
        self.tampered: dict[str, bytes] = {}  # sha256 of a file -> the bytes served instead
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request received
        self.created: dict[str, dict[str, Any]] = {}  # repo_id -> the create_repo payload (type, sdk, private…)
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HubServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- state ----------------------------------------------------------------------------------------------------

    def create_repo(self, repo_id: str) -> bool:
        """True if it was created, False if it existed."""
        with self._lock:
            if repo_id in self.repos:
                return False
            self.repos[repo_id] = {"refs": {}, "commits": {}}
            return True

    def commit(self, repo_id: str, files: dict[str, bytes], branch: str = "main", message: str = "",
               deleted: tuple[str, ...] = ()) -> str:
        """Add or replace ``files`` on ``branch`` (created, with the repo, if needed); returns the commit id."""
        self.create_repo(repo_id)
        with self._lock:
            repo = self.repos[repo_id]
            parent = repo["refs"].get(branch)
            tree = {**(repo["commits"][parent] if parent else {}), **files}
            for path in deleted:
                tree.pop(path, None)
            oid = hashlib.sha1(f"{parent}\n{message}\n{len(repo['commits'])}".encode()
                               + b"".join(hashlib.sha256(tree[p]).digest() for p in sorted(tree))).hexdigest()
            repo["commits"][oid] = tree
            repo["refs"][branch] = oid
            return oid

    def tag(self, repo_id: str, tag: str, revision: str = "main") -> bool:
        """True if the tag was created, False if it existed."""
        with self._lock:
            repo = self.repos[repo_id]
            if tag in repo["refs"]:
                return False
            repo["refs"][tag] = repo["refs"].get(revision, revision)
            return True

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        found = self._lookup(repo_id, revision)
        return dict(found[1]) if found else {}

    def tamper(self, data: bytes, served: bytes) -> None:
        """Serve ``served`` wherever ``data`` would be served, with ``data``'s hashes and size still advertised."""
        self.tampered[hashlib.sha256(data).hexdigest()] = served

    def _lookup(self, repo_id: str, revision: str) -> tuple[str, dict[str, bytes]] | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            return None
        oid = repo["refs"].get(revision, revision)
        return (oid, repo["commits"][oid]) if oid in repo["commits"] else None


class _Handler(BaseHTTPRequestHandler):
    # One request per connection, so that ``stop()`` leaves no kept-alive connection still being served.
    protocol_version = "HTTP/1.0"
    server: ThreadingHTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        pass

    @property
    def hub(self) -> HubServer:
        return self.server.hub  # type: ignore[attr-defined]

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              head: bool = False, content_type: str = "application/octet-stream") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None, head: bool = False) -> None:
        self._send(status, json.dumps(payload).encode(), headers, head, "application/json")

    def _error(self, status: int, code: str, message: str, head: bool = False,
               headers: dict[str, str] | None = None) -> None:
        self._json(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message, **(headers or {})},
                   head)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    # --- download -------------------------------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self._download(head=True)

    def do_GET(self) -> None:
        self._download(head=False)

    def _download(self, head: bool) -> None:
        path = urlsplit(self.path).path
        self.hub.requests.append((self.command, path))
        if path.startswith("/cdn/"):
            sha = path.removeprefix("/cdn/")
            blob = next((data for files in (c for r in self.hub.repos.values() for c in r["commits"].values())
                         for data in files.values() if hashlib.sha256(data).hexdigest() == sha), None)
            if blob is None:
                return self._send(404, head=head)
            return self._send(200, self.hub.tampered.get(sha, blob), head=head)
        m = TREE.match(path)
        if m:
            return self._tree(unquote(m["repo"]), unquote(m["rev"]), head)
        m = RESOLVE.match(path)
        if not m:
            return self._error(404, "NotFound", f"no route for {path}", head)
        repo_id, revision, name = unquote(m["repo"]), unquote(m["rev"]), unquote(m["path"])
        if repo_id not in self.hub.repos:
            return self._error(401, "RepoNotFound", "Repository not found", head)
        found = self.hub._lookup(repo_id, revision)
        if found is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head)
        oid, files = found
        if name not in files:
            return self._error(404, "EntryNotFound", f"{name} does not exist on {revision}", head,
                               {"X-Repo-Commit": oid})
        data = files[name]
        if name.endswith(LFS_SUFFIXES):
            sha = hashlib.sha256(data).hexdigest()
            return self._send(302, head=head, headers={
                "Location": f"http://localhost:{self.hub.port}/cdn/{sha}", "X-Repo-Commit": oid,
                "ETag": f'"{git_blob_oid(data)}"', "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data))})
        served = self.hub.tampered.get(hashlib.sha256(data).hexdigest(), data)
        self._send(200, served, head=head, headers={"X-Repo-Commit": oid, "ETag": f'"{git_blob_oid(data)}"'})

    def _tree(self, repo_id: str, revision: str, head: bool) -> None:
        if repo_id not in self.hub.repos:
            return self._error(404, "RepoNotFound", "Repository not found", head)
        found = self.hub._lookup(repo_id, revision)
        if found is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head)
        self._json(200, [{"type": "file", "path": p, "size": len(data), "oid": git_blob_oid(data)}
                         for p, data in sorted(found[1].items())], head=head)

    # --- upload ---------------------------------------------------------------------------------------------------

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        self.hub.requests.append((self.command, path))
        body = self._body()
        if path == "/api/repos/create":
            payload = json.loads(body)
            repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") \
                else payload["name"]
            url = f"{self.hub.url}/{repo_id}"
            self.hub.created.setdefault(repo_id, payload)
            if not self.hub.create_repo(repo_id):  # the Hub's 409 carries the url too: the client reads it
                message = "You already created this model repo"
                return self._json(409, {"error": message, "url": url}, {"X-Error-Message": message})
            return self._json(200, {"url": url, "name": repo_id})
        if path == "/api/validate-yaml":
            return self._json(200, {})
        m = API.match(path)
        if not m:
            return self._error(404, "NotFound", f"no route for {path}")
        repo_id, op, revision = unquote(m["repo"]), m["op"], unquote(m["rev"])
        if repo_id not in self.hub.repos:
            return self._error(404, "RepoNotFound", "Repository not found")
        if op == "preupload":
            files = json.loads(body)["files"]
            return self._json(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                               "oid": None} for f in files]})
        if op == "tag":
            if self.hub._lookup(repo_id, revision) is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            if not self.hub.tag(repo_id, json.loads(body)["tag"], revision):
                return self._error(409, "TagExists", "Tag already exists")
            return self._json(200, {})
        return self._commit(repo_id, revision, body)

    def _commit(self, repo_id: str, revision: str, body: bytes) -> None:
        files: dict[str, bytes] = {}
        deleted: list[str] = []
        message = ""
        for line in body.splitlines():
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                message = value["summary"]
            elif key == "file" and value.get("encoding") == "base64":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                deleted.append(value["path"])
            else:
                return self._error(400, "BadRequest", f"unsupported commit operation {key}")
        oid = self.hub.commit(repo_id, files, branch=revision, message=message, deleted=tuple(deleted))
        self._json(200, {"commitUrl": f"{self.hub.url}/{repo_id}/commit/{oid}", "commitOid": oid,
                         "pullRequestUrl": None})
