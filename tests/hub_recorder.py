"""A stand-in for the Hugging Face hub on 127.0.0.1 that records what a client sends.

It answers the three calls an upload makes (create the repo, ask how to upload each file,
commit) the way the hub documents them, with every file "regular" (inline in the commit), and
keeps each request for the test to inspect. Nothing leaves the machine.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import yaml


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Hub:
    url: str
    requests: list[Recorded] = field(default_factory=list)

    def find(self, method: str, pattern: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and re.search(pattern, r.path)]


def _handler(hub: Hub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep pytest output clean
            pass

        def _reply(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            hub.requests.append(Recorded(self.command, self.path, dict(self.headers), body))
            if self.command == "POST" and self.path == "/api/repos/create":
                name = json.loads(body)
                repo = f"{name.get('organization') or 'user'}/{name['name']}"
                return self._reply(200, {"url": f"{hub.url}/{repo}", "name": repo})
            if self.command == "POST" and self.path == "/api/validate-yaml":
                text = json.loads(body)["content"]
                try:  # the hub checks the card's YAML header before a commit
                    yaml.safe_load(text.split("---")[1])
                except (IndexError, yaml.YAMLError) as err:
                    return self._reply(400, {"error": f"invalid YAML: {err}"})
                return self._reply(200, {"errors": [], "warnings": []})
            match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/(\w+)", self.path)
            if self.command == "POST" and match:
                files = json.loads(body)["files"]
                return self._reply(200, {"files": [
                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                    for f in files]})
            match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/(\w+)", self.path)
            if self.command == "POST" and match:
                return self._reply(200, {"commitUrl": f"{hub.url}/{match[1]}/commit/{'a' * 40}",
                                         "commitOid": "a" * 40, "pullRequestUrl": None})
            return self._reply(404, {"error": f"not served here: {self.command} {self.path}"})

        do_GET = do_POST = do_PUT = do_HEAD = _handle

    return Handler


@contextmanager
def recording_hub() -> Iterator[Hub]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(Hub("")))
    hub = Hub(f"http://127.0.0.1:{server.server_port}")
    server.RequestHandlerClass = _handler(hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
