"""Reading YAML with errors that name the file, the line and the fix, within limits.

A file is read as bytes and refused before YAML sees it when it is over :data:`MAX_BYTES`, binary,
UTF-16/UTF-32 or not UTF-8. While PyYAML composes the node graph it counts nesting (:data:`MAX_DEPTH`)
and alias uses (:data:`MAX_ALIASES`); before anything is constructed, the graph's size with every alias
expanded is counted (:data:`MAX_NODES`, with memoisation: a "billion laughs" bomb is measured in
microseconds, never expanded) and an alias that contains itself is refused. Integers longer than
:data:`MAX_INT_DIGITS` digits are refused where they stand, by key path. Error messages show values
through ``fields.short_repr`` (bounded), never the ``repr`` of a whole value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mdf_search.config import ConfigError
from mdf_search.fields import short_repr

MAX_BYTES = 1 << 20  # 1 MiB: a search space is a few KiB
MAX_DEPTH = 64  # nesting of mappings and lists (a search space nests 4 deep)
MAX_ALIASES = 1000  # uses of *alias in one file
MAX_NODES = 100_000  # keys, values and items once every alias is expanded
MAX_INT_DIGITS = 64  # no setting takes an integer of more digits (a seed has at most 10)
_INT_TAG = "tag:yaml.org,2002:int"


class _Refused(Exception):
    """A limit or a value the loader refuses: the problem, and the node or mark where it stands."""

    def __init__(self, problem: str, mark: Any = None, node: yaml.Node | None = None) -> None:
        super().__init__(problem)
        self.problem, self.mark, self.node = problem, mark, node


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with limits on nesting and aliases, integer size, and no duplicate keys
    (PyYAML keeps the last one silently, so a second ``experiment:`` would rename the study)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0
        self.aliases = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise _Refused(
                    f"more than {MAX_ALIASES} alias uses (*name): a YAML file here uses at most "
                    f"{MAX_ALIASES}; write the values out",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise _Refused(
                    f"nested more than {MAX_DEPTH} levels deep: a YAML file here has at most {MAX_DEPTH} levels "
                    "of mappings and lists; flatten it",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.get(key)
                seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: let PyYAML report it as it does
                continue
            if first is not None:
                raise _Refused(
                    f"duplicate key {short_repr(key)} (first at line {first}); keep one of them",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        digits = sum(c.isdigit() for c in node.value)
        if digits > MAX_INT_DIGITS:
            raise _Refused(
                f"an integer of {digits} digits: no setting takes more than {MAX_INT_DIGITS}; write a "
                "smaller number",
                node.start_mark,
                node,
            )
        value: int = super().construct_yaml_int(node)
        return value


_Loader.add_constructor(_INT_TAG, _Loader.construct_yaml_int)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a graph whose aliases expand it past :data:`MAX_NODES` nodes or :data:`MAX_DEPTH` levels,
    or contain themselves; sizes are memoised per node, so nothing is expanded to count it."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_:
            raise _Refused(
                "an alias (*name) refers to the anchor (&name) that contains it, which never ends; "
                "point it at another anchor",
                node.start_mark,
                node,
            )
        if depth > MAX_DEPTH:
            raise _Refused(
                f"aliases nest the values more than {MAX_DEPTH} levels deep (the limit); write them out",
                node.start_mark,
            )
        open_.add(id(node))
        total = 1
        for child in _children(node):
            total = min(total + size(child, depth + 1), MAX_NODES + 1)
        open_.discard(id(node))
        sizes[id(node)] = total
        return total

    if size(root, 1) > MAX_NODES:
        raise _Refused(
            f"aliases (*name) expand this file to more than {MAX_NODES} values, over the limit of "
            f"{MAX_NODES} (an alias bomb?); write the values out instead of nesting anchors (&name)",
            root.start_mark,
        )


def _path_to(root: yaml.Node, target: yaml.Node) -> str | None:
    """The key path of ``target`` under ``root`` (``budget.epochs``, ``seeds[1]``), or None."""
    stack: list[tuple[yaml.Node, str, int]] = [(root, "", 0)]
    visited: set[int] = set()
    while stack:
        node, path, depth = stack.pop()
        if node is target:
            return path or None
        if id(node) in visited or depth > MAX_DEPTH:
            continue
        visited.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else "?"
                stack.append((value, f"{path}.{name}" if path else str(name), depth + 1))
                stack.append((key, path, depth + 1))
    return None


def _text(file: Path) -> str:
    """The file's text: refused (ConfigError) when too large, binary, UTF-16/32 or not UTF-8."""
    src = str(file)
    size = file.stat().st_size
    if size > MAX_BYTES:
        raise ConfigError(
            [
                f"is {size / (1 << 20):.1f} MiB; a YAML file here is at most {MAX_BYTES >> 20} MiB (the "
                "limit); is this the right file?"
            ],
            src,
        )
    with file.open("rb") as stream:
        data = stream.read(MAX_BYTES + 1)
    fix = "re-save it as UTF-8 (e.g. `iconv -f {} -t UTF-8 FILE`)"
    for bom, name in (
        (b"\xff\xfe\x00\x00", "UTF-32"),
        (b"\x00\x00\xfe\xff", "UTF-32"),
        (b"\xff\xfe", "UTF-16"),
        (b"\xfe\xff", "UTF-16"),
    ):
        if data.startswith(bom):
            raise ConfigError(
                [f"is {name} text (byte-order mark); YAML files here are UTF-8: {fix.format(name)}"], src
            )
    if b"\x00" in data:
        head = data[:4096]
        even, odd = head[0::2].count(0), head[1::2].count(0)
        if max(even, odd) > len(head) // 4 and min(even, odd) < max(even, odd) // 8:
            raise ConfigError(
                [f"is UTF-16 text (no byte-order mark); YAML files here are UTF-8: {fix.format('UTF-16')}"],
                src,
            )
        raise ConfigError(
            [
                f"is a binary file (a NUL byte at offset {data.index(0)}), not YAML text; give the search-space .yaml"
            ],
            src,
        )
    data = data.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark is harmless
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise ConfigError(
            [
                f"is not UTF-8 text: byte 0x{data[err.start]:02x} at line {line}, column {column} (Latin-1 or "
                f"Windows-1252?); {fix.format('latin1')}"
            ],
            src,
        ) from None


def _where(mark: Any) -> str:
    return "" if mark is None else f"line {mark.line + 1}, column {mark.column + 1}"


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file whose top level is a mapping; ConfigError (with the file) otherwise."""
    file = Path(path)
    src = str(file)
    if file.is_dir():
        raise ConfigError([f"is a directory, not a file; give a YAML file (e.g. {file}/spec.yaml)"], src)
    if not file.exists():
        raise ConfigError([f"file not found: {file}"], src)
    if not file.is_file():
        raise ConfigError(["is not a regular file (a device or a pipe?); give a YAML file"], src)
    try:
        text = _text(file)
    except OSError as err:
        raise ConfigError([f"cannot be read: {err.strerror or err}"], src) from None
    root: yaml.Node | None = None
    try:
        loader = _Loader(text)  # refuses control characters here
        try:
            root = loader.get_single_node()
            if root is not None:
                _check_expansion(root)
            data = loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
    except _Refused as err:
        field = _path_to(root, err.node) if root is not None and err.node is not None else None
        line = err.mark.line + 1 if err.mark is not None else 0
        where = f"{field} (line {line})" if field else _where(err.mark)
        raise ConfigError([f"{where}: {err.problem}" if where else err.problem], src) from None
    except yaml.reader.ReaderError as err:
        line = text.count("\n", 0, err.position) + 1
        column = err.position - (text.rfind("\n", 0, err.position) + 1) + 1
        raise ConfigError(
            [
                f"unacceptable character #x{err.character:04x} at line {line}, column {column}: YAML allows "
                "no control characters; delete it (in a double-quoted string write an escape such as \\t)"
            ],
            src,
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err)
        where = f" at {_where(mark)}" if mark is not None else ""
        raise ConfigError([f"malformed YAML{where}: {problem}"], src) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            [f"the top level must be a mapping of keys to values, but got {type(data).__name__}"], src
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
