"""Station settings of model updates (``updates:`` in station.yaml; docs/updates.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class UpdatesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    trusted_keys: list[Path] = Field(
        default_factory=list, max_length=64,
        description="Ed25519 public keys (signing.pub) whose signed bundles this station loads; when set, an "
        "unsigned or otherwise signed bundle is never loaded, at start or by update. Empty: remote updates off")
    listen: bool = Field(True, description="take update offers over MQTT (needs mqtt and trusted_keys)")
    max_bundle_mb: float = Field(4096.0, gt=0, le=1_000_000, description="largest bundle an offer may announce")
    min_free_mb: float = Field(256.0, ge=0, le=1_000_000,
                               description="free disk to keep in storage.state_dir after the download")
    precisions: list[Literal["fp32", "fp16", "int8"]] | None = Field(
        None, description="precisions this station runs (None: any)")
    gpu_arch: str | None = Field(None, pattern=r"^sm_\d{2,3}$",
                                 description="this station's GPU, e.g. sm_87: bundles with engines must target "
                                 "it (None: read from the GPU when the backend is tensorrt)")
    require_selftest: bool = Field(True, description="refuse an update whose bundle carries no golden self-test")
    request_window: int = Field(8, ge=1, le=256, description="chunks requested at a time")
    request_timeout_s: float = Field(5.0, gt=0, le=600, description="re-request chunks not received this long")
    stall_timeout_s: float = Field(1800.0, gt=0, le=86400 * 7,
                                   description="give a transfer up (rejected) after this long without a chunk")
    switch_timeout_s: float = Field(120.0, gt=0, le=3600,
                                    description="wait at most this long for in-flight parts before a switch")
    on_restart: Literal["resume", "discard"] = Field(
        "resume", description="a transfer found in staging at start: resume it, or discard it")
