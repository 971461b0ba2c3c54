"""The meta-device build of an architecture, and the summary made from it."""

from __future__ import annotations

from mdf_search.config import TrialConfig
from mdf_search.model.summary import build_on_meta, summarize


def test_the_11b_builds_on_meta_without_weights() -> None:
    arch = TrialConfig.from_flat({"model.preset": "11b", "fusion.levels": "13"}).arch
    model = build_on_meta(arch)
    assert all(p.is_meta for p in model.parameters())
    summary = summarize(arch)
    assert summary.total > 10e9 and summary.cross_attention_layers == (3, 8, 13, 18, 23, 28, 33, 38)
    assert [levels for _, levels, _ in summary.wiring] == [(1,)] * 4 + [(3,)] * 4


def test_label_token_heads_build_on_meta_with_stand_in_ids() -> None:
    """Label-token scoring has no head parameters: counts do not depend on the token ids."""
    arch = TrialConfig.from_flat({"head": "label_token", "task": "type"}).arch
    model = build_on_meta(arch)
    assert sum(p.numel() for p in model.heads.parameters()) == 0
    linear = summarize(TrialConfig.from_flat({"task": "type"}).arch)
    assert summarize(arch).total == linear.total - linear.roles["head"][0]
