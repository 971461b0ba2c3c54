"""The study's data artefacts reach a node that lacks them: published once to the study's storage,
fetched by name into the node's own cache root and checked against their SHA-256s (``data.artefacts``,
``train.builders.publish_trial_data``/``local_trial_data``); and the node-local cache warning."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from mdf_search.config import TrialConfig
from mdf_search.data import artefacts, storage
from mdf_search.data.artefacts import ARTEFACTS, MANIFEST, fetch, node_local_note, publish
from mdf_search.data.cache import open_cache
from mdf_search.data.schema import DataError
from mdf_search.data.splits import read_split
from mdf_search.train.builders import local_trial_data, prepare_trial_data, publish_trial_data

SMALL = {
    "model.preset": "tiny",
    "data.synthetic_images": 24,
    "data.synthetic_size": 96,
}


def _artefact(folder: Path) -> Path:
    cache = folder / "cache" / "abc-px96-v1"
    (cache / "sub").mkdir(parents=True)
    (cache / "meta.json").write_text('{"rows": 2}')
    (cache / "sub" / "images.npy").write_bytes(os.urandom(3000))
    (cache / "images.sha256").write_text("derived: not content")
    (cache / ".images.npy.tmp-1-x").write_text("in flight")
    return cache


def test_publish_then_fetch_on_a_node_without_it(tmp_path: Path) -> None:
    built = _artefact(tmp_path / "head")
    root = str(tmp_path / "runs" / "exp")
    digest = publish(built, "cache", root)
    record = json.loads((Path(root) / ARTEFACTS / "cache" / built.name / MANIFEST).read_text())
    assert record["digest"] == digest and sorted(record["files"]) == ["meta.json", "sub/images.npy"]
    # same filesystem: the published files are hard links, not a second copy
    assert os.path.samefile(
        built / "sub" / "images.npy", Path(root) / ARTEFACTS / "cache" / built.name / "sub/images.npy"
    )
    assert publish(built, "cache", root) == digest  # published once: the second call finds it
    got = fetch(root, "cache", built.name, tmp_path / "worker" / "cache")
    assert got == tmp_path / "worker" / "cache" / built.name
    assert (got / "sub" / "images.npy").read_bytes() == (built / "sub" / "images.npy").read_bytes()
    assert os.path.samefile(got / "sub" / "images.npy", built / "sub" / "images.npy")  # checked, then linked
    assert sorted(p.name for p in got.rglob("*")) == ["images.npy", "meta.json", "sub"]
    assert fetch(root, "cache", built.name, tmp_path / "head" / "cache") == built  # there: used as it is


def test_a_damaged_copy_is_refused_and_nothing_is_committed(tmp_path: Path) -> None:
    built = _artefact(tmp_path / "head")
    root = str(tmp_path / "runs" / "exp")
    publish(built, "cache", root)
    published = Path(root) / ARTEFACTS / "cache" / built.name / "sub" / "images.npy"
    published.unlink()  # break the hard link, then damage the published copy only
    published.write_bytes(b"\0" * 3000)
    with pytest.raises(
        DataError, match=r"sub/images.npy: arrived with SHA-256 .* the published copy is damaged"
    ):
        fetch(root, "cache", built.name, tmp_path / "worker" / "cache")
    assert not (tmp_path / "worker" / "cache" / built.name).exists()
    assert [p.name for p in (tmp_path / "worker" / "cache").iterdir() if not p.name.endswith(".lock")] == []


def test_an_artefact_not_published_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=r"not published there.*mdf-search sweep.*--storage every node reaches"
    ):
        fetch(str(tmp_path / "runs" / "exp"), "splits", "split-00.parquet", tmp_path / "worker" / "splits")


def test_ranks_of_one_node_fetch_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = _artefact(tmp_path / "head")
    root = str(tmp_path / "runs" / "exp")
    publish(built, "cache", root)
    copies: list[str] = []
    real = storage.link_or_copy

    def counted(source: Path, target: Path) -> None:
        copies.append(str(source))
        real(source, target)

    monkeypatch.setattr(storage, "link_or_copy", counted)
    results: list[Path] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(fetch(root, "cache", built.name, tmp_path / "w" / "cache"))
        )
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(results) == 4
    assert len(copies) == 2  # the artefact's two files, once


def test_a_worker_finds_the_trials_data_by_name_in_its_own_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep's node prepares and publishes; a worker whose $MDF_SEARCH_CACHE is another folder gets
    copies there (never the head's paths) and opens them as a trial does."""
    cfg = TrialConfig.from_flat(SMALL)
    monkeypatch.setenv("MDF_SEARCH_CACHE", str(tmp_path / "head-cache"))
    data = publish_trial_data(prepare_trial_data(cfg, workers=1), str(tmp_path / "runs" / "exp"))
    assert data.published == str(tmp_path / "runs" / "exp")
    monkeypatch.setenv("MDF_SEARCH_CACHE", str(tmp_path / "worker-cache"))
    local = local_trial_data(data, cfg)
    for kind, path in local.artefacts():
        assert Path(path).is_relative_to(tmp_path / "worker-cache" / kind), (kind, path)
        assert Path(path).name == Path(dict(data.artefacts())[kind]).name  # the same content address
    assert read_split(local.split).hash == data.split_hash  # read_split checks the content hash again
    assert len(open_cache(local.cache)) == SMALL["data.synthetic_images"]
    assert (Path(local.tokenizer) / "tokenizer.json").read_bytes() == (
        Path(data.tokenizer) / "tokenizer.json"
    ).read_bytes()
    assert (local.manifest, local.label_space, local.split_hash) == (
        data.manifest,
        data.label_space,
        data.split_hash,
    )
    # unpublished data (`mdf-search train`) is used where it is
    unpublished = prepare_trial_data(cfg, workers=1)
    assert local_trial_data(unpublished, cfg) == unpublished


def test_the_node_local_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(artefacts, "mount_type", lambda path: "nfs4" if "shared" in str(path) else "ext4")
    note = node_local_note(str(tmp_path / "cache"), None)
    assert note is not None and "is node-local" in note and "runs (the default)" in note
    assert "every node mounts" in note and "s3://" in note
    assert node_local_note(str(tmp_path / "cache"), "s3://bucket/runs") is None
    assert node_local_note(str(tmp_path / "cache"), "/shared/runs") is None
    assert node_local_note("/shared/cache", "/local/runs") is None
    assert "--storage /local/runs" in str(node_local_note(str(tmp_path / "cache"), "/local/runs"))
