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


def load_with_lines(text: str) -> Located:
    """Parse one YAML document; raises yaml.YAMLError (with a mark) when it is not valid YAML."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return Located(data=None, lines={(): 1})
        data = loader.construct_document(node)
    finally:
        loader.dispose()
    located = Located(data=data)
    _record(node, (), located)
    return located


def _record(node: yaml.Node, path: Path, located: Located) -> None:
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
            _record(value_node, child, located)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record(item, (*path, index), located)
