"""A stand-in for the Hugging Face Hub: just enough of its HTTP API for `push_to_hub`, `from_pretrained`,
`HfApi.upload_folder` and `hf_hub_download`, for model and dataset repos.

`HubStandIn` is a threaded stdlib HTTP server on 127.0.0.1 (a free port) that keeps model and dataset repos in memory
and answers what huggingface_hub 2.4 and transformers 5 ask for (``<kind>`` is ``models`` or ``datasets``):

* ``POST /api/repos/create`` (409 when the repo exists; ``"type": "dataset"`` makes a dataset repo) and
  ``POST /api/validate-yaml`` (model card check);
* ``GET /api/agent-harnesses``: an empty registry, so the client's user-agent detection finds no agent;
* ``POST /api/<kind>/<repo>/preupload/main``: every file is to be sent "regular", i.e. inline, never LFS;
* ``POST /api/<kind>/<repo>/commit/main``: ndjson with base64 ``file`` and ``deletedFile`` lines. Each commit gets a
  new 40-hex sha and ``main`` moves to it; older commits stay readable by sha;
* ``GET /api/<kind>/<repo>[/revision/<rev>]``: id, sha and file list (siblings) of main or of a revision;
* ``GET /api/<kind>/<repo>/tree/<rev>[/<folder>]``: the entries of a folder, or with ``recursive=true`` all files below;
* ``HEAD``/``GET /<repo>/resolve/<rev>/<path>`` (a model) or ``/datasets/<repo>/resolve/<rev>/<path>`` (a dataset)
  with the ``X-Repo-Commit`` and ``ETag`` headers the cache needs.

Model repos are kept in ``HubStandIn.repos`` under their id, dataset repos under ``datasets/<id>``; a model and a
dataset of the same id are two repos.

``<rev>`` is ``main`` or a commit sha. Missing repos, revisions and files get a 404 whose ``X-Error-Code`` the client
turns into RepositoryNotFoundError, RevisionNotFoundError or EntryNotFoundError.

Run it on its own to try publishing without a Hub account (docs/hub.md): ``python -m tests.hub_stand_in --port 8800``
serves until interrupted; point clients at it with ``HF_ENDPOINT=http://127.0.0.1:8800 HF_TOKEN=anything``.

Not implemented: LFS and Xet uploads, authentication (any token is accepted and every repo is public), branches other
than ``main``, tags, pull requests, space repos, paths-info, pagination and range requests.
"""

import argparse
import base64
import contextlib
import hashlib
import json
import re
import secrets
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

API = re.compile(r"/api/(?P<kind>models|datasets)/(?P<repo>[^/]+/[^/]+)"
                 r"(?:/(?P<action>\w+)/(?P<rev>[^/]+)(?:/(?P<folder>.+))?)?")
RESOLVE = re.compile(r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)")
DATASET_RESOLVE = re.compile(r"/datasets/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)")

Response = tuple[int, dict[str, str], bytes]


@dataclass
class Commit:
    sha: str
    files: dict[str, bytes]


class _Missing(LookupError):
    """A repo or revision that does not exist: args are the X-Error-Code and the message."""


def _json(payload, status: int = 200, **headers: str) -> Response:
    return status, {"Content-Type": "application/json", **headers}, json.dumps(payload).encode()


def _not_found(error_code: str, message: str, **headers: str) -> Response:
    return _json({"error": message}, 404, **{"X-Error-Code": error_code, "X-Error-Message": message}, **headers)


def repo_key(repo_id: str, repo_type: str = "model") -> str:
    """Where `HubStandIn.repos` keeps a repo: a model under its id, a dataset under ``datasets/<id>``."""
    if repo_type not in ("model", "dataset"):
        raise ValueError(f"repo_type must be 'model' or 'dataset', got {repo_type!r}")
    return f"datasets/{repo_id}" if repo_type == "dataset" else repo_id


def _blob_id(content: bytes) -> str:
    return hashlib.sha1(content).hexdigest()


class HubStandIn:
    """The server and its repos: ``with HubStandIn() as hub:`` serves at ``hub.url`` until the block ends."""

    def __init__(self, port: int = 0):
        self.repos: dict[str, list[Commit]] = {}  # repo key -> commits, oldest first; main is the last one
        self.requests: list[str] = []  # "METHOD /path", in arrival order
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self._server.daemon_threads = True
        self._server.hub = self
        self.url = f"http://127.0.0.1:{self._server.server_port}"

    def __enter__(self) -> "HubStandIn":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc_info):
        self._server.shutdown()
        self._server.server_close()

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """The files of `repo_id` (a ``model`` or ``dataset`` repo) at `revision` (``main`` or a commit sha)."""
        return self._commit(repo_key(repo_id, repo_type), revision).files

    def respond(self, method: str, target: str, body: bytes) -> Response:
        url = urlsplit(target)
        path = unquote(url.path)
        with self._lock:
            self.requests.append(f"{method} {path}")
            try:
                return self._route(method, path, parse_qs(url.query), body)
            except _Missing as missing:
                return _not_found(*missing.args)

    def _route(self, method: str, path: str, query: dict, body: bytes) -> Response:
        if method == "POST" and path == "/api/repos/create":
            return self._create(json.loads(body))
        if method == "POST" and path == "/api/validate-yaml":
            return _json({"errors": [], "warnings": []})
        if method == "GET" and path == "/api/agent-harnesses":
            return _json({"standardEnvVars": [], "harnesses": {}})
        if match := API.fullmatch(path):
            kind, repo_id, action, rev, folder = match.groups()
            repo = repo_key(repo_id, kind.removesuffix("s"))
            commit = self._commit(repo, rev or "main")
            if method == "GET" and action in (None, "revision") and folder is None:
                siblings = [{"rfilename": name} for name in sorted(commit.files)]
                return _json({"id": repo_id, "sha": commit.sha, "private": False, "siblings": siblings})
            if (method, action) == ("GET", "tree"):
                return self._tree(commit, folder, recursive=query.get("recursive") == ["true"])
            if (method, action, rev, folder) == ("POST", "preupload", "main", None):
                modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                         for f in json.loads(body)["files"]]
                return _json({"files": modes})
            if (method, action, rev, folder) == ("POST", "commit", "main", None):
                return self._new_commit(repo, commit, body)
        elif method in ("GET", "HEAD") and (match := DATASET_RESOLVE.fullmatch(path)):
            repo_id, rev, name = match.groups()
            return self._resolve(self._commit(repo_key(repo_id, "dataset"), rev), name)
        elif method in ("GET", "HEAD") and (match := RESOLVE.fullmatch(path)):
            repo, rev, name = match.groups()
            return self._resolve(self._commit(repo, rev), name)
        return _json({"error": f"{method} {path} is not served by the stand-in"}, 404)

    def _commit(self, repo: str, revision: str) -> Commit:
        if repo not in self.repos:
            raise _Missing("RepoNotFound", f"Repository {repo.removeprefix('datasets/')} not found")
        commits = self.repos[repo]
        if revision == "main":
            return commits[-1]
        for commit in commits:
            if commit.sha == revision:
                return commit
        raise _Missing("RevisionNotFound", f"Invalid rev id: {revision}")

    def _create(self, payload: dict) -> Response:
        repo_type = payload.get("type") or "model"
        if repo_type not in ("model", "dataset"):
            return _json({"error": f"{repo_type} repos are not supported by the stand-in"}, 400)
        repo = repo_key("/".join(filter(None, (payload.get("organization"), payload["name"]))), repo_type)
        url = {"url": f"{self.url}/{repo}"}
        if repo in self.repos:
            return _json({"error": f"You already created this {repo_type} repo", **url}, 409)
        self.repos[repo] = [Commit(secrets.token_hex(20), {})]
        return _json(url)

    def _new_commit(self, repo: str, parent: Commit, body: bytes) -> Response:
        files = dict(parent.files)
        for line in body.splitlines():
            item = json.loads(line)
            if item["key"] == "file":
                files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            elif item["key"] == "deletedFile":
                files.pop(item["value"]["path"], None)
            elif item["key"] != "header":
                return _json({"error": f"{item['key']} operations are not supported"}, 400)
        commit = Commit(secrets.token_hex(20), files)
        self.repos[repo].append(commit)
        return _json({"commitUrl": f"{self.url}/{repo}/commit/{commit.sha}", "commitOid": commit.sha})

    def _tree(self, commit: Commit, folder: str | None, recursive: bool) -> Response:
        prefix, entries = f"{folder}/" if folder else "", {}
        for name, content in sorted(commit.files.items()):
            if not name.startswith(prefix):
                continue
            child, below, _ = name.removeprefix(prefix).partition("/")
            if below and not recursive:
                entries[prefix + child] = {"type": "directory", "path": prefix + child, "oid": "0" * 40, "size": 0}
            else:
                entries[name] = {"type": "file", "path": name, "oid": _blob_id(content), "size": len(content)}
        if folder and not entries:
            return _not_found("EntryNotFound", f"{folder} does not exist", **{"X-Repo-Commit": commit.sha})
        return _json(list(entries.values()))

    def _resolve(self, commit: Commit, name: str) -> Response:
        if name not in commit.files:
            return _not_found("EntryNotFound", f"{name} does not exist", **{"X-Repo-Commit": commit.sha})
        content = commit.files[name]
        headers = {"Content-Type": "application/octet-stream", "X-Repo-Commit": commit.sha}
        return 200, {**headers, "ETag": f'"{_blob_id(content)}"'}, content


class _Handler(BaseHTTPRequestHandler):
    def do_HEAD(self):
        self._reply(self.server.hub.respond("HEAD", self.path, b""), send_body=False)

    def do_GET(self):
        self._reply(self.server.hub.respond("GET", self.path, b""))

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._reply(self.server.hub.respond("POST", self.path, body))

    def _reply(self, response: Response, send_body: bool = True):
        status, headers, body = response
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format, *args):
        """Stay quiet: `HubStandIn.requests` records the traffic."""


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="A local stand-in for the Hugging Face Hub (repos kept in memory).")
    parser.add_argument("--port", type=int, default=8800)
    port = parser.parse_args().port
    with HubStandIn(port) as hub:
        print(f"Hub stand-in at {hub.url}; use HF_ENDPOINT={hub.url} HF_TOKEN=anything. Ctrl-C stops it.", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
