"""YAML loading that remembers the line of every key, for ``file:line: key: message`` errors."""

from __future__ import annotations

from typing import Any

import yaml

from ..errors import FlagFileError

# libyaml's loader when PyYAML was built with it (the usual wheel): the same documents, faster
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

MAX_YAML_BYTES = 1024 * 1024
"""Flag files and ``rollout.yaml`` larger than this are refused before parsing."""
MAX_DEPTH = 64
"""Mappings and lists nested deeper than this are refused (a flag file needs about 5)."""

class Located:
    """A loaded YAML document plus the 1-based line of each dotted key path."""

    def __init__(self, file: str, data: Any, lines: dict[str, int]) -> None:
        self.file = file
        self.data = data
        self.lines = lines

    def line(self, path: str) -> int | None:
        """The line of ``path`` or of its nearest parent that has one."""
        while True:
            if path in self.lines:
                return self.lines[path]
            if "." not in path and "[" not in path:
                return self.lines.get("")
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut]

    def error(self, path: str, message: str) -> FlagFileError:
        return FlagFileError(self.file, self.line(path), path, message)


def load_located(file: str, text: str) -> Located:
    """Parse one YAML document; a syntax error becomes a FlagFileError at its line. Aliases
    (``*name``, merge keys ``<<: *name``) are refused; anchors alone are harmless."""
    if len(text.encode("utf-8", errors="surrogatepass")) > MAX_YAML_BYTES:
        raise FlagFileError(file, None, "", f"larger than {MAX_YAML_BYTES // 1024} KiB")
    try:
        _check_events(file, text)
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "invalid YAML"
        raise FlagFileError(file, line, "", f"invalid YAML: {problem}") from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow, at an offset
        line = text.count("\n", 0, exc.position) + 1
        what = f"character #x{exc.character:04x}" if isinstance(exc.character, int) \
            else "character"
        raise FlagFileError(file, line, "", f"invalid YAML: unacceptable {what} "
                            f"({exc.reason})") from None
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()
        raise FlagFileError(file, None, "", f"invalid YAML: {first[0] if first else 'error'}"
                            ) from None
    lines: dict[str, int] = {"": 1}
    if node is None:
        return Located(file, None, lines)
    constructor = yaml.SafeLoader("")
    try:
        data = _convert(node, "", lines, file, constructor)
    finally:
        constructor.dispose()
    return Located(file, data, lines)


def _check_events(file: str, text: str) -> None:
    """Refuse aliases and deep nesting before a node graph exists. An alias shares its
    anchor's node, so following aliases lets a few hundred bytes expand into gigabytes (nine
    levels of ten aliases) or loop forever (``x: &a [*a]``); composition recurses per level."""
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        line = event.start_mark.line + 1 if event.start_mark is not None else None
        if isinstance(event, yaml.AliasEvent):
            raise FlagFileError(file, line, "",
                                f"YAML alias *{event.anchor} is not allowed: write the value "
                                "out (aliases and merge keys are refused)")
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise FlagFileError(file, line, "",
                                    f"invalid YAML: nested deeper than {MAX_DEPTH} levels")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _convert(node: yaml.Node, path: str, lines: dict[str, int], file: str,
             constructor: yaml.SafeLoader) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                raise FlagFileError(file, key_node.start_mark.line + 1, path, "keys must be text")
            child = f"{path}.{key}" if path else key
            if key in out:
                raise FlagFileError(file, key_node.start_mark.line + 1, child, "duplicate key")
            lines[child] = key_node.start_mark.line + 1
            out[key] = _convert(value_node, child, lines, file, constructor)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, f"{path}[{i}]", lines, file, constructor)
                for i, item in enumerate(node.value)]
    # Scalars: let the safe constructor resolve ints, floats, bools, nulls.
    try:
        return constructor.construct_object(node, deep=True)
    except yaml.MarkedYAMLError as exc:
        problem = exc.problem or exc.context or "cannot be read"
        raise FlagFileError(file, node.start_mark.line + 1, path,
                            f"invalid value: {problem}") from None
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()
        raise FlagFileError(file, node.start_mark.line + 1, path,
                            f"invalid value: {first[0] if first else 'cannot be read'}") from None
