"""The real build of a trial refuses a pretrained-only preset without weights, before any data work."""

from __future__ import annotations

from pathlib import Path

import pytest

from mdf_search.config import TrialConfig
from mdf_search.data.schema import LabelSpace
from mdf_search.train.builders import build_model, prepare_trial_data

NEEDS_WEIGHTS = r"model\.weights: the 11b preset loads LLaMA 3.2 11B Vision from a local directory"


def test_the_11b_without_weights_is_refused_before_the_data_is_prepared(tmp_path: Path) -> None:
    cfg = TrialConfig.from_flat({"model.preset": "11b", "data.cache_dir": str(tmp_path)})
    with pytest.raises(ValueError, match=NEEDS_WEIGHTS):
        prepare_trial_data(cfg)
    assert list(tmp_path.iterdir()) == []
    space = LabelSpace(diseases=("normal", "dr"))
    with pytest.raises(ValueError, match=NEEDS_WEIGHTS):
        build_model(cfg, space.to_json(), tokenizer_dir=tmp_path)
