"""Data artefacts published to object storage (moto S3) and fetched from it on a node that lacks them."""

from __future__ import annotations

from pathlib import Path

from mdf_search.data import storage
from mdf_search.data.artefacts import ARTEFACTS, fetch, publish
from tests.data.test_data_artefacts import _artefact


def test_published_to_object_storage(tmp_path: Path, bucket: str) -> None:
    built = _artefact(tmp_path / "head")
    split = tmp_path / "head" / "splits" / "split-0123.parquet"
    split.parent.mkdir(parents=True)
    split.write_bytes(b"PAR1 not really")
    root = f"{bucket}/runs/exp"
    publish(built, "cache", root)
    publish(split, "splits", root)
    assert storage.files(root, ARTEFACTS) == [
        "cache/abc-px96-v1/artefact.json",
        "cache/abc-px96-v1/meta.json",
        "cache/abc-px96-v1/sub/images.npy",
        "splits/split-0123.parquet/artefact.json",
        "splits/split-0123.parquet/split-0123.parquet",
    ]
    got = fetch(root, "splits", split.name, tmp_path / "worker" / "splits")
    assert got.is_file() and got.read_bytes() == split.read_bytes()
    assert (fetch(root, "cache", built.name, tmp_path / "worker" / "cache") / "meta.json").is_file()
