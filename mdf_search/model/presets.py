"""Model presets: the Mllama architecture at four sizes, plus the U-Net that goes with each.

``tiny`` trains in seconds on a CPU (tests, the smoke sweep); ``small`` (tens of millions of parameters) is
the CPU benchmark; ``1b`` is about a billion parameters of the same architecture with random weights, for
GPU benchmarks; ``11b`` is LLaMA 3.2 11B Vision exactly (weights from a local directory).

Every preset tiles the vision input as the 11B does: ``max_num_tiles=4`` and Mllama's default
``supported_aspect_ratios``, so CPU tests run the 11B's layout (the vision tower always computes four
tiles, padding ones included: 4x the vision cost of a one-tile config). The tiny vision tower is kept
small (32 wide, 2 + 1 layers) so that this stays cheap.

U-Net widths and input sizes are ASSUMPTIONS (the paper does not publish its U-Net). The U-Net always
sees a higher resolution than the vision tower: at ``tiny`` a 16 px tower patch covers 2x2 px of the
U-Net's finest level per 1 px, so signs of 1-3 px (microaneurysms) live mostly in U-Net features.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# MllamaVisionConfig's default supported_aspect_ratios ((rows, columns) of tiles), valid with max_num_tiles=4.
MLLAMA_ASPECT_RATIOS: tuple[tuple[int, int], ...] = ((1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2), (3, 1), (4, 1))  # fmt: skip
MAX_NUM_TILES = 4


@dataclass(frozen=True)
class Preset:
    name: str
    text: dict[str, Any]
    vision: dict[str, Any]
    unet_channels: tuple[int, int, int, int]
    unet_bottleneck: int
    unet_size: int
    pretrained_only: bool = False  # 11b: real weights and tokenizer come from a local directory
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cross_attention_layers(self) -> tuple[int, ...]:
        return tuple(self.text["cross_attention_layers"])

    @property
    def hidden_size(self) -> int:
        return int(self.text["hidden_size"])

    @property
    def vision_size(self) -> int:
        return int(self.vision["image_size"])

    @property
    def max_num_tiles(self) -> int:
        return int(self.vision.get("max_num_tiles", MAX_NUM_TILES))  # MllamaVisionConfig's default

    @property
    def vocab_size(self) -> int:
        return int(self.text["vocab_size"])


def _vision(
    hidden: int, layers: int, global_layers: int, heads: int, image: int, patch: int, inter: int
) -> dict[str, Any]:
    indices = [max(0, layers * k // 4 - 1) for k in (1, 2, 3, 4)][: min(4, layers)]
    indices = sorted(set(indices))
    return {
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_global_layers": global_layers,
        "attention_heads": heads,
        "image_size": image,
        "patch_size": patch,
        "max_num_tiles": MAX_NUM_TILES,
        "supported_aspect_ratios": [list(r) for r in MLLAMA_ASPECT_RATIOS],
        "intermediate_layers_indices": indices,
        "vision_output_dim": hidden * (1 + len(indices)),
    }


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        text={
            "vocab_size": 512,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "cross_attention_layers": [1, 3],
            "max_position_embeddings": 512,
        },
        vision={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_global_layers": 1,
            "attention_heads": 4,
            "image_size": 64,
            "patch_size": 16,
            "max_num_tiles": MAX_NUM_TILES,
            "supported_aspect_ratios": [list(r) for r in MLLAMA_ASPECT_RATIOS],
            "intermediate_layers_indices": [0, 1],
            "vision_output_dim": 96,
        },
        unet_channels=(8, 16, 32, 64),
        unet_bottleneck=128,
        unet_size=128,
        notes="CPU tests and the smoke sweep; vision 64 px / 16 px patches, U-Net 128 px",
    ),
    "small": Preset(
        name="small",
        text={
            "vocab_size": 4096,
            "hidden_size": 512,
            "intermediate_size": 1536,
            "num_hidden_layers": 8,
            "num_attention_heads": 8,
            "num_key_value_heads": 4,
            "cross_attention_layers": [1, 4, 7],
            "max_position_embeddings": 1024,
        },
        vision=_vision(hidden=256, layers=6, global_layers=2, heads=8, image=112, patch=14, inter=1024),
        unet_channels=(16, 32, 64, 128),
        unet_bottleneck=256,
        unet_size=224,
        notes="CPU benchmark; vision 112 px / 14 px patches, U-Net 224 px",
    ),
    "1b": Preset(
        name="1b",
        text={
            "vocab_size": 32000,
            "hidden_size": 2048,
            "intermediate_size": 8192,
            "num_hidden_layers": 16,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "cross_attention_layers": [3, 7, 11, 15],
            "max_position_embeddings": 2048,
        },
        vision=_vision(hidden=768, layers=12, global_layers=4, heads=12, image=224, patch=14, inter=3072),
        unet_channels=(32, 64, 128, 256),
        unet_bottleneck=512,
        unet_size=448,
        notes="GPU benchmark, random init; vision 224 px / 14 px patches, U-Net 448 px",
    ),
    "11b": Preset(
        name="11b",
        text={
            "vocab_size": 128256,
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_hidden_layers": 40,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "cross_attention_layers": [3, 8, 13, 18, 23, 28, 33, 38],
            "rope_theta": 500000.0,
            "max_position_embeddings": 131072,
        },
        vision={
            "hidden_size": 1280,
            "intermediate_size": 5120,
            "num_hidden_layers": 32,
            "num_global_layers": 8,
            "attention_heads": 16,
            "image_size": 560,
            "patch_size": 14,
            "max_num_tiles": MAX_NUM_TILES,
            "supported_aspect_ratios": [list(r) for r in MLLAMA_ASPECT_RATIOS],
            "intermediate_layers_indices": [3, 7, 15, 23, 30],
            "vision_output_dim": 7680,
        },
        unet_channels=(64, 128, 256, 512),
        unet_bottleneck=1024,
        unet_size=560,
        pretrained_only=True,
        notes="LLaMA 3.2 11B Vision from a local directory (model.weights); U-Net 560 px",
        extra={"image_token_index": 128256},
    ),
}


def require_weights(preset: Preset, weights: str | None) -> None:
    """Refuse a real build of a pretrained-only preset (11b) without its checkpoint directory.

    Called where a trial's model is built for real (``train/builders.py``); a meta-device build (summaries,
    the memory planner, ``validate --deep``) needs no weights and does not call it.
    """
    if preset.pretrained_only and not weights:
        raise ValueError(
            f"model.weights: the {preset.name} preset loads LLaMA 3.2 11B Vision from a local directory; set "
            "model.weights to it (use preset tiny/small/1b for random init)"
        )


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}") from None
