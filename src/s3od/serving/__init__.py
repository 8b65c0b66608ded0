"""Serving: the FastAPI service (extra ``[server]``) and the Gradio demo (extra ``[demo]``).

Names are resolved lazily so ``import s3od.serving`` needs neither FastAPI nor Gradio; each
is imported only by the function that uses it.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "ServerSettings": "s3od.serving.settings",
    "create_app": "s3od.serving.app",
    "build_demo": "s3od.serving.demo",
    "launch_demo": "s3od.serving.demo",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 's3od.serving' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = list(_EXPORTS)
