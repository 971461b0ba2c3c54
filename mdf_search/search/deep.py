"""``mdf-search validate --deep``: every arm's model, at full preset size, through one training step's
forward, loss and backward, on a batch laid out by the real Collator, without weights and in seconds.

``validate`` checks values; this checks that the pieces fit together at the sizes a study will run
(the vision tiling against the vision config, the fused U-Net tokens against the cross-attention
layers, FiLM against the text width, the heads against the tasks), before a sweep holds GPUs for hours.

- The model is the trial's ``MDFModel`` built by ``model.summary.build_on_meta`` from the trial's
  architecture, its backbone a randomly initialised ``MllamaForConditionalGeneration`` of the preset's
  full config (no checkpoint is read: the 11B's 10.7 B parameters are never allocated), in the trial's
  precision.
- It runs under ``FakeTensorMode`` (tensors with shapes, dtypes and devices but no storage): every op
  checks its shapes as it would on real tensors. The plain meta device is cheaper but fails in
  transformers' ``masking_utils`` on ``Tensor.item()`` whenever an attention mask is given, which the
  Collator always gives (docs/stack-facts.md); ``mode="auto"`` tries it first and falls back, ``mode="meta"`` uses
  it alone. The result says which ran.
- The batch comes from :class:`~mdf_search.data.batches.Collator` at the preset's resolution (a
  synthetic fundus at the cache size a trial would use, the trial's ``data.vision_tiles``,
  ``data.image``, ``data.text`` and ``data.max_text_tokens``, ``optim.micro_batch`` examples) and a
  byte-level BPE tokenizer trained on the spot with the preset's vocabulary size (there is no 11B
  tokenizer here; the ids only need the right layout).
- On failure the report names the arm, the phase, the innermost module that was running (forward hooks
  keep a stack of the modules entered and not yet left), that module's tensor inputs and the batch's
  shapes. Arms with the same model and batch (they differ only in, e.g., the learning rate) run once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from mdf_search.config import ConfigError, TrialConfig
from mdf_search.data.batches import Collator, prompt_text
from mdf_search.data.cache import cache_size_for
from mdf_search.model.arch import ArchConfig
from mdf_search.model.mdf import mdf_loss, task_classes
from mdf_search.model.mllama import IMAGE, label_token_ids, train_tokenizer
from mdf_search.model.presets import get_preset
from mdf_search.model.summary import SUMMARY_DISEASES, build_on_meta
from mdf_search.search.designs import arms, trial_params
from mdf_search.search.space import SpecError, load_spec

MODES = ("fake", "meta", "auto")
SAMPLE_TEXT = "Night blindness since childhood, constricted fields; father affected. RHO variant."


@dataclass(frozen=True)
class DeepResult:
    """One arm's deep check. ``mode`` is what ran: ``fake tensors`` or ``meta device``."""

    arm: str
    ok: bool
    mode: str = ""
    seconds: float = 0.0
    phase: str = ""  # where it failed: config | collate | build | forward | loss | backward
    module: str = ""  # the innermost module running when it failed, ``name (Class)``
    inputs: str = ""  # that module's tensor inputs
    batch: str = ""  # the batch the Collator made
    error: str = ""
    meta_error: str = ""  # mode="auto": why the meta device did not do
    same_as: str = ""  # an arm with the same model and batch, checked instead

    def lines(self) -> list[str]:
        if self.same_as:
            return [f"  ok    {self.arm}: same model and batch as {self.same_as}"]
        if self.ok:
            fallback = f" (meta device: {self.meta_error})" if self.meta_error else ""
            return [f"  ok    {self.arm}: {self.mode}, {self.seconds:.1f} s{fallback}"]
        where = f" in {self.module}" if self.module else ""
        out = [f"  FAIL  {self.arm}: {self.phase}{where} ({self.mode or 'not run'}): {self.error}"]
        if self.inputs:
            out.append(f"        module inputs: {self.inputs}")
        if self.batch:
            out.append(f"        batch: {self.batch}")
        return out


def _shapes(values: Mapping[str, Any]) -> str:
    parts = []
    for key, value in values.items():
        if isinstance(value, torch.Tensor):
            parts.append(f"{key} {tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}")
        elif isinstance(value, list | tuple) and value and all(isinstance(v, torch.Tensor) for v in value):
            parts.append(f"{key} [{', '.join(str(tuple(v.shape)) for v in value[:4])}]")
    return ", ".join(parts)


class ModuleTracker:
    """Forward hooks on every module of ``model``: the stack of modules entered and not yet left.

    When an exception escapes a forward, the modules it passed through never run their post-hooks, so the
    top of the stack is the innermost module that was running.
    """

    def __init__(self, model: nn.Module) -> None:
        self.names = {id(m): name or "(model)" for name, m in model.named_modules()}
        self.stack: list[tuple[nn.Module, tuple[Any, ...], dict[str, Any]]] = []
        self._handles = []
        for module in model.modules():
            self._handles.append(module.register_forward_pre_hook(self._enter, with_kwargs=True))
            self._handles.append(module.register_forward_hook(self._leave))

    def _enter(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.stack.append((module, args, kwargs))

    def _leave(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] is module:
                del self.stack[i]
                return

    def innermost(self) -> tuple[str, str]:
        if not self.stack:
            return "", ""
        module, args, kwargs = self.stack[-1]
        name = f"{self.names.get(id(module), '?')} ({type(module).__name__})"
        return name, _shapes({**{f"arg{i}": a for i, a in enumerate(args)}, **kwargs})

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


@functools.lru_cache(maxsize=8)
def _tokenizer(vocab_size: int, extra: tuple[str, ...]) -> Any:
    tokenizer = train_tokenizer([prompt_text(SAMPLE_TEXT), prompt_text("")], vocab_size, extra_tokens=extra)
    tokenizer.padding_side = "right"
    return tokenizer


def _classes(arch: ArchConfig) -> dict[str, tuple[str, ...]]:
    """The heads' classes of the meta build (:func:`build_on_meta`'s stand-in diseases)."""
    return task_classes(arch.head.task, SUMMARY_DISEASES)


def sample_batch(
    cfg: TrialConfig, *, batch_vision: Mapping[str, Any] | None = None
) -> dict[str, torch.Tensor]:
    """A batch as a trial's training loader makes it, from synthetic fundus images at the cache size.

    ``batch_vision`` overrides keys of the vision config the *Collator* lays the batch out for (not the
    model's), e.g. ``{"max_num_tiles": 1, "supported_aspect_ratios": [[1, 1]]}`` for the one-tile batch
    that cannot run on a four-tile backbone.
    """
    preset, data = get_preset(cfg.model.preset), cfg.data
    side = cache_size_for(preset.unet_size, preset.vision_size, data.vision_tiles)
    rng = np.random.default_rng(0)
    items = [
        {
            "index": i,
            "image": rng.integers(0, 256, (side, side, 3), dtype=np.uint8),
            "vision": data.image == "on",
            "mask": (rng.random((side, side)) > 0.9).astype(np.uint8) * 255,
            "has_mask": True,
            "text": "" if data.text == "off" or i % 2 else SAMPLE_TEXT,
            "disease": i % 2,
            "type": i % 2,
        }
        for i in range(cfg.optim.micro_batch)
    ]
    tokenizer = _tokenizer(preset.vocab_size, _extra_tokens(cfg.arch))
    collate = Collator(
        tokenizer,
        {**preset.vision, **(batch_vision or {})},
        preset.unet_size,
        data.max_text_tokens,
        augment=data.augment,
        vision_tiles=data.vision_tiles,
    )
    return collate(items)


def _extra_tokens(arch: ArchConfig) -> tuple[str, ...]:
    return tuple(sorted({name for names in _classes(arch).values() for name in names}))


def _build(arch: ArchConfig) -> nn.Module:
    """The trial's joint model on the meta device (in the current default dtype), with the image token
    and label-token ids of the check's tokenizer."""
    preset = get_preset(arch.model.preset)
    tokenizer = _tokenizer(preset.vocab_size, _extra_tokens(arch))
    image_index = None if preset.pretrained_only else tokenizer.convert_tokens_to_ids(IMAGE)
    label_ids = None
    if arch.head.kind == "label_token":
        label_ids = {name: label_token_ids(tokenizer, names) for name, names in _classes(arch).items()}
    return build_on_meta(arch, image_token_index=image_index, label_ids=label_ids)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Build in the trial's precision, as DeepSpeed's bf16 casts the whole model."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def _fake_parameters(model: nn.Module, mode: Any) -> None:
    """Replace every parameter and buffer of a meta-device model by a fake CPU tensor of ``mode`` with the
    same shape, dtype and ``requires_grad`` (shared tensors stay shared).

    Building on the meta device and then faking is faster than building under ``FakeTensorMode`` (no
    initialisation runs) and lets PEFT move its adapters with ``Module.to``, which fails on fake
    parameters (they cannot be swapped while the mode holds weak references to them).
    """
    cpu = torch.device("cpu")
    memo: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for name, tensor in list(store.items()):
                if tensor is None:
                    continue
                if id(tensor) not in memo:
                    fake = mode.fake_tensor_converter.from_meta_and_device(mode, tensor.detach(), cpu)
                    is_param = isinstance(tensor, nn.Parameter)
                    memo[id(tensor)] = nn.Parameter(fake, tensor.requires_grad) if is_param else fake
                store[name] = memo[id(tensor)]  # type: ignore[assignment]


def _step(cfg: TrialConfig, batch: dict[str, torch.Tensor], mode: str) -> None:
    """Build on the meta device, then forward, loss and backward under ``mode`` ("fake": fake CPU tensors;
    "meta": the meta device itself); a failure after the build raises :class:`_StepError` (its cause is
    the original exception)."""
    dtype = torch.bfloat16 if cfg.optim.precision == "bf16" else torch.float32
    with _default_dtype(dtype):
        model = _build(cfg.arch)
    model.train()
    context: Any = contextlib.nullcontext()
    if mode == "fake":
        context = FakeTensorMode(allow_non_fake_inputs=True)
        _fake_parameters(model, context)
    else:
        batch = {key: value.to("meta") for key, value in batch.items()}
    tracker = ModuleTracker(model)
    phase = "forward"
    try:
        with context:
            output = model(batch)
            phase = "loss"
            loss, _ = mdf_loss(output, batch, cfg.unet.aux_seg_weight)
            phase = "backward"
            loss.backward()
    except Exception as err:
        module, inputs = tracker.innermost() if phase == "forward" else ("", "")
        raise _StepError(phase, module, inputs) from err
    finally:
        tracker.close()


class _StepError(Exception):
    def __init__(self, phase: str, module: str, inputs: str) -> None:
        super().__init__(phase)
        self.phase, self.module, self.inputs = phase, module, inputs


def _meta_limit(err: BaseException) -> bool:
    """A failure of the meta device itself (data-dependent ops, missing meta kernels), not of the model."""
    text = f"{err} {err.__cause__ or ''}".lower()
    return "meta" in text and ("item()" in text or "data-dependent" in text or "backend" in text)


def check_config(
    cfg: TrialConfig, arm: str = "", *, mode: str = "fake", batch_vision: Mapping[str, Any] | None = None
) -> DeepResult:
    """One forward, loss and backward of the trial's model on a Collator batch (see the module docstring)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, but got {mode!r}")
    start = time.perf_counter()
    try:
        batch = sample_batch(cfg, batch_vision=batch_vision)
    except Exception as err:
        return DeepResult(arm, False, phase="collate", error=_message(err))
    dtype = torch.bfloat16 if cfg.optim.precision == "bf16" else torch.float32
    batch = {k: v.to(dtype) if v.is_floating_point() and k != "vessel_mask" else v for k, v in batch.items()}
    shapes = _shapes(batch)
    meta_error = ""
    for attempt in ("meta", "fake") if mode == "auto" else (mode,):
        ran = "fake tensors" if attempt == "fake" else "meta device"
        try:
            _step(cfg, batch, attempt)
        except _StepError as err:
            cause = err.__cause__ or err
            if mode == "auto" and attempt == "meta" and _meta_limit(cause):
                meta_error = _message(cause)
                continue
            return DeepResult(
                arm,
                False,
                ran,
                time.perf_counter() - start,
                phase=err.phase,
                module=err.module,
                inputs=err.inputs,
                batch=shapes,
                error=_message(cause),
                meta_error=meta_error,
            )
        except Exception as err:  # building the model
            return DeepResult(arm, False, ran, time.perf_counter() - start, "build", error=_message(err))
        return DeepResult(arm, True, ran, time.perf_counter() - start, batch=shapes, meta_error=meta_error)
    raise AssertionError("unreachable: the last attempt returns")


def _message(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:400]}"


def _same_model_key(cfg: TrialConfig) -> str:
    """What the check depends on: the architecture (less the weights path, never read), precision and the
    batch's layout."""
    arch = dataclasses.replace(cfg.arch, model=dataclasses.replace(cfg.model, weights=None))
    data = cfg.data
    batch = (data.vision_tiles, data.image, data.text, data.max_text_tokens, data.augment)
    return repr((arch, batch, cfg.optim.precision, cfg.optim.micro_batch))


def check_spec(
    spec: Any,
    *,
    mode: str = "fake",
    batch_vision: Mapping[str, Any] | None = None,
    emit: Callable[[DeepResult], None] | None = None,
    checked: dict[str, str] | None = None,
) -> list[DeepResult]:
    """Every arm of a loaded search spec (its trial params at the first seed and nuisance defaults).

    ``checked`` maps what a check depends on to the arm that passed it; pass one dict to several calls to
    run each distinct model and batch once across files.
    """
    results: list[DeepResult] = []
    checked = {} if checked is None else checked
    for arm in arms(spec):
        try:
            cfg = TrialConfig.from_flat(trial_params(spec, arm, spec.seeds[0]), source=str(spec.path))
        except ConfigError as err:
            result = DeepResult(arm.id, False, phase="config", error=str(err))
        else:
            key = _same_model_key(cfg)
            if key in checked:
                result = DeepResult(arm.id, True, same_as=checked[key])
            else:
                result = check_config(cfg, arm.id, mode=mode, batch_vision=batch_vision)
                if result.ok:
                    checked[key] = f"{arm.id} ({Path(spec.path).name})"
        results.append(result)
        if emit is not None:
            emit(result)
    return results


def check_files(
    paths: list[str] | list[Path],
    *,
    mode: str = "fake",
    batch_vision: Mapping[str, Any] | None = None,
    emit: Callable[[str], None] | None = None,
) -> tuple[int, list[str]]:
    """Exit code (0: every arm ran; 2: any failed) and report lines; ``emit`` gets each line as it comes."""
    code, lines = 0, []
    checked: dict[str, str] = {}

    def say(line: str) -> None:
        lines.append(line)
        if emit is not None:
            emit(line)

    for path in paths:
        try:
            spec = load_spec(path)
        except SpecError as err:
            code = 2
            say(f"{path}: deep check not run: {len(err.problems)} problem(s) in the file")
            continue
        say(f"{path}: deep check of every arm (one forward, loss and backward at full size)")

        def report(result: DeepResult) -> None:
            for line in result.lines():
                say(line)

        results = check_spec(spec, mode=mode, batch_vision=batch_vision, emit=report, checked=checked)
        failed = [r.arm for r in results if not r.ok]
        if failed:
            code = 2
            say(f"{path}: {len(failed)} of {len(results)} arm(s) FAILED the deep check: {', '.join(failed)}")
        else:
            seconds = sum(r.seconds for r in results)
            say(f"{path}: all {len(results)} arm(s) passed the deep check ({seconds:.1f} s)")
    return code, lines
