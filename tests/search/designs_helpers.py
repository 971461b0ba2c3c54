"""A small grid spec written to disk and loaded, shared by the design and sampler tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mdf_search.search.designs import arms
from mdf_search.search.space import SearchSpec, load_spec

INJECTION = {
    "choices": ["concat", "parallel"],
    "when": {"fusion.levels": {"not": "none"}},
    "otherwise": "none",
}


def grid_spec(tmp_path: Path, **fields: Any) -> SearchSpec:
    """Three levels arms (none, 4, 1234) × seeds 0 and 1 on the tiny preset; ``fields`` override."""
    body: dict[str, Any] = {
        "experiment": "d",
        "metric": "val/macro_f1",
        "mode": "max",
        "design": "grid",
        "seeds": [0, 1],
        "budget": {"epochs": 2},
        "scientific": {"fusion.levels": ["none", "4", "1234"], "fusion.injection": INJECTION},
        "fixed": {"model.preset": "tiny"},
        **fields,
    }
    path = tmp_path / f"{body['experiment']}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return load_spec(path)


def arm_ids(spec: SearchSpec) -> list[str]:
    return [a.id for a in arms(spec)]
