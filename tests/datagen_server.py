"""A real HTTP server on 127.0.0.1 that speaks the chat-completions route, for LLM tests.

``ChatServer(responder)`` answers ``POST /v1/chat/completions`` with ``responder(request_json)``
(a string becomes the assistant message). ``script`` holds status codes to return first (e.g.
``[429, 500]``) before normal answers; every request body is kept in ``requests``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ChatServer:
    def __init__(self, responder: Callable[[dict[str, Any]], str]) -> None:
        self.responder = responder
        self.script: list[int] = []
        self.requests: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.requests.append(body)
                    status = server.script.pop(0) if server.script else 200
                    server.statuses.append(status)
                if self.path.rstrip("/") != "/v1/chat/completions":
                    status = 404
                if status != 200:
                    payload = {"error": {"message": f"scripted {status}", "type": "test"}}
                    self._send(status, payload, {"Retry-After": "0"} if status == 429 else {})
                    return
                text = server.responder(body)
                self._send(200, {
                    "id": "chatcmpl-test", "object": "chat.completion", "created": 0,
                    "model": body.get("model", "test"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

            def _send(self, status: int, payload: dict,
                      headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> ChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def text_of(request: dict[str, Any]) -> str:
    """All text parts of a chat request, joined."""
    out = []
    for m in request["messages"]:
        content = m["content"]
        if isinstance(content, str):
            out.append(content)
        else:
            out += [p.get("text", "") for p in content if p.get("type") == "text"]
    return "\n".join(out)


def images_of(request: dict[str, Any]) -> list[str]:
    """The image URLs of a chat request."""
    return [p["image_url"]["url"] for m in request["messages"] if not isinstance(m["content"], str)
            for p in m["content"] if p.get("type") == "image_url"]
