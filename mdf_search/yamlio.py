"""Reading YAML with errors that name the file, the line and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mdf_search.config import ConfigError


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key written twice in one mapping is an error (PyYAML keeps the
    last one silently, so a second ``experiment:`` would rename the study without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: let PyYAML report it as it does
                continue
            if first != key_node.start_mark.line + 1:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first at line {first}); keep one of them",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file whose top level is a mapping; ConfigError (with the file) otherwise."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError([f"file not found: {file}"], str(file))
    try:
        data = yaml.load(file.read_text(), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError([f"malformed YAML{where}: {problem}"], str(file)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            [f"the top level must be a mapping of keys to values, but got {type(data).__name__}"], str(file)
        )
    return data


def read_trial_yaml(path: str | Path) -> dict[str, Any]:
    """A trial config file: flat keys (``fusion.levels: "13"``), as in a search space's ``fixed:`` block.

    A search-space file is accepted too: its ``fixed:`` block is the trial.
    """
    data = read_yaml_mapping(path)
    if "fixed" in data and isinstance(data["fixed"], dict):
        data = dict(data["fixed"])
    nested = [k for k, v in data.items() if isinstance(v, dict | list)]
    if nested:
        raise ConfigError(
            [
                f"{k}: trial files use flat keys with scalar values (e.g. 'fusion.levels: \"13\"'), not a {type(data[k]).__name__}"
                for k in nested
            ],
            str(path),
        )
    return data
