"""``data.storage``: the files of a study's storage, local or on S3 (moto), through one filesystem."""

from __future__ import annotations

from pathlib import Path

import pytest

from mdf_search.data import storage


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "runs")
    return f"{request.getfixturevalue('bucket')}/runs"


def test_a_uri_keeps_its_scheme_when_joined() -> None:
    assert storage.join("s3://b/runs/", "exp/spec.yaml") == "s3://b/runs/exp/spec.yaml"
    assert storage.join("", "a/b") == "a/b" and storage.join("s3://b/x", "") == "s3://b/x"
    assert str(Path("s3://b/runs")) == "s3:/b/runs"  # what pathlib would make of it


def test_write_read_list_stamp_and_delete(root: str) -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        storage.read_text(root, "exp/spec.yaml")
    assert not storage.is_file(root, "exp/spec.yaml") and storage.stamp(root, "exp/spec.yaml") is None
    storage.write_text(root, "exp/spec.yaml", "experiment: exp\n")
    storage.write_bytes(root, "exp/report/figures/a.png", b"\x89PNG")
    assert storage.read_text(root, "exp/spec.yaml") == "experiment: exp\n"
    assert storage.is_file(root, "exp/spec.yaml") and storage.is_dir(root, "exp")
    assert storage.stamp(root, "exp/spec.yaml") is not None
    assert storage.files(root, "exp") == ["report/figures/a.png", "spec.yaml"]  # no temporary file left
    storage.delete(root, "exp/spec.yaml")
    storage.delete(root, "exp/spec.yaml")  # absent: nothing to do
    assert storage.files(root, "exp") == ["report/figures/a.png"]


def test_trees_go_up_and_come_back_equal(root: str, tmp_path: Path) -> None:
    local = tmp_path / "report"
    (local / "figures").mkdir(parents=True)
    (local / "report.md").write_text("# r\n")
    (local / "figures" / "f.svg").write_text("<svg/>")
    storage.write_text(root, "exp/report/stale.txt", "from an earlier report")
    assert storage.upload_tree(local, root, "exp/report") == ["figures/f.svg", "report.md"]
    assert storage.files(root, "exp/report") == ["figures/f.svg", "report.md"]  # the stale file went
    back = tmp_path / "back"
    storage.download_tree(root, "exp/report", back)
    assert (back / "figures" / "f.svg").read_text() == "<svg/>" and (
        back / "report.md"
    ).read_text() == "# r\n"
    with storage.local_copy(root, "exp/report/report.md") as copy:
        assert copy.read_text() == "# r\n"


def test_a_download_that_does_not_match_is_refused(root: str, tmp_path: Path) -> None:
    storage.write_bytes(root, "x.bin", b"abc")

    def check(sha: str, size: int) -> None:
        raise ValueError(f"{sha[:8]} {size}")

    with pytest.raises(ValueError, match="ba7816bf 3"):
        storage.download_file(root, "x.bin", tmp_path / "x.bin", check)


def test_an_unreachable_store_is_a_storage_error_naming_the_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(OSError, match="s3://nowhere/runs"):
        storage.read_text("s3://nowhere/runs", "spec.yaml")
