"""Reading YAML: a mapping or a ConfigError that names the file, the line and what was found."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from mdf_search.config import ConfigError
from mdf_search.yamlio import read_trial_yaml, read_yaml_mapping


def _file(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _refusal(path: Path, read: Callable[[Path], object] = read_yaml_mapping) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        read(path)
    assert caught.value.source == str(path) and str(caught.value).startswith(f"{path}: ")
    return caught.value


def test_a_mapping_reads_with_its_types(tmp_path: Path) -> None:
    path = _file(tmp_path, 'experiment: e1\nseeds: [0, 1]\nbudget: {epochs: 3}\nlevels: "13"\nlr: 1.0e-3\n')
    assert read_yaml_mapping(path) == {
        "experiment": "e1",
        "seeds": [0, 1],
        "budget": {"epochs": 3},
        "levels": "13",
        "lr": 1.0e-3,
    }


@pytest.mark.parametrize("text", ["", "# a comment only\n", "---\n"])
def test_an_empty_file_is_an_empty_mapping(text: str, tmp_path: Path) -> None:
    assert read_yaml_mapping(_file(tmp_path, text)) == {}


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        ("a: 1\nb: [1, 2\nc: 3\n", "line 3, column 2", "expected ',' or ']', but got ':'"),
        ("a: 1\n  b: 2\n", "line 2, column 4", "mapping values are not allowed here"),
        ("a:\n\tb: 1\n", "line 2, column 1", "found character '\\t' that cannot start any token"),
    ],
    ids=["unclosed-list", "bad-indent", "tab"],
)
def test_malformed_yaml_names_the_file_line_and_column(
    text: str, where: str, problem: str, tmp_path: Path
) -> None:
    error = _refusal(_file(tmp_path, text))
    assert error.problems == [f"malformed YAML at {where}: {problem}"]


def test_a_python_object_tag_is_refused_not_constructed(tmp_path: Path) -> None:
    marker = tmp_path / "constructed"
    path = _file(tmp_path, f"a: !!python/object/apply:pathlib.Path.touch [{str(marker)!r}]\n")
    error = _refusal(path)
    assert (
        "line 1, column 4" in error.problems[0] and "could not determine a constructor" in error.problems[0]
    )
    assert not marker.exists()


@pytest.mark.parametrize(("text", "found"), [("- 1\n- 2\n", "list"), ("just text\n", "str"), ("7\n", "int")])
def test_a_top_level_that_is_not_a_mapping_is_refused(text: str, found: str, tmp_path: Path) -> None:
    error = _refusal(_file(tmp_path, text))
    assert error.problems == [f"the top level must be a mapping of keys to values, but got {found}"]


def test_a_missing_file_is_not_found_and_a_directory_is_named_as_one(tmp_path: Path) -> None:
    assert _refusal(tmp_path / "absent.yaml").problems == [f"file not found: {tmp_path / 'absent.yaml'}"]
    assert _refusal(tmp_path).problems == [
        f"is a directory, not a file; give a YAML file (e.g. {tmp_path}/spec.yaml)"
    ]


def test_a_duplicate_key_is_refused(tmp_path: Path) -> None:
    error = _refusal(_file(tmp_path, "metric: val/loss\nmode: min\nmetric: val/macro_f1\n"))
    assert "metric" in error.problems[0] and "line 3" in error.problems[0]


def test_a_trial_file_is_flat_keys(tmp_path: Path) -> None:
    path = _file(tmp_path, 'fusion.levels: "13"\noptim.lr: 3.0e-5\n', "trial.yaml")
    assert read_trial_yaml(path) == {"fusion.levels": "13", "optim.lr": 3.0e-5}


def test_a_search_space_file_is_read_as_its_fixed_block(tmp_path: Path) -> None:
    text = 'experiment: e\nscientific: {fusion.levels: ["1", "4"]}\nfixed:\n  model.preset: tiny\n'
    assert read_trial_yaml(_file(tmp_path, text, "space.yaml")) == {"model.preset": "tiny"}


def test_nested_values_in_a_trial_file_are_refused_each_by_key(tmp_path: Path) -> None:
    path = _file(tmp_path, "optim: {lr: 0.1}\nseeds: [0, 1]\nfreeze: none\n", "trial.yaml")
    error = _refusal(path, read_trial_yaml)
    assert [p.split(":")[0] for p in error.problems] == ["optim", "seeds"]
    assert "not a dict" in error.problems[0] and "not a list" in error.problems[1]
    assert "'fusion.levels: \"13\"'" in error.problems[0]  # the fix, by example


def test_a_trial_file_reports_yaml_errors_as_a_mapping_read_does(tmp_path: Path) -> None:
    error = _refusal(_file(tmp_path, "- a\n", "trial.yaml"), read_trial_yaml)
    assert error.problems == ["the top level must be a mapping of keys to values, but got list"]
