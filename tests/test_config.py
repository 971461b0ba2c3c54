"""TrialConfig: the one flat-dict → typed-config step, and its aggregated errors."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from mdf_search.config import ConfigError, OptimConfig, TrialConfig, flat_fields
from mdf_search.model.wiring import resolve_layer_map

PACKAGE = Path(__file__).resolve().parents[1] / "mdf_search"


def test_defaults_are_valid_and_round_trip() -> None:
    cfg = TrialConfig.from_flat({})
    assert TrialConfig.from_flat(cfg.to_flat()) == cfg
    assert cfg.fusion.levels == (1, 2, 3, 4)
    assert all(isinstance(v, str | int | float | bool | type(None)) for v in cfg.to_flat().values())


def test_flat_values_are_parsed_to_types() -> None:
    cfg = TrialConfig.from_flat(
        {
            "fusion.levels": "31",
            "film.placement": "bottleneck+enc2",
            "unet.aux_seg_weight": "0.5",
            "optim.epochs": "4",
            "optim.offload_optimizer": "true",
            "seed": 7,
        }
    )
    assert cfg.fusion.levels == (1, 3)
    assert cfg.film.placement == ("enc2", "bottleneck")
    assert cfg.optim.epochs == 4 and cfg.optim.offload_optimizer is True and cfg.run.seed == 7


def test_every_problem_is_reported_at_once_with_key_and_fix() -> None:
    with pytest.raises(ConfigError) as info:
        TrialConfig.from_flat(
            {
                "fusion.levels": "none",
                "fusion.injection": "parallel",
                "freeze": "half",
                "optim.lr": -1,
                "optim.lrr": 1e-4,
            },
            source="space.yaml",
        )
    err = info.value
    text = str(err)
    assert text.startswith("space.yaml: 4 invalid")
    assert "fusion.injection: 'parallel' needs fused levels" in text and "set fusion.injection=none" in text
    assert (
        "freeze: must be one of ['none', 'unet', 'mllm', 'mllm_except_xattn', 'vision_tower', 'lora']" in text
    )
    assert "optim.lr: must be a number in (0.0, 1.0]" in text
    assert "optim.lrr: unknown key; did you mean 'optim.lr'?" in text


@pytest.mark.parametrize(
    ("flat", "needle"),
    [
        (
            {"fusion.levels": "12", "fusion.map": "1:2,2:3"},
            "text layers [2] are not cross-attention layers of this preset; choose among [1, 3]",
        ),
        ({"fusion.levels": "12", "fusion.map": "1:1"}, "levels [2] are fused but have no layers"),
        ({"fusion.levels": "1", "fusion.map": "1:1,3:3"}, "names levels [3] that are not in fusion.levels"),
        ({"fusion.levels": "5"}, "levels must be in 1..4"),
        ({"fusion.levels": "12", "fusion.injection": "none"}, "injection cannot be 'none'"),
        (
            {"fusion.map": "bottom_up"},
            "must be one of ['shallow_early', 'deep_early', 'all', 'single'] or an explicit map",
        ),
        ({"fusion.grid": 32}, "finer than U-Net level(s) [4] at 128px; choose fusion.grid <= 16"),
        ({"film.placement": "enc9"}, "unknown FiLM site 'enc9'"),
        ({"film.placement": "decoder"}, "only change the segmentation output"),
        ({"unet.init": "pretrained"}, "unet.weights: unet.init=pretrained needs"),
        ({"model.preset": "70b"}, "model.preset: must be one of"),
        ({"head": "label_token", "task": "dual"}, "label_token scoring supports one task"),
        ({"optim.offload_param": True, "optim.zero_stage": 2}, "parameter offload needs optim.zero_stage=3"),
        (
            {"optim.offload_optimizer": True, "optim.zero_stage": 0},
            "optim.offload_optimizer: optimizer offload needs ZeRO; set optim.zero_stage to 1, 2 or 3",
        ),
        ({"optim.micro_batch": 1.5}, "must be an integer in [1, 4096]"),
        ({"optim.offload_optimizer": "maybe"}, "must be true or false"),
    ],
)
def test_invalid_values_name_key_and_fix(flat: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        TrialConfig.from_flat(flat)
    assert needle in str(info.value)


def test_offload_without_zero_never_reaches_the_deepspeed_builder() -> None:
    """Every way to a TrialConfig but the raw constructor validates, so build_ds_config never sees one."""
    with pytest.raises(ConfigError):
        TrialConfig.from_flat({"optim.offload_optimizer": True, "optim.zero_stage": 0})
    with pytest.raises(ConfigError):
        TrialConfig.from_flat({"optim.offload_optimizer": True}).replace(**{"optim.zero_stage": 0})
    raw = dataclasses.replace(TrialConfig(), optim=OptimConfig(zero_stage=0, offload_optimizer=True))
    assert raw.cross_field_problems() == [
        "optim.offload_optimizer: optimizer offload needs ZeRO; set optim.zero_stage to 1, 2 or 3"
    ]


def test_the_11b_validates_without_weights() -> None:
    """Weights are checked where a model is built for real (model/mllama.py), not by validation."""
    assert TrialConfig.from_flat({"model.preset": "11b"}).model.weights is None


def test_arch_is_the_architecture_sections_and_a_cache_key() -> None:
    base = TrialConfig.from_flat({"fusion.levels": "13"})
    other = base.replace(**{"optim.lr": 1e-5, "data.max_text_tokens": 32, "seed": 4})
    assert base.arch == other.arch and hash(base.arch) == hash(other.arch)
    assert base.arch != base.replace(freeze="lora").arch
    assert [f.name for f in dataclasses.fields(base.arch)] == [
        "model",
        "unet",
        "fusion",
        "film",
        "freeze",
        "head",
    ]
    assert all(getattr(base.arch, name) is getattr(base, name) for name in ("model", "fusion", "head"))


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_model_package_never_imports_the_trial_config() -> None:
    """config → model, never back: the model knows its architecture config, not the trial's."""
    importers = sorted(p.name for p in (PACKAGE / "model").glob("*.py") if "mdf_search.config" in _imports(p))
    assert importers == []


def test_replace_revalidates_and_config_hash_ignores_seed() -> None:
    base = TrialConfig.from_flat({})
    assert base.replace(seed=3).config_hash() == base.config_hash()
    assert base.replace(**{"fusion.levels": "12"}).config_hash() != base.config_hash()
    with pytest.raises(ConfigError):
        base.replace(**{"fusion.levels": "none"})  # injection stays 'parallel'


def test_every_field_has_a_unique_flat_key_and_doc() -> None:
    fields = flat_fields()
    assert len(fields) == len({f.metadata["key"] for _, f in fields.values()})
    assert all(f.metadata["doc"] for _, f in fields.values())


@pytest.mark.parametrize(
    ("spec", "levels", "expected"),
    [
        ("shallow_early", (1, 2, 3, 4), {1: (3, 8), 2: (13, 18), 3: (23, 28), 4: (33, 38)}),
        ("deep_early", (1, 2, 3, 4), {4: (3, 8), 3: (13, 18), 2: (23, 28), 1: (33, 38)}),
        ("shallow_early", (2, 4), {2: (3, 8, 13, 18), 4: (23, 28, 33, 38)}),
        ("all", (1, 3), {1: (3, 8, 13, 18, 23, 28, 33, 38), 3: (3, 8, 13, 18, 23, 28, 33, 38)}),
        ("single", (1, 2), {1: (3,), 2: (3,)}),
        ("1:3,2:8+38", (1, 2), {1: (3,), 2: (8, 38)}),
    ],
)
def test_layer_map_strategies_on_the_11b_layers(spec: str, levels: tuple[int, ...], expected: dict) -> None:
    assert resolve_layer_map(spec, levels, (3, 8, 13, 18, 23, 28, 33, 38)) == expected


def test_more_levels_than_layers_share_layers() -> None:
    assert resolve_layer_map("shallow_early", (1, 2, 3, 4), (1, 3)) == {1: (1,), 2: (1,), 3: (3,), 4: (3,)}


def test_infinite_nan_and_out_of_range_integers_are_problems_not_crashes() -> None:
    with pytest.raises(ConfigError) as caught:
        TrialConfig.from_flat(
            {
                "optim.micro_batch": float("inf"),
                "optim.grad_accum": float("nan"),
                "seed": 2**31,
                "data.fold": "9" * 5000,
            }
        )
    problems = "\n".join(caught.value.problems)
    assert "optim.micro_batch: must be an integer in [1, 4096], but got inf" in problems
    assert "optim.grad_accum: must be an integer in [1, 4096], but got nan" in problems
    assert "seed: must be an integer in [0, 2147483647], but got 2147483648" in problems
    assert "data.fold: must be an integer in [0, 99], but got '9999" in problems
    assert all(len(p) < 200 for p in caught.value.problems)  # the values are shown cut
