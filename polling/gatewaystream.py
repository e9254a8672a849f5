"""The gateways file read entry by entry, so a file of 10,000 gateways costs the memory of
one entry, not of the whole document: libyaml's events (fast), composed into one node per
`gateways:` entry and constructed by PyYAML's own safe constructor (so tags, anchors,
aliases and `<<` merge keys mean what they mean in any YAML file)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

#: libyaml's safe loader when PyYAML has it: the pure-Python one is ten times slower.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

#: Where the reader is in the file (characters read), for a progress bar.
Progress = Callable[[int], None]


class NotAList(ConfigError):
    """The document has no top-level `gateways:` list."""


def read_entries(path: Path, progress: Progress | None = None) -> Iterator[Any]:
    """Each entry of the file's top-level `gateways:` list, as plain Python values. Raises
    ConfigError (naming the file, line and the parser's reason) on text that is not YAML,
    NotAList when there is no such list."""
    try:
        with path.open(encoding="utf-8") as stream:
            loader = SAFE_LOADER(stream)
            try:
                yield from _entries(loader, progress)
            finally:
                loader.dispose()
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: {yaml_problem(exc)}") from None


def yaml_problem(exc: yaml.YAMLError) -> str:
    """`line N, column M: not valid YAML: <the parser's reason>`."""
    mark = getattr(exc, "problem_mark", None)
    at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    reason = getattr(exc, "problem", None) or ""
    context = getattr(exc, "context", None)
    why = f"{context}, {reason}" if context and reason else reason or context or ""
    return f"{at}not valid YAML" + (f": {why}" if why else "")


def _entries(loader: Any, progress: Progress | None) -> Iterator[Any]:
    anchors: dict[str, yaml.Node] = {}
    _expect(loader, yaml.StreamStartEvent)
    if loader.check_event(yaml.StreamEndEvent):
        raise NotAList("an empty file")
    _expect(loader, yaml.DocumentStartEvent)
    if not loader.check_event(yaml.MappingStartEvent):
        raise NotAList("not a mapping")
    loader.get_event()
    found = False
    while not loader.check_event(yaml.MappingEndEvent):
        key = _compose(loader, anchors)
        if key.tag == yaml.resolver.BaseResolver.DEFAULT_SCALAR_TAG and key.value == "gateways":
            if not loader.check_event(yaml.SequenceStartEvent):
                raise NotAList("'gateways:' is not a list")
            found = True
            loader.get_event()
            while not loader.check_event(yaml.SequenceEndEvent):
                node = _compose(loader, anchors)
                yield loader.construct_document(node)
                if progress is not None:
                    progress(node.end_mark.index)
            loader.get_event()
        else:
            _compose(loader, anchors)  # another key (a block of anchors, say): its aliases count
    if not found:
        raise NotAList("no 'gateways:' key")


def _expect(loader: Any, kind: type) -> None:
    if not loader.check_event(kind):
        raise NotAList(f"expected {kind.__name__}")
    loader.get_event()


def _compose(loader: Any, anchors: dict[str, yaml.Node]) -> yaml.Node:
    """The next node from the events, its implicit tags resolved as PyYAML's composer
    would."""
    event: Any = loader.get_event()
    # libyaml's marks are its own class; PyYAML's nodes take either.
    start: Any = event.start_mark
    end: Any = event.end_mark
    if isinstance(event, yaml.AliasEvent):
        if event.anchor not in anchors:
            raise yaml.composer.ComposerError(
                None, None, f"found undefined alias {event.anchor!r}", start
            )
        return anchors[event.anchor]
    node: yaml.Node
    if isinstance(event, yaml.ScalarEvent):
        tag = _tag(loader, event, yaml.ScalarNode, event.value)
        node = yaml.ScalarNode(tag, event.value, start, end, event.style)
    elif isinstance(event, yaml.SequenceStartEvent):
        node = _collection(loader, anchors, event, yaml.SequenceNode, yaml.SequenceEndEvent)
    elif isinstance(event, yaml.MappingStartEvent):
        node = _collection(loader, anchors, event, yaml.MappingNode, yaml.MappingEndEvent)
    else:
        raise yaml.composer.ComposerError(None, None, f"unexpected {type(event).__name__}", start)
    if getattr(event, "anchor", None):
        anchors[event.anchor] = node
    return node


def _tag(loader: Any, event: Any, kind: type, value: str | None) -> str:
    """The event's tag, or the one its plain value implies (`12` an int, `yes` a string)."""
    if event.tag is None or event.tag == "!":
        return str(loader.resolve(kind, value, event.implicit))
    return str(event.tag)


def _collection(
    loader: Any, anchors: dict[str, yaml.Node], event: Any, kind: type, end: type
) -> yaml.Node:
    node: Any = kind(_tag(loader, event, kind, None), [], event.start_mark, None, event.flow_style)
    mapping = kind is yaml.MappingNode
    while not loader.check_event(end):
        item = _compose(loader, anchors)
        node.value.append((item, _compose(loader, anchors)) if mapping else item)
    node.end_mark = loader.get_event().end_mark
    return node
