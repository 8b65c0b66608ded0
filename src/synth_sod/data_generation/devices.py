"""Which GPU a data-generation process uses when several run on one node.

torchrun and ``srun`` start one process per GPU, and every process sees every GPU of its node
(unless the launcher narrowed ``CUDA_VISIBLE_DEVICES``). ``"cuda"`` means the *current* device,
``cuda:0`` in a fresh process, so without this each rank would load its models onto GPU 0.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

_LOCAL_RANK_VARIABLES = ("LOCAL_RANK", "SLURM_LOCALID")


def local_rank(env: Mapping[str, str] | None = None) -> int | None:
    """This process's index on its node under torchrun (``LOCAL_RANK``) or ``srun``
    (``SLURM_LOCALID``); None in a plain single process."""
    env = os.environ if env is None else env
    for name in _LOCAL_RANK_VARIABLES:
        value = (env.get(name) or "").strip()
        if value.isdigit():
            return int(value)
    return None


def rank_device(requested: str | torch.device | None,
                env: Mapping[str, str] | None = None) -> str | None:
    """The device this process should use for ``requested``.

    ``"cuda"`` (no index) or None, with CUDA available and a launcher's local rank set, become
    ``cuda:<local rank modulo the visible GPUs>``; an explicit index, another device type, or a
    plain single process keep ``requested`` (None still lets the loader pick).
    """
    text = None if requested is None else str(requested)
    if text not in (None, "cuda") or not torch.cuda.is_available():
        return text
    rank = local_rank(env)
    if rank is None:
        return text
    return f"cuda:{rank % max(1, torch.cuda.device_count())}"
