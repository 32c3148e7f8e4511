"""Read YAML while remembering where each value sits in the file.

Operations staff fix rule files from error messages, so every message needs
the line and column of the value it is about. PyYAML's node tree has those
marks; `load_with_marks` builds plain Python values and a map from each
value's path (keys and list indexes) to its position.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

__all__ = ["Marks", "YamlSyntaxError", "load_with_marks"]

Path = tuple[str | int, ...]


class YamlSyntaxError(ValueError):
    """The text is not well-formed YAML, or a mapping repeats a key."""

    def __init__(
        self, message: str, line: int, column: int, hint: str | None = None
    ) -> None:
        super().__init__(message)
        self.line = line
        self.column = column
        self.hint = hint


class Marks:
    """Positions (1-based line and column) of values by their path."""

    def __init__(self) -> None:
        self._positions: dict[Path, tuple[int, int]] = {}
        self._keys: dict[Path, tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self._positions)

    def add(self, path: Path, node: yaml.Node) -> None:
        """Record where the value at `path` starts."""
        self._positions[path] = (node.start_mark.line + 1, node.start_mark.column + 1)

    def add_key(self, path: Path, node: yaml.Node) -> None:
        """Record where the mapping key of the value at `path` starts."""
        self._keys[path] = (node.start_mark.line + 1, node.start_mark.column + 1)

    def locate_key(self, path: Path) -> tuple[int, int]:
        """Return the position of the key naming `path`, else `locate(path)`."""
        found = self._keys.get(tuple(path))
        return found if found is not None else self.locate(path)

    def locate(self, path: Path) -> tuple[int, int]:
        """Return the position of `path`, or of its nearest known ancestor."""
        for end in range(len(path), -1, -1):
            found = self._positions.get(tuple(path[:end]))
            if found is not None:
                return found
        return (1, 1)


_Pairs = dict[Any, tuple[yaml.Node, yaml.Node]]


class _Constructor(yaml.constructor.SafeConstructor):
    """A safe constructor that remembers the merged keys of each mapping."""

    def __init__(self) -> None:
        super().__init__()
        # An anchor merged in many places is resolved once: without this,
        # merges of merges would be an alias bomb of their own.
        self.pairs: dict[int, _Pairs] = {}


class _Loader(yaml.SafeLoader):
    """A safe loader whose booleans are only true and false.

    YAML 1.1 reads `on`, `off`, `yes` and `no` as booleans, and `on` is a
    key of the rule language.
    """


_BOOL = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


# Rule files are small; a file that expands past this many values, or nests
# deeper than this, is an alias bomb or a mistake, not a rule set.
MAX_VALUES = 100_000
MAX_DEPTH = 64


def _build(node: yaml.Node, path: Path, marks: Marks, constructor: _Constructor) -> Any:
    marks.add(path, node)
    if len(marks) > MAX_VALUES or len(path) > MAX_DEPTH:
        line, column = node.start_mark.line + 1, node.start_mark.column + 1
        raise YamlSyntaxError(
            f"The file expands to more than {MAX_VALUES} values or nests deeper "
            f"than {MAX_DEPTH} levels.",
            line,
            column,
            "write the rules out instead of repeating them through aliases",
        )
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key, (key_node, value_node) in _pairs(node, constructor, ()).items():
            marks.add_key((*path, key), key_node)
            result[key] = _build(value_node, (*path, key), marks, constructor)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [
            _build(item, (*path, index), marks, constructor)
            for index, item in enumerate(node.value)
        ]
    return _construct(node, constructor)


_MERGE = "tag:yaml.org,2002:merge"


def _pairs(
    node: yaml.MappingNode, constructor: _Constructor, merging: tuple[int, ...]
) -> _Pairs:
    """Return a mapping's keys with their key and value nodes, merges resolved.

    As YAML's merge key defines it, a key written in the mapping overrides
    one merged in with `<<`. Only a key written twice in the mapping itself
    is a duplicate.
    """
    found = constructor.pairs.get(id(node))
    if found is not None:
        return found

    merged: _Pairs = {}
    explicit: _Pairs = {}
    merge_key: yaml.Node | None = None
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE:
            if merge_key is not None:
                raise _duplicate("<<", key_node)
            merge_key = key_node
            merged = _merge(value_node, constructor, (*merging, id(node)))
            continue
        key = _construct_key(key_node, constructor)
        if key in explicit:
            raise _duplicate(key, key_node)
        explicit[key] = (key_node, value_node)

    found = merged | explicit
    constructor.pairs[id(node)] = found
    return found


def _merge(
    value: yaml.Node, constructor: _Constructor, merging: tuple[int, ...]
) -> _Pairs:
    """Return the pairs `<<` merges in; of several mappings, the first wins."""
    sources = value.value if isinstance(value, yaml.SequenceNode) else [value]
    merged: _Pairs = {}
    for source in reversed(sources):
        _check_merge_source(source, merging)
        merged |= _pairs(source, constructor, merging)
    return merged


def _duplicate(key: Any, key_node: yaml.Node) -> YamlSyntaxError:
    return YamlSyntaxError(
        f"The key {key!r} appears twice in one mapping.",
        key_node.start_mark.line + 1,
        key_node.start_mark.column + 1,
        "keep one of them; YAML readers differ on which one wins",
    )


def _check_merge_source(source: yaml.Node, merging: tuple[int, ...]) -> None:
    """Refuse what `<<` cannot merge: a non-mapping, or a mapping into itself."""
    line, column = source.start_mark.line + 1, source.start_mark.column + 1
    if not isinstance(source, yaml.MappingNode):
        raise YamlSyntaxError(
            "A merge key '<<' takes a mapping or a list of mappings.",
            line,
            column,
            "write '<<: *name' where the anchor &name marks a mapping",
        )
    if id(source) in merging or len(merging) > MAX_DEPTH:
        raise YamlSyntaxError(
            "A mapping merges itself through '<<', directly or through others.",
            line,
            column,
            "merge a mapping defined before and outside this one",
        )


def _construct(node: yaml.Node, constructor: _Constructor) -> Any:
    """Build a scalar, or a collection used as a key, refusing bad tags."""
    line, column = node.start_mark.line + 1, node.start_mark.column + 1
    try:
        value = constructor.construct_object(node, deep=True)
        if isinstance(value, str) and not value.isascii():
            value.encode("utf-8")
        return value
    except UnicodeEncodeError as error:
        # A double-quoted "\ud800" escape makes a lone UTF-16 surrogate:
        # not a character, and refused by every encoder the engine uses.
        raise YamlSyntaxError(
            "The text escapes a lone UTF-16 surrogate (\\ud800 to \\udfff), "
            "which is not a character.",
            line,
            column,
            "write the character itself, or escape it as \\U0001F600",
        ) from error
    except yaml.constructor.ConstructorError as error:
        raise YamlSyntaxError(
            f"The file is not valid YAML: {error.problem}.",
            line,
            column,
            "remove the '!!' tag or write a value of the type it names",
        ) from error
    except (ValueError, TypeError, AttributeError) as error:
        # PyYAML's constructors fail this way on a tag whose text does not
        # fit it: `!!int two` (ValueError), `!!timestamp soon`
        # (AttributeError).
        raise YamlSyntaxError(
            f"The value {node.value!r} cannot be read as "
            f"{node.tag.replace('tag:yaml.org,2002:', '!!')}.",
            line,
            column,
            "remove the '!!' tag or write a value of the type it names",
        ) from error


def _construct_key(node: yaml.Node, constructor: _Constructor) -> Any:
    """Build a mapping key, refusing a list or mapping as one."""
    if isinstance(node, yaml.CollectionNode):
        kind = "list" if isinstance(node, yaml.SequenceNode) else "mapping"
        raise YamlSyntaxError(
            f"A key must be text, not a {kind}.",
            node.start_mark.line + 1,
            node.start_mark.column + 1,
            "write the key as plain text, such as 'name:'",
        )
    return _construct(node, constructor)


def load_with_marks(text: str) -> tuple[Any, Marks]:
    """Parse YAML text into Python values and their positions.

    Raises:
        YamlSyntaxError: the text is not valid YAML or repeats a key.
    """
    marks = Marks()
    try:
        node = yaml.compose(text, Loader=_Loader)
    except RecursionError as error:
        raise YamlSyntaxError(
            "The file nests too deeply to read.", 1, 1, "flatten the structure"
        ) from error
    except yaml.reader.ReaderError as error:
        raise YamlSyntaxError(
            f"The file holds a character YAML does not allow: {error.reason} "
            f"at byte {error.position}.",
            1,
            1,
            "remove control characters such as NUL from the file",
        ) from error
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        line = mark.line + 1 if mark else 1
        column = mark.column + 1 if mark else 1
        hint = (
            "indent with spaces; YAML does not allow tabs"
            if "'\\t'" in str(error.problem)
            else "check the indentation, the closing brackets and quotes on "
            "this line or the one before it"
        )
        raise YamlSyntaxError(
            f"The file is not valid YAML: {error.problem}.", line, column, hint
        ) from error
    except yaml.YAMLError as error:
        raise YamlSyntaxError(f"The file is not valid YAML: {error}.", 1, 1) from error
    if node is None:
        return None, marks
    constructor = _Constructor()
    return _build(node, (), marks, constructor), marks
