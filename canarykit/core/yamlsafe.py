"""The one YAML loader: PyYAML's meaning, bounded against hostile or careless input, and fast.

Every file canarykit reads as YAML (plans, analysis configs, kubeconfigs, manifests for
`validate`) goes through `load` / `load_all`, so a problem is refused the same way
everywhere, as one BadInput that never echoes an unbounded value:
- duplicate keys are errors (kubectl refuses them; PyYAML silently keeps the last, so a plan
  with two `steps:` would run only the second);
- alias expansion is bounded: each node is counted as often as aliases repeat it (a
  700-byte "billion laughs" file is millions of nodes), as Kubernetes' own YAML reader does,
  and an alias inside its own anchor (a cycle) is refused;
- nesting depth is bounded (deep enough to hit Python's recursion limit otherwise);
- the text size is bounded; a value Python cannot build (an integer of 5,000 digits, the
  date 2024-13-45) is refused like a syntax error.

The meaning is PyYAML's (YAML 1.1 on libyaml, which is also what kubectl's YAML reader was
ported from): `yes` and `on` are booleans, `010` is octal. The exact path checks the limits on
libyaml's event stream before anything is built (a bomb costs the time to read its bytes, not
its expansion), then builds with PyYAML's safe constructor: about 1.5 MB/s.

`load` (plans, settings: short files) always takes the exact path. `load_all` of ordinary
YAML - what `validate` reads, megabytes of manifests - takes a native fast path (yaml-rs,
about 20 MB/s) only where it gives the same result: `is_ordinary` refuses it for any text
holding a construct on which the two could differ (tags, anchors, aliases, directives, complex
keys, compact nested blocks, flow collections over several lines, control characters, long
lines, deep indentation, and any plain scalar that YAML 1.1 and 1.2 read differently: `yes`,
`0012`, `1e3`, `12:30`, `1_000`, dates...), and where indentation alone cannot bound depth and
size (flow collections, a very large text) the built documents are walked for the exact
path's bounds. Whatever the fast path declines or fails on is read again by the exact path, so
errors and their messages always come from one place. tests/core/test_yamlsafe.py holds both
paths to the same results on generated texts; without yaml-rs installed, everything takes the
exact path.
"""

from __future__ import annotations

import functools
import gc
from typing import TYPE_CHECKING, Any

import re2

from canarykit.core.errors import BadInput

if TYPE_CHECKING:
    import yaml

MAX_BYTES = 64 * 1024 * 1024
MAX_NODES = 2_000_000  # nodes after alias expansion
MAX_DEPTH = 100
SHOWN = 80  # characters of a value an error may show

_MERGE_TAG = "tag:yaml.org,2002:merge"


@functools.cache
def _loaders() -> tuple[Any, Any]:
    """(libyaml's safe loader, the same refusing repeated keys); PyYAML is imported on first
    use, so the fast path of `load_all` never pays for it."""
    import yaml

    base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class UniqueKeyLoader(base):  # type: ignore[misc, valid-type]
        """The safe loader, refusing a mapping that repeats a key."""

    UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                    _construct_mapping)
    return base, UniqueKeyLoader


def _construct_mapping(loader: Any, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:  # the keys written here; merged (`<<`) keys may be overridden
        if key_node.tag == _MERGE_TAG and "<<" not in seen:
            seen["<<"] = True
            continue
        key = "<<" if key_node.tag == _MERGE_TAG else loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:  # an unhashable key: the base constructor explains it
            break
        if duplicate:
            import yaml

            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {_short(key)!s}", key_node.start_mark)
        seen[key] = True
    loader.flatten_mapping(node)
    return loader.construct_mapping(node, deep=deep)


def _short(value: Any) -> str:
    """A value as a message shows it: on one line (escapes visible), cut."""
    text = repr(value[:SHOWN + 1])[1:-1] if isinstance(value, str) else repr(value)
    return text if len(text) <= SHOWN else text[:SHOWN] + "..."


def check_bounds(text: str, field: str) -> None:
    """Refuse a text whose expansion or nesting is beyond the limits, before building it."""
    if len(text) > MAX_BYTES:
        raise BadInput(field, f"{len(text):,} characters",
                       f"is too large for YAML input (limit {MAX_BYTES:,})")
    import yaml

    sizes: dict[str, int] = {}  # anchor -> its node count, aliases expanded
    open_: list[tuple[str | None, int]] = []  # per open collection: (anchor, total before it)
    total = 0
    try:
        for event in yaml.parse(text, Loader=_loaders()[0]):
            if isinstance(event, yaml.AliasEvent):
                if any(anchor == event.anchor for anchor, _ in open_):
                    raise BadInput(field, f"*{_short(event.anchor)}",
                                   "is refused: a YAML alias inside its own anchor (a cycle)")
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


def _exact(text: str, field: str, many: bool) -> Any:
    """PyYAML's safe loader after the bounds check: the reference meaning and every error."""
    import yaml

    check_bounds(text, field)  # refuses cycles too: what is built below has none
    loader = _loaders()[1]
    collecting = gc.isenabled()
    gc.disable()  # one allocation burst without cycles: the GC would only rescan it
    try:
        if many:
            return list(yaml.load_all(text, Loader=loader))  # noqa: S506
        return yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        raise BadInput(field, "(YAML)", _problem(exc)) from None
    except RecursionError:
        raise BadInput(field, "(YAML)", "is nested too deeply") from None
    except (ValueError, OverflowError) as exc:  # int("9" * 5000), date(2024, 13, 45), ...
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadInput(field, "(YAML)", f"holds a value that cannot be read: "
                                        f"{_short(reason)}") from None
    finally:
        if collecting:
            gc.enable()


def load(text: str, field: str) -> Any:
    """One YAML document, bounded; BadInput(field, ...) names what was read."""
    return _exact(text, field, many=False)


def load_all(text: str, field: str) -> list[Any]:
    """Every document of a multi-document YAML stream, bounded together."""
    if len(text) <= MAX_BYTES:
        documents = _fast_load_all(text)
        if documents is not None:
            return documents
    return _exact(text, field, many=True)


# ---------------------------------------------------------------- the fast path

_START = r"(?:^|[\s\[{,:])"  # where a plain scalar can begin
_END = r"[ ]*(?:$|[\r\n#,\[\]{}:?])"  # where it can end (a superset)
# Plain scalars that YAML 1.1 (PyYAML) and YAML 1.2 (yaml-rs) may read differently: a
# superset. Canonical integers (`-12`, `8080`) and decimals (`12.5`), true/false and the nulls
# read alike and stay on the fast path; a timestamp is a string in one and a date in the other.
_DIFFERENT_SCALARS = (
    r"[-+]?[0-9_.:]*[_:][0-9_.:]*(?:[eE][-+]?[0-9_]+)?",  # 1_000, 12:30 (base 60)
    r"[-+]?[0-9_.]*[0-9][eE][-+]?[0-9_]*",  # 1e3, 1.5e3
    r"[-+]?\.[0-9][0-9_.:eE+-]*",  # .5, -.5
    r"[-+]?0[0-9_][0-9_.:eE+-]*",  # 0012 (octal in 1.1), 08
    r"[-+]?[0-9_]+\.",  # 1.
    r"[-+]?0[xXoObB][0-9a-fA-F_]*",  # 0x1F, 0o17, 0b101
    r"[-+]?\.(?:inf|Inf|INF|nan|NaN|NAN)",
    r"yes|Yes|YES|no|No|NO|on|On|ON|off|Off|OFF|<<|=",
)
# Keys that are not strings (`1:`, `true:`, an empty key): a dict merges 1 and 1.0.
_OTHER_KEYS = r"(?:[-+]?[0-9][0-9.]*|true|True|TRUE|false|False|FALSE|null|Null|NULL|~)?"
_NOT_ORDINARY = (
    "(?m)" + _START + "(?:" + "|".join(_DIFFERENT_SCALARS) + ")" + _END
    + "|" + _START + r"[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}"  # a timestamp
    + "|" + _START + _OTHER_KEYS + r"[ ]*:(?:\s|$)"
    + r"|(?:^|[\s\[{,])[!&*]"  # a tag, an anchor, an alias
    + r"|(?:^|[\s\[{,])\?(?:\s|$)"  # a complex key
    + r"|[\[{,] *[?:@\x60|>]"  # an indicator starting a flow collection's item
    + r"|[\[{,] *- |[\"']: *(?:[?:@\x60|>]|- )"  # (and after a JSON-like key)
    # A block scalar keeping its last breaks, indented by a number, or not alone on its line.
    + r"|(?:^|[\s:,\[{])[|>][-+0-9]*(?:[+0-9]| +[^\s#]|[,\]}])"
    + r"|(?:^|\s)[-?] +[-?](?:\s|$)"  # compact nested blocks (`- - a`): depth without indent
    + r"|\r(?:[^\n]|\z)|^%|^\.\.\."  # a lone CR, a directive, a document end
    # Block nesting needs indentation: under 90 columns it stays under MAX_DEPTH levels.
    + r"|^ {90}|^[^\n]{1000}"  # and libyaml refuses implicit keys over 1024 characters
    + r"|[^\n\r\x20-\x7e\x{a0}-\x{2027}\x{202a}-\x{d7ff}\x{e000}-\x{fefe}\x{ff00}-\x{fffd}"
    + r"\x{10000}-\x{10ffff}]"  # a tab, a control character, NEL, LS, PS, an inner BOM
)
@functools.cache
def _patterns() -> tuple[Any, Any, Any]:
    """The fast path's patterns, compiled (RE2: linear in the text) on first use."""
    options = re2.Options()
    options.log_errors = False
    return (re2.compile(_NOT_ORDINARY, options=options),
            re2.compile(r"(?m)^[^\n]*[\[\]{}][^\n]*$", options=options),
            re2.compile(r":[^ \n]", options=options))
_END_OF_STREAM = "canarykit-yamlsafe-end-of-stream"  # makes every result a list of documents
_SCALARS = (str, int, float, bool, type(None))


def is_ordinary(text: str) -> bool:
    """True when the text holds nothing on which the fast and the exact path could differ."""
    not_ordinary, bracket_line, colon_in_flow = _patterns()
    if not_ordinary.search(text) is not None:
        return False
    if "[" not in text and "{" not in text:
        return True
    # A flow collection over several lines may hold a key over several lines, which libyaml
    # refuses and yaml-rs reads: keep each flow collection on its line.
    for match in bracket_line.finditer(text):
        line = match.group()
        if line.count("[") + line.count("{") != line.count("]") + line.count("}"):
            return False
        if colon_in_flow.search(line):  # libyaml refuses `[a:]`; yaml-rs reads a string
            return False
    return True


def _most_nodes(text: str) -> int:
    """An upper bound of the nodes in an ordinary text: every mapping entry has a `:`, every
    block sequence item a `-`, every flow item a `,` or an opening bracket."""
    count = text.count
    return (3 * (count(":") + count(",") + count("[") + count("{")) + 2 * count("-")
            + count("...") + 1)


def _fast_load_all(text: str) -> list[Any] | None:
    """The documents as the exact path would give them, or None to let it decide."""
    if not is_ordinary(text):
        return None
    if text and text[-1] != "\n" and ("|" in text or ">" in text):
        return None  # a block scalar ending the text would gain the end-of-stream line break
    try:
        import yaml_rs
    except ImportError:
        return None
    collecting = gc.isenabled()
    gc.disable()  # a large load is one allocation burst without cycles; the GC would rescan it
    try:
        loaded = yaml_rs.loads(text + f"\n---\n{_END_OF_STREAM}\n", parse_datetime=False,
                               duplicate_key_policy=yaml_rs.DuplicateKeyPolicy.Error)
        if loaded == _END_OF_STREAM:
            return []
        if not isinstance(loaded, list) or not loaded or loaded[-1] != _END_OF_STREAM:
            return None
        documents = loaded[:-1]
        if ("[" in text or "{" in text or _most_nodes(text) > MAX_NODES) \
                and not _within_bounds(documents):
            return None  # flow collections nest without indentation: walk them
        return documents
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except BaseException:  # noqa: BLE001 - a refusal or a panic: the exact path explains it
        return None
    finally:
        if collecting:
            gc.enable()


def _within_bounds(documents: list[Any]) -> bool:
    """The exact path's depth and node bounds, and string keys, checked on built data."""
    total = 0
    stack = [(document, 1) for document in documents]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth = pop()
        if depth > MAX_DEPTH:
            return False
        if type(node) is dict:
            total += 1 + 2 * len(node)
            for key, child in node.items():
                if type(key) is not str:
                    return False  # 1 and 1.0, true and 1 are one key in a dict: PyYAML says so
                if type(child) is dict or type(child) is list:
                    total -= 1  # counted when it is taken from the stack
                    push((child, depth + 1))
                elif type(child) not in _SCALARS:
                    return False
        elif type(node) is list:
            total += 1 + len(node)
            for child in node:
                if type(child) is dict or type(child) is list:
                    total -= 1
                    push((child, depth + 1))
                elif type(child) not in _SCALARS:
                    return False
        elif type(node) in _SCALARS:
            total += 1
        else:
            return False
        if total > MAX_NODES:
            return False
    return True
