"""YAML loading that remembers where every value came from, so errors can name file:line.

`yaml.SafeLoader` builds the data as usual; we then walk the node tree it composed (the nodes
still carry their start marks) and record, for every field path, the line of its key and of its
value. Duplicate keys, which PyYAML silently collapses to the last one, are reported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml

__all__ = ["Located", "load_with_lines"]

Path = tuple[str | int, ...]


@dataclass
class Located:
    """The loaded data plus, for each path, the 1-based line where it is written."""

    data: object
    lines: dict[Path, int] = field(default_factory=dict)
    duplicate_keys: list[tuple[Path, int, int]] = field(default_factory=list)  # path, first, again

    def line_of(self, path: Path) -> int | None:
        """The line of `path`, or of its closest ancestor present in the file."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return None


# Values a file may expand to. An alias is the node it names, so ten aliases of ten aliases of
# ... make a 532-byte file of 10^9 values: the walk below and the schema's validation would take
# hours (and a controller host's event loop with them: its Up parses what anyone with the token
# sends). A real deployment file has a few hundred.
MAX_VALUES = 100_000


class TooLarge(yaml.MarkedYAMLError):
    """The file expands (through its aliases) to more than MAX_VALUES values, or nests too deeply."""


def load_with_lines(text: str) -> Located:
    """Parse one YAML document; raises yaml.YAMLError (with a mark) when it is not valid YAML,
    TooLarge when it expands beyond MAX_VALUES values or nests beyond the parser's stack."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return Located(data=None, lines={(): 1})
        data = loader.construct_document(node)
    except RecursionError:  # PyYAML's composer and constructor recurse once per level
        raise TooLarge(problem="the file nests too deeply (thousands of levels)") from None
    finally:
        loader.dispose()
    located = Located(data=data)
    try:
        _record(node, (), located, [MAX_VALUES])
    except RecursionError:
        raise TooLarge(problem="the file nests too deeply (thousands of levels)") from None
    return located


def _record(node: yaml.Node, path: Path, located: Located, budget: list[int]) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        raise TooLarge(problem=f"the file expands to more than {MAX_VALUES} values (aliases of aliases?); "
                               "a deployment file has a few hundred", problem_mark=node.start_mark)
    located.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[object, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            line = key_node.start_mark.line + 1
            child = (*path, key)
            if key in seen:
                located.duplicate_keys.append((child, seen[key], line))
                continue
            seen[key] = line
            # Point at the key's line: that is where the user looks for a field.
            located.lines[child] = line
            _record(value_node, child, located, budget)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record(item, (*path, index), located, budget)
