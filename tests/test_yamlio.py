"""Reading YAML: a mapping or a ConfigError that names the file, the line and what was found."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mdf_search.config import ConfigError
from mdf_search.yamlio import MAX_ALIASES, MAX_BYTES, MAX_DEPTH, read_trial_yaml, read_yaml_mapping


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


# ---------------------------------------------------------------------------------------------------
# Limits and encodings (issue 13, findings 3 and 5).
# ---------------------------------------------------------------------------------------------------
def _bomb(levels: int) -> str:
    names = "abcdefghijk"[:levels]
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"{n}: &{n} [{','.join([f'*{p}'] * 9)}]" for p, n in itertools.pairwise(names)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels", [9, 10])
def test_an_alias_bomb_is_measured_not_expanded(levels: int, tmp_path: Path) -> None:
    path = _file(tmp_path, _bomb(levels))
    assert path.stat().st_size < 600
    started = time.perf_counter()
    error = _refusal(path)
    assert time.perf_counter() - started < 0.5
    assert error.problems == [
        "line 1, column 1: aliases (*name) expand this file to more than 100000 values, over the limit of "
        "100000 (an alias bomb?); write the values out instead of nesting anchors (&name)"
    ]


def test_anchors_within_the_limits_read_as_usual(tmp_path: Path) -> None:
    text = "base: &b {epochs: 2, trials: 4}\nbudget: *b\nseeds: &s [0, 1]\nagain: *s\n"
    data = read_yaml_mapping(_file(tmp_path, text))
    assert data["budget"] == {"epochs": 2, "trials": 4} and data["again"] == [0, 1]


def test_too_many_alias_uses_too_deep_and_a_self_alias_are_refused(tmp_path: Path) -> None:
    many = _refusal(_file(tmp_path, "x: &x 1\ny: [" + ", ".join(["*x"] * (MAX_ALIASES + 1)) + "]\n"))
    assert f"more than {MAX_ALIASES} alias uses" in many.problems[0]
    deep = _refusal(_file(tmp_path, "a: " + "[" * 3000 + "]" * 3000 + "\n", "deep.yaml"))
    assert f"nested more than {MAX_DEPTH} levels deep" in deep.problems[0]
    loop = _refusal(_file(tmp_path, "seeds: &s [0, *s]\n", "loop.yaml"))
    assert loop.problems[0].startswith("seeds (line 1): an alias (*name) refers to the anchor")


def test_a_file_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(b"a: 1\n" + b"#" * (MAX_BYTES + 10))
    assert _refusal(path).problems == [
        "is 1.0 MiB; a YAML file here is at most 1 MiB (the limit); is this the right file?"
    ]


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("a: café\n".encode("latin-1"), "is not UTF-8 text: byte 0xe9 at line 1, column 7"),
        ("a: 1\n".encode("utf-16"), "is UTF-16 text (byte-order mark)"),
        ("a: 1\nb: 2\n".encode("utf-16-be"), "is UTF-16 text (no byte-order mark)"),
        ("a: 1\n".encode("utf-32"), "is UTF-32 text (byte-order mark)"),
        (b"\x7fELF\x02\x01\x01\x00\x00\x00", "is a binary file (a NUL byte at offset 7)"),
    ],
    ids=["latin-1", "utf-16", "utf-16-be-no-bom", "utf-32", "elf"],
)
def test_an_encoding_other_than_utf8_is_named_with_the_fix(
    content: bytes, words: str, tmp_path: Path
) -> None:
    path = tmp_path / "spec.yaml"
    path.write_bytes(content)
    (problem,) = _refusal(path).problems
    assert problem.startswith(words) and ("UTF-8" in problem or "YAML text" in problem)


def test_a_utf8_byte_order_mark_is_harmless(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_bytes("\ufeffa: é\n".encode())
    assert read_yaml_mapping(path) == {"a": "é"}


def test_a_huge_integer_is_refused_by_its_key_path(tmp_path: Path) -> None:
    error = _refusal(_file(tmp_path, f"budget:\n  epochs: 3\nseeds: [0, {'9' * 5001}]\n"))
    assert error.problems == [
        "seeds[1] (line 3): an integer of 5001 digits: no setting takes more than 64; write a smaller number"
    ]


def test_a_control_character_is_refused_with_its_line(tmp_path: Path) -> None:
    (problem,) = _refusal(_file(tmp_path, 'a: 1\nb: "x\x1by"\n')).problems
    assert problem.startswith("unacceptable character #x001b at line 2, column 6")


def test_a_duplicate_key_on_one_line_is_refused(tmp_path: Path) -> None:
    error = _refusal(_file(tmp_path, "budget: {epochs: 1, epochs: 2}\n"))
    assert error.problems == ["line 1, column 21: duplicate key 'epochs' (first at line 1); keep one of them"]


def test_an_error_shows_a_bounded_value(tmp_path: Path) -> None:
    error = _refusal(_file(tmp_path, f"{'k' * 100_000}: 1\n{'k' * 100_000}: 2\n"))
    assert len(error.problems[0]) < 200
