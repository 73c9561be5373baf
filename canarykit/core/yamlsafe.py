"""The one YAML loader: C-fast, and bounded against hostile or careless input.

Every file canarykit reads as YAML (plans, analysis configs, kubeconfigs, manifests for
`validate`) goes through `load` / `load_all`, so a problem is refused the same way
everywhere, as one BadInput that never echoes an unbounded value:
- duplicate keys are errors (kubectl refuses them; PyYAML silently keeps the last, so a plan
  with two `steps:` would run only the second);
- alias expansion is bounded: each node is counted as often as aliases repeat it (a
  700-byte "billion laughs" file is millions of nodes), as Kubernetes' own YAML reader does;
- nesting depth is bounded (deep enough to hit Python's recursion limit otherwise);
- the text size is bounded.
The limits are checked on libyaml's event stream before anything is built, so a bomb costs
the time to read its bytes, not its expansion.
"""

from __future__ import annotations

from typing import Any

import yaml

from canarykit.core.errors import BadInput

MAX_BYTES = 64 * 1024 * 1024
MAX_NODES = 2_000_000  # nodes after alias expansion
MAX_DEPTH = 100
SHOWN = 80  # characters of a value an error may show

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeyLoader(_Loader):  # type: ignore[misc, valid-type]
    """The safe loader, refusing a mapping that repeats a key."""


def _construct_mapping(loader: Any, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:  # an unhashable key: the base constructor explains it
            break
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {_short(key)!s}", key_node.start_mark)
        seen[key] = True
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                 _construct_mapping)


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= SHOWN else text[:SHOWN] + "..."


def check_bounds(text: str, field: str) -> None:
    """Refuse a text whose expansion or nesting is beyond the limits, before building it."""
    if len(text) > MAX_BYTES:
        raise BadInput(field, f"{len(text):,} characters",
                       f"is too large for YAML input (limit {MAX_BYTES:,})")
    sizes: dict[str, int] = {}  # anchor -> its node count, aliases expanded
    open_: list[tuple[str | None, int]] = []  # per open collection: (anchor, total before it)
    total = 0
    try:
        for event in yaml.parse(text, Loader=_Loader):
            if isinstance(event, yaml.AliasEvent):
                total += sizes.get(event.anchor, 0)  # undefined: the load says so
            elif isinstance(event, yaml.ScalarEvent):
                total += 1
                if event.anchor:
                    sizes[event.anchor] = 1
            elif isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                open_.append((event.anchor, total))
                total += 1
                if len(open_) > MAX_DEPTH:
                    raise BadInput(field, f"nested more than {MAX_DEPTH} levels deep",
                                   "is refused: YAML nesting beyond the limit")
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                anchor, before = open_.pop()
                if anchor:
                    sizes[anchor] = total - before
            if total > MAX_NODES:
                raise BadInput(field, f"more than {MAX_NODES:,} nodes after expanding aliases",
                               "is refused: YAML aliases expand beyond the limit (an alias bomb?)")
    except yaml.YAMLError:
        return  # the load reports syntax errors, with their position


def _problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"is not valid YAML: {_short(str(what))}{where}"


def load(text: str, field: str) -> Any:
    """One YAML document, bounded; BadInput(field, ...) names what was read."""
    check_bounds(text, field)
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        raise BadInput(field, "(YAML)", _problem(exc)) from None
    except RecursionError:
        raise BadInput(field, "(YAML)", "is nested too deeply") from None


def load_all(text: str, field: str) -> list[Any]:
    """Every document of a multi-document YAML stream, bounded together."""
    check_bounds(text, field)
    try:
        return list(yaml.load_all(text, Loader=_UniqueKeyLoader))  # noqa: S506
    except yaml.YAMLError as exc:
        raise BadInput(field, "(YAML)", _problem(exc)) from None
    except RecursionError:
        raise BadInput(field, "(YAML)", "is nested too deeply") from None
