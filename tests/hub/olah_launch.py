"""Start olah (the maintained Hugging Face Hub mirror, `pip install olah`) as the tests' hub server.

Runs with olah's own virtual environment (make hub-server): olah needs huggingface_hub >= 1, the app pins 0.36.

    .venv-olah/bin/python tests/hub/olah_launch.py --config olah.toml --policy policy.json

olah serves the hub API (model and data set info, revisions, trees, paths-info) from the local git repositories
under its `mirrors-path`, with `offline = true`. This launcher adds, in front of it, what olah 0.5.4 gets wrong
for local mirrors and what the tests need from a hub:

- A file a local repository lacks answers 404 `EntryNotFound`, as huggingface.co does. olah falls back to its
  (offline) upstream and answers 401 `RepoNotFound`, which transformers takes for a missing repository when it
  probes optional files (adapter_config.json...). A GET of a missing file raised KeyError (500).
- File bodies honour `Range` (huggingface_hub resumes an interrupted download with it) and stream from disk;
  olah ignores Range and reads the whole file into memory. An LFS file's ETag is its sha256 oid, as on the hub,
  instead of olah hashing the whole file at every HEAD.
- Listing a folder the repository lacks (`/tree/<rev>/<path>`) answers 404 `EntryNotFound` (olah: 401), which
  transformers expects when it looks for `additional_chat_templates/`.
- Repository info without a revision (`/api/models/<id>`) is answered as `/revision/main`: offline, olah looks
  the latest commit up in its upstream cache only, and answers 401.
- The policy file (JSON, read at each request) makes repositories gated (401 or 403 `GatedRepo`, as the hub
  answers without a token or without access) or slow (bytes per second, so a test can stop the server in the
  middle of a download).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

import git
from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from olah import server

LFS_POINTER = re.compile(r"version https://git-lfs\.github\.com/spec/v1\noid sha256:([0-9a-f]{64})\nsize ([0-9]+)\n")
RESOLVE = re.compile(r"^/(?:(?P<type>datasets|spaces)/)?(?P<repo>[^/]+(?:/[^/]+)?)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
API = re.compile(r"^/api/(?P<type>models|datasets|spaces)/(?P<repo>[^/]+(?:/[^/]+)?)(?P<rest>/.*)?$")
CHUNK = 1 << 20


def policy(app) -> dict:
    path = app.state.policy_path
    try:
        return json.loads(Path(path).read_text()) if path else {}
    except (OSError, ValueError):
        return {}


def error(status: int, code: str, message: str) -> Response:
    return Response(json.dumps({"error": message}), status_code=status, media_type="application/json",
                    headers={"x-error-code": code, "x-error-message": message})


def mirror_folder(app, repo_type: str, repo_id: str) -> Path | None:
    for root in app.state.app_settings.config.mirrors_path:
        folder = Path(root, repo_type, *repo_id.split("/"))
        if (folder / ".git").exists():
            return folder
    return None


def gated(app, repo_type: str, repo_id: str) -> Response | None:
    status = policy(app).get("gated", {}).get(repo_id)
    if status is None:
        return None
    kind = {"models": "model", "datasets": "dataset", "spaces": "space"}[repo_type]
    if status == 403:
        return error(403, "GatedRepo", f"Access to {kind} {repo_id} is restricted and you are not in the authorized list. "
                                       f"Visit https://huggingface.co/{repo_id} to ask for access.")
    return error(401, "GatedRepo", f"Access to {kind} {repo_id} is restricted. You must have access to it and be "
                                   "authenticated to access it. Please log in.")


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", (header or "").strip())
    if not match:
        return None
    first, last = match.groups()
    if not first:  # bytes=-N: the last N
        return max(0, size - int(last or 0)), size - 1
    return int(first), min(int(last), size - 1) if last else size - 1


async def resolve_file(app, request: Request, repo_type: str, repo_id: str, rev: str, path: str) -> Response:
    folder = mirror_folder(app, repo_type, repo_id)
    repo = git.Repo(folder)
    try:
        commit = repo.commit(rev)
    except (git.BadName, ValueError):
        return error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
    try:
        blob = commit.tree[path]
    except KeyError:
        return error(404, "EntryNotFound", f"{path} does not exist on \"{rev}\"")
    if blob.type != "blob":
        return error(404, "EntryNotFound", f"{path} is a folder")
    data = blob.data_stream.read()
    headers = {"x-repo-commit": commit.hexsha, "accept-ranges": "bytes"}
    pointer = LFS_POINTER.fullmatch(data.decode("utf-8", "replace")) if len(data) < 200 else None
    if pointer is None:
        headers["etag"] = f'"{blob.hexsha}"'
        headers["content-length"] = str(len(data))
        return Response(b"" if request.method == "HEAD" else data, headers=headers,
                        media_type="application/octet-stream")
    oid, size = pointer.group(1), int(pointer.group(2))
    source = folder / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
    headers.update({"etag": f'"{oid}"', "x-linked-etag": f'"{oid}"', "x-linked-size": str(size)})
    span = byte_range(request.headers.get("range"), size)
    first, last = span if span else (0, size - 1)
    status = 206 if span else 200
    if span:
        headers["content-range"] = f"bytes {first}-{last}/{size}"
    headers["content-length"] = str(last - first + 1)
    if request.method == "HEAD":
        return Response(headers=headers, status_code=200)
    rate = policy(app).get("slow", {}).get(repo_id)

    async def body():
        with open(source, "rb") as handle:
            handle.seek(first)
            left = last - first + 1
            while left > 0:
                chunk = handle.read(min(CHUNK if rate is None else max(1, rate // 10), left))
                if not chunk:
                    return
                left -= len(chunk)
                yield chunk
                if rate is not None:
                    await asyncio.sleep(len(chunk) / rate)

    return StreamingResponse(body(), status_code=status, headers=headers, media_type="application/octet-stream")


def missing_path(app, repo_type: str, repo_id: str, rev: str, path: str) -> Response | None:
    """404 EntryNotFound when `path` is not in the repository at `rev` (olah answers 401 RepoNotFound)."""
    try:
        git.Repo(mirror_folder(app, repo_type, repo_id)).commit(rev).tree[path]
    except (KeyError, git.BadName, ValueError):
        return error(404, "EntryNotFound", f"{path} does not exist on \"{rev}\"")
    return None


async def hub_rules(request: Request, call_next):
    app = request.app
    path = request.url.path
    match = RESOLVE.match(path)
    if match and request.method in ("GET", "HEAD"):
        repo_type = match["type"] or "models"
        repo_id = match["repo"]
        if mirror_folder(app, repo_type, repo_id) is not None:
            return gated(app, repo_type, repo_id) or await resolve_file(
                app, request, repo_type, repo_id, match["rev"], match["path"])
    match = API.match(path)
    if match and mirror_folder(app, match["type"], match["repo"]) is not None:
        if response := gated(app, match["type"], match["repo"]):
            return response
        tree = re.fullmatch(r"/tree/([^/]+)/(.+?)/?", match["rest"] or "")
        if tree and (missing := missing_path(app, match["type"], match["repo"], *tree.groups())):
            return missing
        if not match["rest"]:
            # Offline, olah answers repository info only for a revision (its latest-commit lookup asks upstream).
            request.scope["path"] = f"{path}/revision/main"
    return await call_next(request)


def main() -> None:
    argv = sys.argv[1:]
    policy_path = None
    if "--policy" in argv:
        at = argv.index("--policy")
        policy_path = argv[at + 1]
        del argv[at:at + 2]
    sys.argv = [sys.argv[0], *argv]
    server.app.state.policy_path = policy_path
    server.app.middleware("http")(hub_rules)
    os.environ.setdefault("NO_COLOR", "1")
    server.main()


if __name__ == "__main__":
    main()
