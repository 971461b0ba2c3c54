"""Which U-Net level feeds which Mllama cross-attention layer.

Named strategies (all ASSUMPTIONS: the paper publishes no map), for k fused levels and n cross-attention
layers ``X`` (sorted):

- ``shallow_early``: levels in order 1→4 take consecutive, near-equal chunks of ``X``; the shallowest
  level feeds the earliest layers. With more levels than layers, several levels share a layer.
- ``deep_early``: the same with the level order reversed (deepest level → earliest layers).
- ``all``: every level feeds every cross-attention layer.
- ``single``: every level feeds the first cross-attention layer only.
- explicit ``"1:3,2:8+13"``: level → text-layer indices, each of which must be a cross-attention layer.

``fusion.map`` is parsed here (:func:`parse_layer_map`) and resolved against a preset's cross-attention
layers by :func:`resolve_layer_map`; the config calls both.
"""

from __future__ import annotations

from typing import Any

from mdf_search.fields import short_repr

LEVELS = (1, 2, 3, 4)  # the U-Net encoder levels, finest first
LAYER_MAP_STRATEGIES = ("shallow_early", "deep_early", "all", "single")


def parse_layer_map(value: Any) -> str:
    """``fusion.map``: a strategy name, or an explicit map ``"1:3,2:8+13"`` (level:layer[+layer]), as a
    normalised string. Raises ValueError with the reason; the layers are checked against a preset by
    :func:`resolve_layer_map`."""
    text = str(value).strip().lower().replace(" ", "")
    if text not in LAYER_MAP_STRATEGIES:
        parse_explicit_map(text)
    return text


def parse_explicit_map(text: str) -> dict[int, tuple[int, ...]]:
    """``"1:3,2:8+13"`` → ``{1: (3,), 2: (8, 13)}``."""
    mapping: dict[int, tuple[int, ...]] = {}
    for part in filter(None, text.split(",")):
        level_text, sep, layers_text = part.partition(":")
        if not sep:
            raise ValueError(
                f"must be one of {list(LAYER_MAP_STRATEGIES)} or an explicit map like '1:3,2:8+13', "
                f"but got {short_repr(text)}"
            )
        try:
            level = int(level_text)
            layers = tuple(sorted({int(x) for x in layers_text.split("+") if x}))
        except ValueError:
            raise ValueError(
                f"explicit map entries are level:layer[+layer], but got {short_repr(part)}"
            ) from None
        if level not in LEVELS or not layers:
            raise ValueError(
                f"explicit map entry {short_repr(part)} needs a level in 1..4 and at least one layer"
            )
        mapping[level] = layers
    if not mapping:
        raise ValueError("an explicit layer map cannot be empty")
    return mapping


def _chunks(layers: tuple[int, ...], k: int) -> list[tuple[int, ...]]:
    n = len(layers)
    if k <= n:
        bounds = [round(i * n / k) for i in range(k + 1)]
        return [layers[bounds[i] : bounds[i + 1]] for i in range(k)]
    return [(layers[i * n // k],) for i in range(k)]


def resolve_layer_map(
    spec: str, levels: tuple[int, ...], cross_attention_layers: tuple[int, ...]
) -> dict[int, tuple[int, ...]]:
    """Level → tuple of text-layer indices. Raises ValueError naming the allowed layers."""
    xattn = tuple(sorted(cross_attention_layers))
    if not levels:
        return {}
    if spec == "shallow_early":
        return dict(zip(levels, _chunks(xattn, len(levels)), strict=True))
    if spec == "deep_early":
        return dict(zip(reversed(levels), _chunks(xattn, len(levels)), strict=True))
    if spec == "all":
        return {level: xattn for level in levels}
    if spec == "single":
        return {level: xattn[:1] for level in levels}
    if spec in LAYER_MAP_STRATEGIES:  # pragma: no cover - guarded by the tuple above
        raise AssertionError(spec)
    mapping = parse_explicit_map(spec)
    problems = []
    missing = sorted(set(levels) - set(mapping))
    extra = sorted(set(mapping) - set(levels))
    if missing:
        problems.append(f"levels {missing} are fused but have no layers in the map")
    if extra:
        problems.append(f"the map names levels {extra} that are not in fusion.levels")
    bad = sorted({layer for layers in mapping.values() for layer in layers} - set(xattn))
    if bad:
        problems.append(
            f"text layers {bad} are not cross-attention layers of this preset; choose among {list(xattn)}"
        )
    if problems:
        raise ValueError("; ".join(problems))
    return {level: mapping[level] for level in levels}


def layers_to_levels(layer_map: dict[int, tuple[int, ...]]) -> dict[int, tuple[int, ...]]:
    """Invert a level → layers map into layer → levels (levels in ascending order)."""
    out: dict[int, list[int]] = {}
    for level, layers in sorted(layer_map.items()):
        for layer in layers:
            out.setdefault(layer, []).append(level)
    return {layer: tuple(levels) for layer, levels in sorted(out.items())}
