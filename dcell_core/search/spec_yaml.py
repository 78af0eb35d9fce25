"""Search-space YAML with the line of every key and list item, and duplicate keys (which YAML would drop)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dcell_core.search.spec import SearchSpaceError

# ----------------------------------------------------------------------------------------------------------
# YAML with line numbers


def _read_yaml(path: Path) -> tuple[Any, dict[tuple, int], list[tuple[tuple, str]]]:
    """The document, the line of every mapping key / list item, and duplicate keys (which YAML would drop)."""
    if not path.is_file():
        raise SearchSpaceError(f"{path}: no such search-space file")
    loader = yaml.SafeLoader(path.read_text())
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
        lines: dict[tuple, int] = {}
        duplicates: list[tuple[tuple, str]] = []
        if node is not None:
            _record_lines(loader, node, (), lines, duplicates)
    except yaml.YAMLError as e:
        # Reported in the same FILE:LINE form as every other problem; nothing else can be checked without a document.
        raise SearchSpaceError(f"1 problem(s) in search space {path}:\n  {_yaml_error(path, e)}") from e
    finally:
        loader.dispose()
    return data, lines, duplicates


def _yaml_error(path: Path, e: yaml.YAMLError) -> str:
    if not isinstance(e, yaml.MarkedYAMLError) or e.problem_mark is None:
        return f"{path}:1: YAML error: {' '.join(str(e).split())}"
    mark = e.problem_mark
    where = ""
    if e.context and e.context_mark is not None:
        where = f" ({e.context} at line {e.context_mark.line + 1}, column {e.context_mark.column + 1})"
    return f"{path}:{mark.line + 1}: YAML syntax error at column {mark.column + 1}: {e.problem}{where}"


def _record_lines(loader: yaml.SafeLoader, node: yaml.Node, prefix: tuple, lines: dict[tuple, int],
                  duplicates: list[tuple[tuple, str]]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            path = prefix + (key,)
            line = key_node.start_mark.line + 1
            if key in seen:
                duplicates.append((path, f"key given twice (lines {seen[key]} and {line}); YAML would silently "
                                         "keep the last"))
            seen[key] = lines[path] = line
            _record_lines(loader, value_node, path, lines, duplicates)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[prefix + (i,)] = item.start_mark.line + 1
            _record_lines(loader, item, prefix + (i,), lines, duplicates)
