"""Shared fixtures. Libraries that write outside the repo (Ray, DeepSpeed's extension cache, HF) are
pointed at directories the test session owns before anything imports them."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_SESSION_TMP = Path(tempfile.mkdtemp(prefix="mdf-tests-"))
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(_SESSION_TMP / "torch_extensions"))
os.environ.setdefault("HF_HOME", str(_SESSION_TMP / "hf"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_TMPDIR", str(_SESSION_TMP / "ray"))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
