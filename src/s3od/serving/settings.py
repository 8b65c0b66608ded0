"""Server settings: one pydantic model, filled from flags or ``S3OD_*`` environment variables.

Every limit has a default that keeps a small machine safe when the server faces the internet;
raise them deliberately, not by accident.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

ENV_PREFIX = "S3OD_"


class ServerSettings(BaseModel):
    """How ``s3od serve`` runs: which model, how it batches, and what it refuses."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = Field(None, description="Registry name, hub id or checkpoint path.")
    device: str | None = Field(None, description="cpu, cuda, cuda:1, mps; None = best.")
    image_size: int | None = Field(None, description="Network input side; None = the model's.")
    preprocess: str | None = Field(None, description="Preprocessing family of a foreign .onnx "
                                   "model (u2net, isnet-anime, birefnet ...); None = read from "
                                   "its graph.")
    threads: int | None = Field(None, ge=1, description="CPU threads per forward pass; None = "
                                "the CPUs this process may use (s3od.threads).")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Inference precision; auto = bf16/fp16 where the device is fast.")
    compile: bool = Field(False, description="torch.compile the model; every batch shape is "
                          "compiled at start-up (batches padded to powers of two).")

    max_batch: int = Field(1, ge=1, le=64, description="Images per forward pass.")
    batch_window_ms: float = Field(10.0, ge=0, le=10_000,
                                   description="How long the first image waits for company.")

    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1, description="Request body cap.")
    max_pixels: int = Field(4096 * 4096, ge=1,
                            description="Width x height cap, read from the header before decode.")
    request_timeout_s: float = Field(60.0, gt=0, description="Whole-request budget, from "
                                     "arrival (upload, queue, work) -> 504.")
    upload_timeout_s: float = Field(20.0, gt=0, description="Budget to receive the body -> 408; "
                                    "no inference slot is held meanwhile.")
    max_concurrency: int = Field(4, ge=1, description="Requests decoding/inferring at once.")
    max_queue: int = Field(64, ge=0, description="Requests waiting for a slot; more -> 503.")

    api_key: SecretStr | None = Field(None, description="Required on /v1/* when set.")
    cors_origins: tuple[str, ...] = Field((), description="Allowed browser origins; none = off.")

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _batch_fits_admission(self) -> ServerSettings:
        # Only max_concurrency requests reach the batcher at once, so a larger batch never fills.
        if self.max_batch > self.max_concurrency:
            raise ValueError(f"max_batch ({self.max_batch}) cannot exceed max_concurrency "
                             f"({self.max_concurrency}): raise --max-concurrency too")
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> ServerSettings:
        """Fields from ``S3OD_<FIELD>`` variables; explicit ``overrides`` (not None) win."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for name in cls.model_fields:
            key = ENV_PREFIX + name.upper()
            if key in env:
                values[name] = env[key]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)
