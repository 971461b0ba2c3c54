"""Frozen-feature reuse: a frozen vision tower (and projector) or a frozen U-Net runs once per image, not
on every batch of every epoch of every trial.

When it applies (:func:`reuse_plan`, read off the built model's ``requires_grad``, as the optimiser does):

- **vision**: the vision tower is frozen. With the projector frozen too (``mllm``, ``mllm_except_xattn``,
  ``lora``) the cache holds ``cross_attention_states``; with ``vision_tower`` the tower's output, and the
  projector runs live. Every tile is stored, padding tiles too: they are not inert (docs/stack-facts.md).
- **unet**: the U-Net is frozen (``freeze=unet``), FiLM is off (it makes the features text-dependent) and
  the decoder does not run; the cache holds the fused levels' skip features (``pool``: pooled by the
  projector's own ``pool_tokens``, which maps a grid-sized map to itself exactly).
- "Frozen" also means train mode computes what eval mode does: a module with dropout ``p > 0`` or batch
  statistics is never cached (Mllama's tower has neither; the U-Net uses GroupNorm).
- Augmentation disables reuse for the inputs it touches (both towers see the augmented image): an
  augmenting training collator keeps pixels and only evaluation reuses. The trial reports
  ``features_reused``: ``vision``, ``unet`` or ``none``, ``@eval`` when only evaluation reuses.
- ``MDF_SEARCH_FEATURE_REUSE=0`` turns it off; a build that would not fit the free disk is skipped with a
  warning (the 11b's projected states: 4 tiles x 1601 patches x 4096 x bf16 = 52 MB per image).

A row is what the pixel path computes for the image, up to the kernels' dependence on batch composition
(rows are built :data:`BUILD_BATCH` at a time): on the CPU in fp32 the vision path gives the same bits at
any batch, so losses and metrics are identical (tested); oneDNN's convolutions do not promise that (the
small preset's U-Net features move in the last bits, as the pixel path's do between two batches).

The key (the directory's name) hashes the frozen weights (names, dtypes, shapes, bytes: random-init
presets key by seed), the image cache's content (``data/cache.images_digest``), the preprocessing (tile
layout, ``data.vision_tiles``, CLIP statistics, U-Net size, :data:`FEATURES_VERSION`), the stored form,
the dtype and the device type: any change misses. It lives beside the data cache (``<root>/features/``):
one memmapped ``.npy`` per batch key, a row per manifest row plus a last row for an example without an
image, ``meta.json`` last, committed by renaming a temporary directory (``atomic.commit_dir``): of two
trials building one key at once, one commits and the other discards its copy.

Under ZeRO-3 every parameter is partitioned after ``deepspeed.initialize`` (where training's dtype is
set, so features are computed after it): the frozen weights are gathered once
(``deepspeed.zero.GatheredParameters``, all ranks) and copied to the CPU on rank 0, which hashes them
and, on a miss, builds with plain unpartitioned copies while the other ranks wait; then all ranks open it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from copy import deepcopy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

from mdf_search.atomic import commit_dir, temp_sibling
from mdf_search.data.batches import CLIP_MEAN, CLIP_STD, Collator, unit_images
from mdf_search.data.cache import Cache, images_digest
from mdf_search.model.fusion import pool_tokens
from mdf_search.model.mdf import CACHED_TOWER, CACHED_VISION, MDFModel, cached_level_key
from mdf_search.model.unet import UNet

log = logging.getLogger(__name__)

FEATURES_VERSION = 1  # bump when a stored row's meaning changes (this builder, the collator's preprocessing)
ENV_SWITCH = "MDF_SEARCH_FEATURE_REUSE"  # "0" / "off": never reuse
BUILD_BATCH = 8
_STORED = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.int16}  # bf16: its bits


def _frozen(module: nn.Module) -> bool:
    """No parameter trains, and train mode computes what eval mode does (no dropout, no batch statistics)."""
    if any(p.requires_grad for p in module.parameters()):
        return False
    return not any(
        (isinstance(m, _DropoutNd) and m.p > 0) or isinstance(m, _BatchNorm) for m in module.modules()
    )


@dataclass(frozen=True)
class ReusePlan:
    vision: str | None  # "projected" (tower + projector frozen) | "tower" (the projector trains) | None
    unet: bool  # the fused levels' U-Net features

    @property
    def kinds(self) -> tuple[str, ...]:
        return (("vision",) if self.vision else ()) + (("unet",) if self.unet else ())


def reuse_plan(model: MDFModel) -> ReusePlan:
    """Which inputs of this (built, frozen-as-configured) model can come from a feature cache."""
    inner: Any = model.mllama.model
    vision = None
    if _frozen(inner.vision_model):
        vision = "projected" if _frozen(inner.multi_modal_projector) else "tower"
    unet = (
        model.unet is not None
        and model.fusion is not None
        and model.film is None
        and not model.decode_unet
        and _frozen(model.unet)
    )
    return ReusePlan(vision, unet)


# ---------------------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------------------
def weights_hash(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def feature_key(kind: str, weights: str, images: str, preprocessing: Mapping[str, Any]) -> str:
    """The cache directory name: ``<kind>-<hash of everything the rows depend on>``."""
    payload = {
        "kind": kind,
        "weights": weights,
        "images": images,
        "preprocessing": dict(preprocessing),
        "version": FEATURES_VERSION,
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:24]}"


def preprocessing(
    kind: str, plan: ReusePlan, model: MDFModel, collator: Collator, *, dtype: torch.dtype, device: str
) -> dict[str, Any]:
    """Everything besides weights and pixels that a stored row depends on."""
    common = {"dtype": str(dtype), "device": device}
    if kind == "vision":
        return {
            **common,
            "stage": plan.vision,
            "layout": asdict(collator.layout),
            "vision_tiles": collator.vision_tiles,
            "clip": [CLIP_MEAN, CLIP_STD],
        }
    arch = model.arch.fusion
    return {
        **common,
        "unet_size": collator.unet_size,
        "levels": list(arch.levels),
        "projection": arch.projection,
        "grid": arch.grid if arch.projection == "pool" else None,
    }


# ---------------------------------------------------------------------------------------------------
# The frozen modules, whole and on the CPU (ZeRO-3: gathered), and plain copies that compute the rows
# ---------------------------------------------------------------------------------------------------
def _frozen_modules(kind: str, plan: ReusePlan, model: MDFModel) -> dict[str, nn.Module]:
    inner: Any = model.mllama.model
    if kind == "unet":
        assert model.unet is not None
        return {"unet": model.unet}
    modules = {"tower": inner.vision_model}
    if plan.vision == "projected":
        modules["projector"] = inner.multi_modal_projector
    return modules


@contextlib.contextmanager
def _whole(modules: Sequence[nn.Module]) -> Iterator[None]:
    """The modules' full parameters on every rank inside the block (a collective under ZeRO-3)."""
    params = [p for m in modules for p in m.parameters()]
    if not any(hasattr(p, "ds_id") for p in params):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _plain_copy(name: str, module: Any, state: dict[str, torch.Tensor]) -> nn.Module:
    """An unpartitioned module of the same architecture holding ``state`` (its dtype included); built on
    the meta device, so nothing is initialised only to be overwritten."""
    with torch.device("meta"):
        if name == "tower":  # MllamaVisionModel
            copy: nn.Module = type(module)._from_config(deepcopy(module.config))
        elif name == "projector":
            copy = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
        else:
            copy = UNet(module.channels, module.bottleneck_channels)
    copy.load_state_dict(state, assign=True)
    if any(t.is_meta for t in [*copy.parameters(), *copy.buffers()]):
        raise RuntimeError(f"{name}: a tensor is not in its state dict; cannot copy it for feature caching")
    return copy.eval()


def _stored(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy()
    return tensor.numpy()


@torch.no_grad()
def _rows(
    kind: str,
    plan: ReusePlan,
    model: MDFModel,
    copies: Mapping[str, nn.Module],
    collator: Collator,
    images: torch.Tensor,
    has_image: torch.Tensor,
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    """Batch key → ``(B, ...)`` rows for these images, computed as the model's pixel path computes them
    (the collator's inputs, cast to the trial's dtype as ``train/evaluate.to_device`` casts a batch)."""
    if kind == "vision":
        inputs = collator.vision_inputs(images, has_image)
        vision = copies["tower"](
            pixel_values=inputs["pixel_values"].to(device, dtype),
            aspect_ratio_ids=inputs["aspect_ratio_ids"].to(device),
            aspect_ratio_mask=inputs["aspect_ratio_mask"].to(device),
        ).last_hidden_state[:, 0]  # (B, tiles, patches, vision_output_dim): one image per example
        if plan.vision == "projected":
            return {CACHED_VISION: copies["projector"](vision)}
        return {CACHED_TOWER: vision}
    arch = model.arch.fusion
    skips = copies["unet"](collator.unet_inputs(images).to(device, dtype), None, decode=False).skips
    out = {}
    for level in arch.levels:
        skip = skips[level - 1]
        if arch.projection == "pool":  # the projector's own pooling, laid out as a (C, grid, grid) map
            tokens = pool_tokens(skip, arch.grid)
            skip = tokens.transpose(1, 2).reshape(*skip.shape[:2], arch.grid, arch.grid)
        out[cached_level_key(level)] = skip
    return out


def build_features(
    final: Path,
    kind: str,
    plan: ReusePlan,
    model: MDFModel,
    copies: Mapping[str, nn.Module],
    collator: Collator,
    cache: Cache,
    *,
    device: torch.device,
    dtype: torch.dtype,
    meta: Mapping[str, Any],
) -> Path:
    """Compute every row (cache rows, then the placeholder) into ``final``, committed atomically."""
    for copy in copies.values():
        copy.to(device)
    n = len(cache)
    tmp = temp_sibling(final)
    tmp.mkdir(parents=True)
    try:
        arrays: dict[str, np.ndarray] = {}
        for start in range(0, n + 1, BUILD_BATCH):
            rows = range(start, min(n + 1, start + BUILD_BATCH))
            images = unit_images([cache.images[r] if r < n else None for r in rows], cache.size)
            has_image = torch.tensor([r < n for r in rows])
            for key, value in _rows(
                kind, plan, model, copies, collator, images, has_image, device, dtype
            ).items():
                if key not in arrays:
                    arrays[key] = np.lib.format.open_memmap(
                        tmp / f"{key}.npy",
                        mode="w+",
                        dtype=_STORED[value.dtype],
                        shape=(n + 1, *value.shape[1:]),
                    )
                arrays[key][start : start + len(rows)] = _stored(value)
        for array in arrays.values():
            array.flush()  # type: ignore[attr-defined]
        arrays.clear()
        info = {**meta, "key": final.name, "rows": n + 1, "dtype": str(dtype).removeprefix("torch.")}
        (tmp / "meta.json").write_text(json.dumps(info, indent=1, default=str))  # last: the cache is complete
        if commit_dir(tmp, final):
            log.info("built %s feature cache %s (%d rows)", kind, final, n + 1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# ---------------------------------------------------------------------------------------------------
# Reading: what the collator adds to a batch
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FeatureArrays:
    path: Path
    arrays: dict[str, np.ndarray]  # batch key → (N + 1, ...) memmap; row N: the no-image placeholder
    dtype: torch.dtype

    def rows(self, rows: Sequence[int]) -> dict[str, torch.Tensor]:
        out = {}
        for key, array in self.arrays.items():
            tensor = torch.from_numpy(np.ascontiguousarray(array[list(rows)]))
            out[key] = tensor.view(torch.bfloat16) if self.dtype == torch.bfloat16 else tensor
        return out


def open_features(path: Path, rows: int) -> FeatureArrays:
    meta = json.loads((path / "meta.json").read_text())
    if meta["rows"] != rows:
        raise RuntimeError(f"{path}: {meta['rows']} feature rows, but the data cache needs {rows}")
    dtype = getattr(torch, meta["dtype"])
    arrays = {key: np.load(path / f"{key}.npy", mmap_mode="r") for key in meta["arrays"]}
    return FeatureArrays(path, arrays, dtype)


@dataclass(frozen=True)
class ReusedFeatures:
    """A :class:`~mdf_search.data.batches.FeatureSource`: the rows of the opened caches by manifest row."""

    vision: FeatureArrays | None
    unet: FeatureArrays | None

    @property
    def covers_vision(self) -> bool:
        return self.vision is not None

    @property
    def covers_unet(self) -> bool:
        return self.unet is not None

    def rows(
        self, indices: Sequence[int], vision_image: Sequence[bool], unet_image: Sequence[bool]
    ) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for source, present in ((self.vision, vision_image), (self.unet, unet_image)):
            if source is not None:
                placeholder = len(next(iter(source.arrays.values()))) - 1
                out.update(
                    source.rows([i if p else placeholder for i, p in zip(indices, present, strict=True)])
                )
        return out


# ---------------------------------------------------------------------------------------------------
# The trial's entry point
# ---------------------------------------------------------------------------------------------------
def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _share(value: str) -> str:
    """Rank 0's ``value`` on every rank (waits for rank 0)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return str(box[0])


def _free_enough(root: Path, cache: Cache, example: Mapping[str, torch.Tensor]) -> bool:
    need = (len(cache) + 1) * sum(t[0].numel() * t.element_size() for t in example.values())
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    if free < 1.2 * need:
        log.warning(
            "feature cache needs %.1f GB but %s has %.1f GB free: no reuse", need / 1e9, root, free / 1e9
        )
        return False
    return True


def ensure_features(
    kind: str,
    plan: ReusePlan,
    model: MDFModel,
    collator: Collator,
    cache: Cache,
    root: Path,
    *,
    device: torch.device,
    dtype: torch.dtype,
) -> FeatureArrays | None:
    """Find or build (rank 0) the cache of one kind; every rank of the trial calls it. None: no reuse."""
    modules = _frozen_modules(kind, plan, model)
    rank = _rank()
    states: dict[str, dict[str, torch.Tensor]] = {}
    with _whole(list(modules.values())):  # every rank: a collective under ZeRO-3
        if rank == 0:
            states = {name: _cpu_state(module) for name, module in modules.items()}
    key = ""
    if rank == 0:
        weights = hashlib.sha256(
            "".join(weights_hash(states[n]) for n in sorted(states)).encode()
        ).hexdigest()
        prep = preprocessing(kind, plan, model, collator, dtype=dtype, device=device.type)
        images = images_digest(cache)
        key = feature_key(kind, weights, images, prep)
        final = root / key
        if not (final / "meta.json").is_file():
            copies = {name: _plain_copy(name, modules[name], state) for name, state in states.items()}
            placeholder = unit_images([None], cache.size), torch.tensor([False])
            devices = {name: copy.to(device) for name, copy in copies.items()}
            probe = _rows(kind, plan, model, devices, collator, *placeholder, device, dtype)
            if not _free_enough(root, cache, probe):
                key = ""
            else:
                meta = {"kind": kind, "weights": weights, "images": images, "preprocessing": prep}
                meta["arrays"] = sorted(probe)
                build_features(
                    final, kind, plan, model, copies, collator, cache, device=device, dtype=dtype, meta=meta
                )
    key = _share(key)
    return open_features(root / key, len(cache) + 1) if key else None


def attach_features(
    model: MDFModel,
    collate: Mapping[bool, Collator],
    cache: Cache,
    root: Path,
    *,
    device: torch.device,
    dtype: torch.dtype,
) -> str:
    """Decide, find or build, and give the features to every collator that does not augment.

    ``collate``: the trial's collators (True: training, False: evaluation; the evaluation one's
    preprocessing is what the features are computed with). Returns the trial's ``features_reused``.
    """
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "off", "false", "no"):
        return "none"
    plan = reuse_plan(model)
    # Building draws no random numbers, but the trial's RNG streams must not depend on whether it ran.
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        found = {
            kind: ensure_features(kind, plan, model, collate[False], cache, root, device=device, dtype=dtype)
            for kind in plan.kinds
        }
    kinds = [kind for kind, arrays in found.items() if arrays is not None]
    if not kinds:
        return "none"
    features = ReusedFeatures(found.get("vision"), found.get("unet"))
    for collator in collate.values():
        if not collator.augment:
            collator.use_features(features)
    return "+".join(kinds) + ("@eval" if any(c.augment for c in collate.values()) else "")
