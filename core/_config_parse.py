"""Turning one YAML file into :mod:`core.config`'s model, collecting every problem on the way.

Why a hand-written reader rather than a schema library: the error messages are the product.
Each must name the file, the line, the key path (``tokens[1].sinks[0].cluster``) and the fix,
all problems must come out of one run, and the cross-references (a sink's cluster, a token's
organization) need the whole file. A small typed reader over the parsed YAML does that in one
pass, with line numbers kept by reading the parser's events ourselves (the SafeLoader's tag
resolution and scalar constructors: the same safety as ``yaml.safe_load``).

Values that may be secrets written in the wrong place (anything under a ``*_env`` key, keys we
reject such as ``password``) are never echoed in a message.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Collection, Hashable, Mapping
from datetime import timedelta
from typing import Any, Literal, Protocol, cast
from urllib.parse import urlsplit

import yaml

from core.config import (
    AlertSettings,
    AzureCredentialKind,
    AzureSettings,
    Cluster,
    Config,
    ConfigErrors,
    ConfigProblem,
    CredentialKind,
    DurationError,
    ExporterSettings,
    FluxPolicy,
    KedaConsumer,
    KeyVaultSecretRef,
    KeyVaultSink,
    KubernetesSecretSink,
    LeaseSettings,
    Organization,
    PipelineCheck,
    Sink,
    SwitchMode,
    Token,
    UserCredential,
    WorkerSettings,
    parse_duration,
)

# ADO OAuth/PAT scopes a token may ask for. Sources:
# - swagger securityDefinitions in tests/fixtures/specs/azure-devops/ (build71, release71, taskAgent71,
#   tokens-7.2 EntraOAuth: vso.pats, vso.pats_manage);
# - the scope table of learn.microsoft.com/azure/devops/integrate/get-started/authentication/oauth
#   (MicrosoftDocs/azure-devops-docs docs/integrate/get-started/authentication/oauth.md,
#   ms.date 2025-07-14), the source for vso.pipelineresources_use.
# Full-access scopes (app_token, user_impersonation) are deliberately absent: see _FULL_ACCESS.
ADO_SCOPES: tuple[str, ...] = (
    "vso.advsec", "vso.advsec_write", "vso.advsec_manage",
    "vso.agentpools", "vso.agentpools_manage", "vso.environment_manage",
    "vso.analytics",
    "vso.auditlog", "vso.auditstreams_manage",
    "vso.build", "vso.build_execute",
    "vso.code", "vso.code_write", "vso.code_manage", "vso.code_full", "vso.code_status",
    "vso.connected_server",
    "vso.dashboards", "vso.dashboards_manage",
    "vso.entitlements", "vso.memberentitlementmanagement", "vso.memberentitlementmanagement_write",
    "vso.extension", "vso.extension_manage", "vso.extension.data", "vso.extension.data_write",
    "vso.gallery", "vso.gallery_acquire", "vso.gallery_publish", "vso.gallery_manage",
    "vso.githubconnections", "vso.githubconnections_manage",
    "vso.graph", "vso.graph_manage", "vso.identity", "vso.identity_manage",
    "vso.hooks", "vso.hooks_write", "vso.hooks_interact",
    "vso.machinegroup_manage",
    "vso.notification", "vso.notification_write", "vso.notification_manage",
    "vso.notification_diagnostics",
    "vso.packaging", "vso.packaging_write", "vso.packaging_manage",
    "vso.pats", "vso.pats_manage",
    "vso.pipelineresources_use", "vso.pipelineresources_manage",
    "vso.profile", "vso.profile_write",
    "vso.project", "vso.project_write", "vso.project_manage",
    "vso.release", "vso.release_execute", "vso.release_manage",
    "vso.securefiles_read", "vso.securefiles_write", "vso.securefiles_manage",
    "vso.security_manage",
    "vso.serviceendpoint", "vso.serviceendpoint_query", "vso.serviceendpoint_manage",
    "vso.settings", "vso.settings_write",
    "vso.symbols", "vso.symbols_write", "vso.symbols_manage",
    "vso.taskgroups_read", "vso.taskgroups_write", "vso.taskgroups_manage",
    "vso.test", "vso.test_write",
    "vso.threads_full",
    "vso.tokens", "vso.tokenadministration",
    "vso.variablegroups_read", "vso.variablegroups_write", "vso.variablegroups_manage",
    "vso.wiki", "vso.wiki_write",
    "vso.work", "vso.work_write", "vso.work_full",
)
_FULL_ACCESS = ("app_token", "user_impersonation")

# The longest PAT Azure DevOps issues (docs/external-apis.md, "PAT Lifecycle API").
MAX_LIFETIME = timedelta(days=365)

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]{1,253}")
_KEYVAULT_NAME = re.compile(r"[0-9a-zA-Z-]{1,127}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LABEL_RULE = ("lowercase letters, digits and '-', starting and ending with a letter or digit, "
               "at most 63 characters")
_SUBDOMAIN_RULE = "lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"


# --------------------------------------------------------------------------- YAML with lines
#
# The file is read from the parser's event stream straight into dicts and lists, never into
# PyYAML's node tree: composing the tree (every scalar a node object with two marks) was the
# whole of the load's peak memory, ~21 MB traced for a 1,000-token file, and that peak stayed
# resident after the load (docs/benchmarks.md, "Config load"). Building from events keeps what
# the tree gave us: each mapping's and sequence's line, each key's and item's line, keys written
# twice, merge keys (``<<``) and anchors, the SafeLoader's tag resolution and scalar
# constructors (so the same safety as ``yaml.safe_load``: no tag builds an object), its errors
# with their marks. It also bounds the nesting depth explicitly: the loop below keeps its own
# stack, so no file can exhaust Python's (or, with libyaml, the C) stack.


class _Map(dict[Any, Any]):
    """A YAML mapping that remembers its line, each key's line and keys written twice."""

    __slots__ = ("duplicates", "key_lines", "line")

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.key_lines: dict[Any, int] = {}
        self.duplicates: list[tuple[str, int]] = []


class _Seq(list[Any]):
    """A YAML sequence that remembers its line and each item's line."""

    __slots__ = ("item_lines", "line")

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.item_lines: list[int] = []


# libyaml's event parser when the PyYAML wheel has it (the published wheels do: 6.0.x), else the
# pure-Python one. Same events and marks; libyaml is ~5x faster on a 1,000-token file, the
# memory is the same (no tree either way). Both parse iteratively: only composing a tree recursed.
_FAST_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# No patrol configuration nests deeper than 6 levels (tokens[].consumers[].switch...); 64 leaves
# room for any hand-written file and refuses runaway brackets long before memory matters.
MAX_DEPTH = 64
_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = frozenset(_TAG + name for name in ("null", "bool", "int", "float", "str", "timestamp", "binary"))
_MERGE, _VALUE = _TAG + "merge", _TAG + "value"


class _Events(Protocol):
    """What the reader uses of a PyYAML loader (its stubs leave these untyped)."""

    def get_event(self) -> yaml.Event: ...
    def check_event(self, *choices: type[yaml.Event]) -> bool: ...
    def resolve(self, kind: type[yaml.Node], value: str | None, implicit: Any) -> str: ...
    def dispose(self) -> None: ...


def _start(event: yaml.Event) -> yaml.Mark:
    """Where ``event`` starts: both parsers always set it (libyaml's Mark has the same fields)."""
    return cast(yaml.Mark, event.start_mark)


class _TooDeep(yaml.YAMLError):
    """The document nests more than :data:`MAX_DEPTH` collections."""

    def __init__(self, mark: yaml.Mark) -> None:
        super().__init__(f"more than {MAX_DEPTH} levels of lists or mappings")
        self.mark = mark


class _Open:
    """A mapping or sequence whose end event has not come yet."""

    __slots__ = ("data", "key", "key_mark", "key_raw", "mark", "merge_key", "merges", "seen")

    def __init__(self, data: _Map | _Seq, mark: yaml.Mark) -> None:
        self.data = data
        self.mark = mark
        self.key: Any = None
        self.key_mark: yaml.Mark | None = None     # set while a mapping waits for the key's value
        self.key_raw: str | None = None            # the key as written, when it is a scalar
        self.merge_key = False
        self.merges: list[_Map] = []               # mappings merged with '<<', earliest wins
        self.seen: set[str] = set()

    def add(self, value: Any, mark: yaml.Mark, raw: str | None, tag: str | None) -> None:
        """Take the next item (a sequence's) or key or value (a mapping's)."""
        data = self.data
        if tag in (_MERGE, _VALUE) and (isinstance(data, _Seq) or self.key_mark is not None):
            raise yaml.constructor.ConstructorError(
                None, None, f"could not determine a constructor for the tag {tag!r}", mark)
        if isinstance(data, _Seq):
            data.append(value)
            data.item_lines.append(mark.line + 1)
        elif self.key_mark is None:
            if tag == _MERGE:
                self.key, self.key_mark, self.key_raw, self.merge_key = None, mark, None, True
                return
            if tag == _VALUE:                     # '=' as a key is a string (SafeConstructor)
                value = raw
            if not isinstance(value, Hashable):
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", self.mark, "found a key that is not a plain value", mark)
            if raw is not None:
                if raw in self.seen:
                    data.duplicates.append((raw, mark.line + 1))
                self.seen.add(raw)
            self.key, self.key_mark, self.key_raw, self.merge_key = value, mark, raw, False
        else:
            if self.merge_key:
                self._merge(value, mark)
            else:
                data[self.key] = value
                data.key_lines[self.key] = self.key_mark.line + 1
            self.key, self.key_mark, self.key_raw, self.merge_key = None, None, None, False

    def _merge(self, value: Any, mark: yaml.Mark) -> None:
        sources = list(value) if isinstance(value, _Seq) else [value]
        for source in sources:
            if not isinstance(source, _Map):
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", self.mark,
                    "expected a mapping or list of mappings for merging, but found "
                    f"{'a list' if isinstance(source, list) else 'a plain value'}", mark)
        self.merges.extend(sources)

    def close(self) -> _Map | _Seq:
        """The finished collection; merged keys go under the mapping's own (PyYAML's order)."""
        data = self.data
        if isinstance(data, _Map) and self.merges:
            own, own_lines = dict(data), dict(data.key_lines)
            data.clear()
            data.key_lines.clear()
            # Earlier merges win over later ones, the mapping's own keys over every merge.
            for source in reversed(self.merges):
                for key, item in source.items():
                    data[key] = item
                    data.key_lines[key] = source.key_lines.get(key, source.line)
            data.update(own)
            data.key_lines.update(own_lines)
        return data


def _scalar(loader: yaml.SafeLoader, event: yaml.ScalarEvent) -> tuple[Any, str]:
    """The scalar's value and tag, resolved and constructed as ``yaml.safe_load`` does."""
    tag = event.tag
    if tag is None or tag == "!":
        tag = cast(_Events, loader).resolve(yaml.ScalarNode, event.value, event.implicit)
    if tag in (_MERGE, _VALUE):
        return None, tag                            # meaningful as a key only (checked by the caller)
    if tag not in _SCALAR_TAGS:
        raise yaml.constructor.ConstructorError(
            None, None, f"could not determine a constructor for the tag {tag!r}", _start(event))
    node = yaml.ScalarNode(tag, event.value, _start(event), _start(event), style=event.style)
    return loader.yaml_constructors[tag](loader, node), tag


def _collection_tag(loader: yaml.SafeLoader, event: yaml.CollectionStartEvent, kind: type[yaml.Node]) -> None:
    tag = event.tag
    if tag is None or tag == "!":
        tag = cast(_Events, loader).resolve(kind, None, event.implicit)
    if tag != (_TAG + "map" if kind is yaml.MappingNode else _TAG + "seq"):
        raise yaml.constructor.ConstructorError(
            None, None, f"the tag {tag!r} is not used in a patrol configuration", _start(event))


def _read_document(loader: yaml.SafeLoader) -> Any:
    """Build the one document of the stream from its events (None for an empty stream)."""
    events = cast(_Events, loader)
    events.get_event()                              # StreamStart
    if events.check_event(yaml.StreamEndEvent):
        return None
    document = events.get_event()                   # DocumentStart
    anchors: dict[str, tuple[Any, yaml.Mark, str | None, str | None]] = {}
    stack: list[_Open] = []
    root: Any = None
    while not events.check_event(yaml.DocumentEndEvent):
        event = events.get_event()
        raw: str | None = None
        tag: str | None = None
        if isinstance(event, yaml.AliasEvent):
            if event.anchor not in anchors:
                raise yaml.composer.ComposerError(None, None, f"found undefined alias {event.anchor!r}",
                                                  _start(event))
            value, _, raw, tag = anchors[event.anchor]
            mark = _start(event)
        elif isinstance(event, yaml.CollectionEndEvent):
            done = stack.pop()
            value, mark = done.close(), done.mark
        else:
            anchor, mark = cast(yaml.NodeEvent, event).anchor, _start(event)
            if anchor is not None and anchor in anchors:
                raise yaml.composer.ComposerError(f"found duplicate anchor {anchor!r}; first occurrence",
                                                  anchors[anchor][1], "second occurrence", mark)
            if isinstance(event, yaml.ScalarEvent):
                value, tag = _scalar(loader, event)
                raw = event.value
            else:
                if len(stack) >= MAX_DEPTH:
                    raise _TooDeep(mark)
                is_map = isinstance(event, yaml.MappingStartEvent)
                _collection_tag(loader, cast(yaml.CollectionStartEvent, event),
                                yaml.MappingNode if is_map else yaml.SequenceNode)
                opened = _Open(_Map(mark.line + 1) if is_map else _Seq(mark.line + 1), mark)
                if anchor is not None:
                    anchors[anchor] = (opened.data, mark, None, None)
                stack.append(opened)
                continue
            if anchor is not None:
                anchors[anchor] = (value, mark, raw, tag)
        if stack:
            stack[-1].add(value, mark, raw, tag)
        elif tag in (_MERGE, _VALUE):
            raise yaml.constructor.ConstructorError(
                None, None, f"could not determine a constructor for the tag {tag!r}", mark)
        else:
            root = value
    events.get_event()                              # DocumentEnd
    if not events.check_event(yaml.StreamEndEvent):
        raise yaml.composer.ComposerError("expected a single document in the stream", _start(document),
                                          "but found another document", _start(events.get_event()))
    return root


def _read(loader_class: type[yaml.SafeLoader], text: str) -> Any:
    loader = loader_class(text)
    try:
        return _read_document(loader)
    finally:
        loader.dispose()


def _load_yaml(text: str, loader_class: type[yaml.SafeLoader] = _FAST_LOADER) -> Any:
    """The document in ``text``; a bad one raises the pure-Python parser's error, whichever parsed.

    libyaml words its errors differently ("did not find expected key"), and the messages are
    the product (docs/configuration.md quotes them): a file libyaml refuses is read again by
    the pure-Python parser, which gives the error (or, where the two disagree, the document).
    The reverse disagreement is kept: libyaml reads a tab used as a separator, or a '?' inside a
    flow scalar, where the pure parser refuses them (26 of 3,000 fuzzed files); such a file loads.
    """
    try:
        return _read(loader_class, text)
    except (yaml.YAMLError, UnicodeEncodeError) as exc:
        if loader_class is yaml.SafeLoader or isinstance(exc, _TooDeep):
            raise
        return _read(yaml.SafeLoader, text)


# --------------------------------------------------------------------------- problems and reading


class _Problems:
    def __init__(self, file: str) -> None:
        self.file = file
        self.items: list[ConfigProblem] = []

    def add(self, path: str, problem: str, fix: str, line: int | None) -> None:
        self.items.append(ConfigProblem(self.file, path, problem, fix, line))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind_of(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _closest(word: str, candidates: Collection[str]) -> str | None:
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", word).lower().replace("-", "_")
    if snake in candidates and snake != word:
        return snake
    found = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return found[0] if found else None


def _one_of(candidates: Collection[str]) -> str:
    return ", ".join(sorted(candidates)) if candidates else "(none defined)"


class _Section:
    """One YAML mapping at ``path``: typed getters that record problems and return fallbacks.

    Getters never raise; a wrong value yields a fallback so parsing goes on and every problem
    in the file is reported. The caller raises once at the end if anything was recorded.
    """

    def __init__(self, problems: _Problems, path: str, data: Mapping[Any, Any], *,
                 keys: Collection[str], rejected: Mapping[str, tuple[str, str]] | None = None,
                 base_dir: str = ".") -> None:
        self.problems = problems
        self.path = path
        self.data = data
        self.base_dir = base_dir
        self.line: int | None = getattr(data, "line", None)
        self._key_lines: Mapping[Any, int] = getattr(data, "key_lines", {})
        self._misspelled: set[str] = set()      # known keys an unknown key was taken for
        for key in data:
            if not isinstance(key, str):
                self.problem(path, f"key {key!r} is {_kind_of(key)}, not a name",
                             "keys are names such as 'tokens' or 'lifetime'", self.line_of(key))
            elif key in (rejected or {}):
                problem, fix = (rejected or {})[key]
                self.problem(_join(path, key), problem, fix, self.line_of(key))
            elif key not in keys:
                close = _closest(key, keys)
                if close:
                    self._misspelled.add(close)
                fix = (f"did you mean {close!r}?" if close
                       else f"remove it; keys allowed here: {_one_of(keys)}")
                self.problem(_join(path, key), f"unknown key {key!r}", fix, self.line_of(key))
        for key, line in getattr(data, "duplicates", []):
            self.problem(_join(path, key), f"key {key!r} is written twice in the same mapping",
                         "keep one; YAML would silently use the last", line)

    # -- plumbing

    def problem(self, path: str, problem: str, fix: str, line: int | None) -> None:
        self.problems.add(path, problem, fix, line)

    def line_of(self, key: Any) -> int | None:
        return self._key_lines.get(key, self.line)

    def sub(self, key: str) -> str:
        return _join(self.path, key)

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def _missing(self, key: str, example: str) -> None:
        if key in self._misspelled:
            return                              # the "did you mean" problem already says it
        if key in self.data:
            self.problem(self.sub(key), "has no value", f"write '{key}: {example}'", self.line_of(key))
        else:
            self.problem(self.sub(key), "required key is missing", f"add '{key}: {example}'", self.line)

    def _wrong_type(self, key: str, expected: str, fix: str, *, secret: bool = False) -> None:
        value = self.data[key]
        shown = "" if secret or isinstance(value, dict | list) else f" ({value!r})"
        self.problem(self.sub(key), f"expected {expected}, got {_kind_of(value)}{shown}", fix,
                     self.line_of(key))

    # -- scalars

    def _text(self, key: str, *, required: bool, example: str, pattern: re.Pattern[str] | None,
              rule: str, secret: bool, allow_int: bool = False) -> str | None:
        if not self.has(key):
            if required:
                self._missing(key, example)
            return None
        value = self.data[key]
        if allow_int and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            fix = "quote the value" if isinstance(value, int | float | bool) else f"write '{key}: {example}'"
            self._wrong_type(key, "a string", fix, secret=secret)
            return None
        if not value.strip():
            self.problem(self.sub(key), "is empty", f"write '{key}: {example}'", self.line_of(key))
            return None
        if pattern is not None and not pattern.fullmatch(value):
            shown = "the value" if secret else repr(value)
            self.problem(self.sub(key), f"{shown} is not a valid {key}", f"use {rule}", self.line_of(key))
            return None
        return value

    def required_text(self, key: str, example: str, *, pattern: re.Pattern[str] | None = None,
                      rule: str = "", secret: bool = False, allow_int: bool = False) -> str:
        value = self._text(key, required=True, example=example, pattern=pattern, rule=rule,
                           secret=secret, allow_int=allow_int)
        return value if value is not None else ""

    def optional_text(self, key: str, example: str, *, pattern: re.Pattern[str] | None = None,
                      rule: str = "", secret: bool = False) -> str | None:
        return self._text(key, required=False, example=example, pattern=pattern, rule=rule,
                          secret=secret)

    def text_or(self, key: str, default: str, *, pattern: re.Pattern[str] | None = None,
                rule: str = "") -> str:
        value = self._text(key, required=False, example=default, pattern=pattern, rule=rule,
                           secret=False)
        return value if value is not None else default

    def boolean(self, key: str, default: bool) -> bool:
        if not self.has(key):
            return default
        value = self.data[key]
        if not isinstance(value, bool):
            self._wrong_type(key, "true or false", f"write '{key}: true' or '{key}: false'")
            return default
        return value

    def integer(self, key: str, default: int, *, minimum: int) -> int:
        if not self.has(key):
            return default
        value = self.data[key]
        if not isinstance(value, int) or isinstance(value, bool):
            self._wrong_type(key, "a whole number", f"write e.g. '{key}: {default}'")
            return default
        if value < minimum:
            self.problem(self.sub(key), f"{value} is below the minimum {minimum}",
                         f"write a number of at least {minimum}", self.line_of(key))
            return default
        return value

    def duration(self, key: str, default: timedelta | None, *, example: str = "30d",
                 positive: bool = True) -> timedelta:
        """A duration; required when ``default`` is None."""
        fallback = default if default is not None else timedelta(0)
        if not self.has(key):
            if default is None:
                self._missing(key, example)
            return fallback
        value = self.data[key]
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            self._wrong_type(key, "a duration such as 90s, 15m, 26h or 30d", f"write '{key}: {example}'")
            return fallback
        try:
            parsed = parse_duration(value)
        except DurationError as exc:
            self.problem(self.sub(key), exc.problem, exc.fix, self.line_of(key))
            return fallback
        if positive and parsed <= timedelta(0):
            self.problem(self.sub(key), "must be longer than zero", f"write e.g. '{key}: {example}'",
                         self.line_of(key))
            return fallback
        return parsed

    def choice(self, key: str, choices: tuple[str, ...], default: str | None, *,
               label: str = "") -> str:
        """One of ``choices``; required when ``default`` is None."""
        if not self.has(key):
            if default is None:
                self._missing(key, f"{choices[0]}' ({label or 'one of'}: {', '.join(choices)})")
                return ""
            return default
        value = self.data[key]
        if value not in choices:
            close = _closest(value, choices) if isinstance(value, str) else None
            fix = f"did you mean {close!r}? " if close else ""
            fix += f"{key} is one of: {', '.join(choices)}"
            shown = repr(value) if isinstance(value, str | int | float | bool) else _kind_of(value)
            self.problem(self.sub(key), f"{shown} is not a valid {key}", fix, self.line_of(key))
            return default or ""
        return cast(str, value)

    def url(self, key: str, *, required: bool, https_only: bool, example: str) -> str | None:
        value = self._text(key, required=required, example=example, pattern=None, rule="",
                           secret=False)
        if value is None:
            return None
        parts = urlsplit(value)
        schemes = ("https",) if https_only else ("https", "http")
        if parts.scheme not in schemes or not parts.hostname:
            if https_only and parts.scheme == "http":
                fix = f"use https:// (the service only speaks TLS), e.g. '{key}: {example}'"
            else:
                fix = f"write a full URL such as '{key}: {example}'"
            self.problem(self.sub(key), f"{value!r} is not an {'https' if https_only else 'http(s)'} URL",
                         fix, self.line_of(key))
            return None
        return value.rstrip("/")

    def file_path(self, key: str) -> str | None:
        """A file or directory path; relative ones are resolved against the config's directory."""
        value = self._text(key, required=False, example="path/to/file", pattern=None, rule="",
                           secret=False)
        return None if value is None else _resolve(self.base_dir, value)

    # -- nesting

    def section(self, key: str, keys: Collection[str], *, required: bool = False,
                rejected: Mapping[str, tuple[str, str]] | None = None,
                example: str = "{...}") -> _Section | None:
        if not self.has(key):
            if required:
                self._missing(key, example)
            return None
        return _as_section(self.problems, self.sub(key), self.data[key], self.line_of(key),
                           keys=keys, rejected=rejected, base_dir=self.base_dir)

    def items(self, key: str, *, required: bool, example: str) -> list[tuple[str, Any, int | None]]:
        """(path, value, line) for each item of a list; [] after recording a problem."""
        if not self.has(key):
            if required:
                self._missing(key, example)
            return []
        value = self.data[key]
        if not isinstance(value, list):
            self._wrong_type(key, "a list", f"write '{key}: {example}'")
            return []
        if not value and required:
            self.problem(self.sub(key), "is empty", f"list at least one: '{key}: {example}'",
                         self.line_of(key))
        lines: list[int] = getattr(value, "item_lines", [])
        return [(f"{self.sub(key)}[{i}]", item, lines[i] if i < len(lines) else self.line_of(key))
                for i, item in enumerate(value)]


def _as_section(problems: _Problems, path: str, value: Any, line: int | None, *,
                keys: Collection[str], rejected: Mapping[str, tuple[str, str]] | None,
                base_dir: str) -> _Section | None:
    if not isinstance(value, dict):
        problems.add(path, f"expected a mapping (key: value lines), got {_kind_of(value)}",
                     f"write it as keys, e.g. {{{', '.join(sorted(keys)[:3])}, ...}}", line)
        return None
    return _Section(problems, path, value, keys=keys, rejected=rejected, base_dir=base_dir)


def _resolve(base_dir: str, value: str) -> str:
    expanded = os.path.expanduser(value)
    if os.path.isabs(expanded):
        return os.path.normpath(expanded)
    return os.path.normpath(os.path.join(base_dir, expanded))


# --------------------------------------------------------------------------- the schema

_TOP_KEYS = ("organizations", "clusters", "tokens", "azure", "exporter", "worker", "alerts")
_ORG_KEYS = ("name", "url", "vssps_url", "vsrm_url", "credential")
_CRED_COMMON = ("kind", "tenant_id", "client_id", "authority")
_CRED_BY_KIND: dict[str, tuple[str, ...]] = {
    "username-password": ("username_env", "password_env", "from_keyvault"),
    "device-code": ("cache_name", "record_file"),
    "azure-cli": (),
    "environment": (),
}
_CRED_KINDS: tuple[CredentialKind, ...] = ("username-password", "device-code", "azure-cli", "environment")
_NO_SECRETS_FIX = "never write a secret into the config file"
_CRED_REJECTED = {
    "password": ("a password written in the config file",
                 f"{_NO_SECRETS_FIX}: use 'password_env: VAR' or 'from_keyvault'"),
    "username": ("a username written in the config file is not read",
                 "use 'username_env: VAR' or 'from_keyvault'"),
}
_AZURE_KEYS = ("credential", "tenant_id", "client_id", "client_secret_env", "client_secret_file",
               "authority", "ca_bundle", "verify_challenge_resource")
_AZURE_KINDS: tuple[AzureCredentialKind, ...] = ("default", "client-secret", "managed-identity",
                                                  "azure-cli", "environment")
_AZURE_REJECTED = {
    "client_secret": ("a client secret written in the config file",
                      f"{_NO_SECRETS_FIX}: use 'client_secret_file' (a mounted Secret) or "
                      "'client_secret_env'"),
}
_CLUSTER_KEYS = ("name", "context", "kubeconfig", "in_cluster")
_GLOBAL_PAT = ("global PATs (allOrgs) are not supported: Azure DevOps retires them on 1 Dec 2026",
               "remove it; patrol always creates PATs for one organization (allOrgs: false); "
               "configure one token per organization")
_TOKEN_KEYS = ("name", "organization", "scopes", "lifetime", "renew_before", "sinks", "consumers",
               "pipeline", "drain_max")
_ALL_ORGS_KEYS = ("allOrgs", "all_orgs", "allorgs", "all-orgs")
_ALL_ORGS_FALSE = ("not a setting: patrol always creates PATs for one organization (allOrgs: false)",
                   "remove it")
_SINK_KINDS = ("kubernetes-secret", "keyvault")
_SINK_KEYS: dict[str, tuple[str, ...]] = {
    "kubernetes-secret": ("kind", "cluster", "namespace", "secret", "key", "flux", "refresh_interval"),
    "keyvault": ("kind", "vault_url", "secret", "refresh_interval"),
}
_ALL_SINK_KEYS = tuple(dict.fromkeys(k for keys in _SINK_KEYS.values() for k in keys))
_FLUX: tuple[FluxPolicy, ...] = ("refuse", "ignore-drift-risk")
ConsumerKind = Literal["keda-scaledjob", "keda-scaledobject"]
_CONSUMER_KINDS: tuple[ConsumerKind, ...] = ("keda-scaledjob", "keda-scaledobject")
_CONSUMER_KEYS = ("kind", "cluster", "namespace", "name", "pool", "switch")
_SWITCH_MODES: tuple[SwitchMode, ...] = ("auto", "refresh", "bump")
_PIPELINE_KEYS = ("project", "definition", "max_age", "timeout")
_EXPORTER_KEYS = ("listen", "pat_interval", "validity_interval", "keda_interval", "pools_interval",
                  "pipeline_interval", "concurrency")
_WORKER_KEYS = ("listen", "webhook_token_file", "state_dir", "cooldown", "verify_deadline",
                "reconcile_interval", "lease",
                "decision_retention", "rotation_retention", "decisions_per_minute", "url",
                "rotate_alertnames")
_WORKER_REJECTED = {
    "webhook_token": ("a webhook token written in the config file",
                      f"{_NO_SECRETS_FIX}: use 'webhook_token_file' or the PATROL_WEBHOOK_TOKEN "
                      "environment variable"),
}
_LEASE_KEYS = ("cluster", "namespace", "name", "duration")
_ALERTNAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ALERTS_KEYS = ("runbook_base_url", "extra_labels", "prometheusrule_labels", "exporter_job", "worker_job")
# Labels an alert's meaning rests on: the routes, the worker's screen, Prometheus itself.
_RESERVED_ALERT_LABELS = ("alertname", "severity", "remediation", "token", "compromised", "alertstate")
_PROMETHEUS_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# A Kubernetes label key: optional DNS-subdomain prefix and '/', then a name of up to 63 characters.
_K8S_LABEL_KEY = re.compile(r"([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_K8S_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")


class _Parser:
    def __init__(self, file: str, base_dir: str) -> None:
        self.problems = _Problems(file)
        self.base_dir = base_dir
        self.org_names: set[str] = set()
        self.cluster_names: set[str] = set()
        self.sink_owner: dict[str, str] = {}

    def example(self, names: set[str], fallback: str) -> str:
        return min((n for n in names if n), default=fallback)

    def items_of(self, path: str, value: Any, line: int | None, keys: Collection[str],
                 rejected: Mapping[str, tuple[str, str]] | None = None) -> _Section | None:
        return _as_section(self.problems, path, value, line, keys=keys, rejected=rejected,
                           base_dir=self.base_dir)

    def unique(self, sec: _Section, name: str, seen: dict[str, str], what: str) -> None:
        if not name:
            return
        if name in seen:
            sec.problem(sec.sub("name"), f"{what} name {name!r} is already used by {seen[name]}",
                        "give each one a different name", sec.line_of("name"))
        else:
            seen[name] = sec.path

    def reference(self, sec: _Section, key: str, name: str, known: set[str], what: str) -> None:
        if not name or name in known:
            return
        close = _closest(name, known)
        fix = f"did you mean {close!r}? " if close else ""
        fix += f"define it under '{what}s:' or use one of: {_one_of(known)}"
        sec.problem(sec.sub(key), f"unknown {what} {name!r}", fix, sec.line_of(key))

    # -- top level

    def config(self, data: Any) -> Config | None:
        file = self.problems.file
        if data is None:
            self.problems.add("", "the file is empty",
                              "write organizations:, clusters: and tokens: (see `patrol config example`)",
                              None)
            return None
        top = self.items_of("", data, getattr(data, "line", 1), _TOP_KEYS)
        if top is None:
            return None
        azure_sec = top.section("azure", _AZURE_KEYS, rejected=_AZURE_REJECTED)
        azure = self.azure(azure_sec) if azure_sec else AzureSettings()
        orgs = self.organizations(top)
        clusters = self.clusters(top)
        tokens = self.tokens(top)
        exporter_sec = top.section("exporter", _EXPORTER_KEYS)
        exporter = self.exporter(exporter_sec) if exporter_sec else ExporterSettings()
        worker_sec = top.section("worker", _WORKER_KEYS, rejected=_WORKER_REJECTED)
        worker = self.worker(worker_sec) if worker_sec else WorkerSettings()
        alerts_sec = top.section("alerts", _ALERTS_KEYS)
        alerts = self.alerts(alerts_sec) if alerts_sec else AlertSettings()
        return Config(source=file, organizations=orgs, clusters=clusters, tokens=tokens,
                      azure=azure, exporter=exporter, worker=worker, alerts=alerts)

    # -- organizations

    def organizations(self, top: _Section) -> tuple[Organization, ...]:
        result: list[Organization] = []
        seen: dict[str, str] = {}
        for path, value, line in top.items("organizations", required=True,
                                           example="[{name: myorg, url: https://dev.azure.com/myorg, "
                                                   "credential: {...}}]"):
            sec = self.items_of(path, value, line, _ORG_KEYS)
            if sec is None:
                continue
            name = sec.required_text("name", "myorg")
            self.unique(sec, name, seen, "organization")
            self.org_names.add(name)
            url, vssps, vsrm = self.org_urls(sec)
            cred_sec = sec.section("credential", [*_CRED_COMMON, *_CRED_BY_KIND["username-password"],
                                                  *_CRED_BY_KIND["device-code"]],
                                   required=True, rejected=_CRED_REJECTED,
                                   example="{kind: username-password, username_env: VAR, password_env: VAR}")
            credential = self.credential(cred_sec) if cred_sec else UserCredential(kind="azure-cli")
            result.append(Organization(name=name, url=url, vssps_url=vssps, vsrm_url=vsrm,
                                       credential=credential))
        return tuple(result)

    def org_urls(self, sec: _Section) -> tuple[str, str, str]:
        url = sec.url("url", required=True, https_only=False, example="https://dev.azure.com/myorg")
        vssps = sec.url("vssps_url", required=False, https_only=False,
                        example="https://vssps.dev.azure.com/myorg")
        vsrm = sec.url("vsrm_url", required=False, https_only=False,
                       example="https://vsrm.dev.azure.com/myorg")
        if url is None:
            return "", vssps or "", vsrm or ""
        parts = urlsplit(url)
        segments = [s for s in parts.path.split("/") if s]
        host = (parts.hostname or "").lower()
        if host == "dev.azure.com":
            if parts.scheme != "https" or len(segments) != 1 or parts.query or parts.fragment:
                org = segments[0] if segments else "myorg"
                sec.problem(sec.sub("url"), f"{url!r} is not an organization URL",
                            f"write 'url: https://dev.azure.com/{org}' (the organization only, no "
                            "project or other path)", sec.line_of("url"))
                return url, vssps or "", vsrm or ""
            org = segments[0]
            return (url, vssps or f"https://vssps.dev.azure.com/{org}",
                    vsrm or f"https://vsrm.dev.azure.com/{org}")
        if vssps is None or vsrm is None:
            if host.endswith(".visualstudio.com"):
                org = host.split(".", 1)[0]
                fix = (f"write 'url: https://dev.azure.com/{org}' (the current form of this legacy URL) "
                       "and the vssps/vsrm URLs are derived")
            else:
                missing = " and ".join(k for k, v in (("vssps_url", vssps), ("vsrm_url", vsrm)) if v is None)
                fix = (f"add {missing} (for Azure DevOps: https://vssps.dev.azure.com/{{org}} and "
                       "https://vsrm.dev.azure.com/{org}), or use the https://dev.azure.com/{org} form")
            sec.problem(sec.sub("url"),
                        "vssps_url and vsrm_url can only be derived from a https://dev.azure.com/{org} URL",
                        fix, sec.line_of("url"))
        return url, vssps or "", vsrm or ""

    def credential(self, sec: _Section) -> UserCredential:
        kind = sec.choice("kind", _CRED_KINDS, None, label="credential kinds")
        for other_kind, keys in _CRED_BY_KIND.items():
            if kind and other_kind != kind:
                for key in keys:
                    if key in sec.data and key not in _CRED_BY_KIND.get(kind, ()):
                        sec.problem(sec.sub(key), f"'{key}' applies only to kind {other_kind}",
                                    f"remove it, or set 'kind: {other_kind}'", sec.line_of(key))
        tenant = sec.text_or("tenant_id", "organizations")
        client = sec.text_or("client_id", UserCredential.client_id)
        authority = sec.url("authority", required=False, https_only=True,
                            example="https://login.microsoftonline.com") or UserCredential.authority
        username_env = password_env = None
        from_kv: KeyVaultSecretRef | None = None
        if kind == "username-password":
            username_env = sec.optional_text("username_env", "BOT_USERNAME", pattern=_ENV_NAME,
                                             rule="an environment variable name (letters, digits, _)",
                                             secret=True)
            password_env = sec.optional_text("password_env", "BOT_PASSWORD", pattern=_ENV_NAME,
                                             rule="an environment variable name (letters, digits, _)",
                                             secret=True)
            kv_sec = sec.section("from_keyvault", ("vault_url", "username_secret", "password_secret"))
            if kv_sec is not None:
                from_kv = KeyVaultSecretRef(
                    vault_url=kv_sec.url("vault_url", required=True, https_only=True,
                                         example="https://myvault.vault.azure.net") or "",
                    username_secret=kv_sec.required_text("username_secret", "bot-username",
                                                         pattern=_KEYVAULT_NAME,
                                                         rule="a Key Vault secret name (letters, digits, -)"),
                    password_secret=kv_sec.required_text("password_secret", "bot-password",
                                                         pattern=_KEYVAULT_NAME,
                                                         rule="a Key Vault secret name (letters, digits, -)"),
                )
            has_env = sec.has("username_env") or sec.has("password_env")
            has_kv = sec.has("from_keyvault")
            if has_env and has_kv:
                sec.problem(sec.path, "both *_env and from_keyvault are set",
                            "choose one source for the bot's username and password", sec.line)
            elif not has_kv and not (sec.has("username_env") and sec.has("password_env")):
                sec.problem(sec.path, "kind username-password needs the username and the password",
                            "add 'username_env: VAR' and 'password_env: VAR', or 'from_keyvault: "
                            "{vault_url: ..., username_secret: ..., password_secret: ...}'", sec.line)
        cache_name = sec.text_or("cache_name", "patrol")
        record_file = sec.file_path("record_file")
        return UserCredential(kind=cast(CredentialKind, kind or "azure-cli"), tenant_id=tenant,
                              client_id=client, authority=authority, username_env=username_env,
                              password_env=password_env, from_keyvault=from_kv,
                              cache_name=cache_name, record_file=record_file)

    # -- clusters

    def clusters(self, top: _Section) -> tuple[Cluster, ...]:
        result: list[Cluster] = []
        seen: dict[str, str] = {}
        for path, value, line in top.items("clusters", required=False,
                                           example="[{name: prod, context: prod}]"):
            sec = self.items_of(path, value, line, _CLUSTER_KEYS)
            if sec is None:
                continue
            name = sec.required_text("name", "prod")
            self.unique(sec, name, seen, "cluster")
            self.cluster_names.add(name)
            context = sec.optional_text("context", "prod")
            kubeconfig = sec.file_path("kubeconfig")
            in_cluster = sec.boolean("in_cluster", False)
            if in_cluster and sec.has("context"):
                sec.problem(sec.path, "both 'context' and 'in_cluster: true' are set",
                            "keep 'context' (and optional 'kubeconfig') to use a kubeconfig, or "
                            "'in_cluster: true' for the pod's service account, not both", sec.line)
            elif in_cluster and sec.has("kubeconfig"):
                sec.problem(sec.sub("kubeconfig"), "'kubeconfig' is not read with 'in_cluster: true'",
                            "remove kubeconfig, or replace in_cluster with 'context: NAME'",
                            sec.line_of("kubeconfig"))
            elif not in_cluster and not sec.has("context"):
                sec.problem(sec.path, "a cluster needs 'context' or 'in_cluster: true'",
                            "add 'context: NAME' (a kubeconfig context) or 'in_cluster: true' (when "
                            "patrol runs inside this cluster)", sec.line)
            result.append(Cluster(name=name, context=context, kubeconfig=kubeconfig,
                                  in_cluster=in_cluster))
        return tuple(result)

    # -- tokens

    def tokens(self, top: _Section) -> tuple[Token, ...]:
        result: list[Token] = []
        seen: dict[str, str] = {}
        for path, value, line in top.items("tokens", required=True,
                                           example="[{name: keda, organization: myorg, ...}]"):
            rejected = {key: _ALL_ORGS_FALSE if isinstance(value, dict) and value.get(key) is False
                        else _GLOBAL_PAT for key in _ALL_ORGS_KEYS}
            sec = self.items_of(path, value, line, _TOKEN_KEYS, rejected)
            if sec is None:
                continue
            name = sec.required_text("name", "keda", pattern=_DNS_LABEL,
                                     rule=f"a short name: {_LABEL_RULE}")
            self.unique(sec, name, seen, "token")
            org = sec.required_text("organization", self.example(self.org_names, "myorg"))
            self.reference(sec, "organization", org, self.org_names, "organization")
            scopes = self.scopes(sec)
            lifetime = sec.duration("lifetime", None, example="30d")
            renew_before = sec.duration("renew_before", None, example="7d")
            if lifetime > MAX_LIFETIME:
                sec.problem(sec.sub("lifetime"), "is longer than one year, the longest PAT Azure DevOps "
                            "issues", "write 365d or less (org policy may clamp it further)",
                            sec.line_of("lifetime"))
            if lifetime and renew_before and renew_before >= lifetime:
                sec.problem(sec.sub("renew_before"), "must be shorter than lifetime, or every new "
                            "token would be due for renewal at once",
                            "e.g. 'lifetime: 30d' with 'renew_before: 7d'", sec.line_of("renew_before"))
            sinks = self.sinks(sec, name)
            consumers = self.consumers(sec)
            pipeline_sec = sec.section("pipeline", _PIPELINE_KEYS)
            pipeline = self.pipeline(pipeline_sec) if pipeline_sec else None
            drain_max = sec.duration("drain_max", None, example="2h") if sec.has("drain_max") else None
            result.append(Token(name=name, organization=org, scopes=scopes, lifetime=lifetime,
                                renew_before=renew_before, sinks=sinks, consumers=consumers,
                                pipeline=pipeline, drain_max=drain_max))
        return tuple(result)

    def scopes(self, sec: _Section) -> tuple[str, ...]:
        if sec.has("scopes") and isinstance(sec.data["scopes"], str):
            words = sec.data["scopes"].split()
            sec.problem(sec.sub("scopes"), "expected a list of scopes, got a string",
                        f"write 'scopes: [{', '.join(words) or 'vso.agentpools'}]'", sec.line_of("scopes"))
            return ()
        result: list[str] = []
        for path, value, line in sec.items("scopes", required=True, example="[vso.agentpools_manage]"):
            if not isinstance(value, str):
                sec.problem(path, f"expected a scope name, got {_kind_of(value)}",
                            "write a scope such as vso.agentpools_manage", line)
            elif value in _FULL_ACCESS:
                sec.problem(path, f"{value!r} grants full access to everything the bot account can do",
                            "least privilege: list only the scopes this token needs, e.g. "
                            "vso.agentpools_manage for KEDA", line)
            elif value not in ADO_SCOPES:
                close = _closest(value, ADO_SCOPES)
                fix = f"did you mean {close!r}?" if close else (
                    "use an Azure DevOps scope name such as vso.agentpools_manage or vso.build "
                    "(see docs/configuration.md)")
                sec.problem(path, f"unknown Azure DevOps scope {value!r}", fix, line)
            elif value in result:
                sec.problem(path, f"scope {value!r} is listed twice", "list it once", line)
            else:
                result.append(value)
        return tuple(result)

    def sinks(self, token: _Section, token_name: str) -> tuple[Sink, ...]:
        result: list[Sink] = []
        for path, value, line in token.items(
                "sinks", required=True,
                example="[{kind: kubernetes-secret, cluster: prod, namespace: ns, secret: name}]"):
            kind = value.get("kind") if isinstance(value, dict) else None
            keys = _SINK_KEYS.get(kind, _ALL_SINK_KEYS) if isinstance(kind, str) else _ALL_SINK_KEYS
            sec = self.items_of(path, value, line, keys)
            if sec is None:
                continue
            kind = sec.choice("kind", _SINK_KINDS, None, label="sink kinds")
            known_problems = len(self.problems.items)
            sink: Sink | None = None
            if kind == "kubernetes-secret":
                cluster = sec.required_text("cluster", self.example(self.cluster_names, "prod"))
                self.reference(sec, "cluster", cluster, self.cluster_names, "cluster")
                sink = KubernetesSecretSink(
                    cluster=cluster,
                    namespace=sec.required_text("namespace", "azure-devops", pattern=_DNS_LABEL,
                                                rule=f"a Kubernetes namespace name: {_LABEL_RULE}"),
                    secret=sec.required_text("secret", "azure-devops-token", pattern=_DNS_SUBDOMAIN,
                                             rule=f"a Kubernetes Secret name: {_SUBDOMAIN_RULE}"),
                    key=sec.text_or("key", "token", pattern=_SECRET_KEY,
                                    rule="a Secret data key: letters, digits, '-', '_' and '.'"),
                    flux=cast(FluxPolicy, sec.choice("flux", _FLUX, "refuse")),
                    refresh_interval=self.refresh_interval(sec),
                )
            elif kind == "keyvault":
                sink = KeyVaultSink(
                    vault_url=sec.url("vault_url", required=True, https_only=True,
                                      example="https://myvault.vault.azure.net") or "",
                    secret=sec.required_text("secret", "azure-devops-token", pattern=_KEYVAULT_NAME,
                                             rule="a Key Vault secret name: letters, digits and '-', "
                                                  "at most 127"),
                    refresh_interval=self.refresh_interval(sec),
                )
            if sink is None or len(self.problems.items) > known_problems:
                continue
            if sink.id in self.sink_owner:
                owner = self.sink_owner[sink.id]
                problem = (f"sink {sink.id} is listed twice" if owner.startswith(token.path + ".")
                           else f"sink {sink.id} is also written by {owner}")
                sec.problem(path, problem, "each Secret/Key Vault secret must have exactly one writer; "
                            "remove the duplicate", line)
            else:
                self.sink_owner[sink.id] = path
                result.append(sink)
        return tuple(result)

    def consumers(self, token: _Section) -> tuple[KedaConsumer, ...]:
        result: list[KedaConsumer] = []
        seen: set[tuple[str, str, str, str]] = set()
        for path, value, line in token.items("consumers", required=False,
                                             example="[{kind: keda-scaledjob, cluster: prod, ...}]"):
            sec = self.items_of(path, value, line, _CONSUMER_KEYS)
            if sec is None:
                continue
            kind = sec.choice("kind", _CONSUMER_KINDS, None, label="consumer kinds")
            cluster = sec.required_text("cluster", self.example(self.cluster_names, "prod"))
            self.reference(sec, "cluster", cluster, self.cluster_names, "cluster")
            consumer = KedaConsumer(
                kind=cast(ConsumerKind, kind or "keda-scaledjob"),
                cluster=cluster,
                namespace=sec.required_text("namespace", "azure-devops", pattern=_DNS_LABEL,
                                            rule=f"a Kubernetes namespace name: {_LABEL_RULE}"),
                name=sec.required_text("name", "azure-devops-agent", pattern=_DNS_SUBDOMAIN,
                                       rule=f"a Kubernetes object name: {_SUBDOMAIN_RULE}"),
                pool=sec.required_text("pool", "my-agent-pool"),
                switch=self.switch(sec, kind),
            )
            ident = (consumer.kind, consumer.cluster, consumer.namespace, consumer.name)
            if ident in seen:
                sec.problem(path, f"consumer {consumer.k8s_kind} {consumer.cluster}/{consumer.namespace}/"
                            f"{consumer.name} is listed twice", "remove the duplicate", line)
                continue
            seen.add(ident)
            result.append(consumer)
        return tuple(result)

    def pipeline(self, sec: _Section) -> PipelineCheck:
        return PipelineCheck(
            project=sec.required_text("project", "MyProject"),
            definition=sec.required_text("definition", "daily-checks", allow_int=True),
            max_age=sec.duration("max_age", PipelineCheck.max_age, example="26h"),
            timeout=sec.duration("timeout", PipelineCheck.timeout, example="60m"),
        )

    def refresh_interval(self, sec: _Section) -> timedelta:
        return sec.duration("refresh_interval", timedelta(0), example="1h", positive=False)

    def switch(self, sec: _Section, kind: str) -> SwitchMode:
        mode = cast(SwitchMode, sec.choice("switch", _SWITCH_MODES, "auto", label="switch modes"))
        if mode == "bump" and kind == "keda-scaledobject":
            sec.problem(sec.sub("switch"), "a ScaledObject cannot be bumped: it has no pod template and "
                        "no spec field patrol may safely change",
                        "remove 'switch' (or write 'switch: refresh'): a ScaledObject always picks up "
                        "the new PAT on KEDA's first failed poll after the revoke", sec.line_of("switch"))
            return "refresh"
        return mode

    # -- services

    def azure(self, sec: _Section) -> AzureSettings:
        kind = sec.choice("credential", _AZURE_KINDS, "default", label="credential kinds")
        tenant = sec.optional_text("tenant_id", "00000000-0000-0000-0000-000000000000")
        client = sec.optional_text("client_id", "00000000-0000-0000-0000-000000000000")
        secret_env = sec.optional_text("client_secret_env", "AZURE_CLIENT_SECRET", pattern=_ENV_NAME,
                                       rule="an environment variable name (letters, digits, _)",
                                       secret=True)
        secret_file = sec.file_path("client_secret_file")
        if kind == "client-secret":
            for key, value in (("tenant_id", tenant), ("client_id", client)):
                if value is None and not sec.has(key):
                    sec.problem(sec.sub(key), "required with 'credential: client-secret'",
                                f"add '{key}: <uuid>'", sec.line)
            if not sec.has("client_secret_env") and not sec.has("client_secret_file"):
                sec.problem(sec.path, "'credential: client-secret' needs the secret",
                            "add 'client_secret_file: PATH' (a mounted Secret) or "
                            "'client_secret_env: VAR'", sec.line)
        else:
            for key in ("client_secret_env", "client_secret_file"):
                if key in sec.data:
                    sec.problem(sec.sub(key), f"'{key}' applies only to 'credential: client-secret'",
                                "remove it, or set 'credential: client-secret'", sec.line_of(key))
        return AzureSettings(
            credential=cast(AzureCredentialKind, kind or "default"),
            tenant_id=tenant, client_id=client,
            client_secret_env=secret_env, client_secret_file=secret_file,
            authority=sec.url("authority", required=False, https_only=True,
                              example="https://login.microsoftonline.com") or AzureSettings.authority,
            ca_bundle=sec.file_path("ca_bundle"),
            verify_challenge_resource=sec.boolean("verify_challenge_resource", True),
        )

    def listen(self, sec: _Section, default: str) -> str:
        value = sec.text_or("listen", default)
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535 or \
                (host.startswith("[") != host.endswith("]")):
            sec.problem(sec.sub("listen"), f"{value!r} is not HOST:PORT",
                        f"write e.g. 'listen: {default}' (use [::] for IPv6)", sec.line_of("listen"))
            return default
        return value

    def exporter(self, sec: _Section) -> ExporterSettings:
        d = ExporterSettings()
        return ExporterSettings(
            listen=self.listen(sec, d.listen),
            pat_interval=sec.duration("pat_interval", d.pat_interval, example="5m"),
            validity_interval=sec.duration("validity_interval", d.validity_interval, example="5m"),
            keda_interval=sec.duration("keda_interval", d.keda_interval, example="30s"),
            pools_interval=sec.duration("pools_interval", d.pools_interval, example="30s"),
            pipeline_interval=sec.duration("pipeline_interval", d.pipeline_interval, example="5m"),
            concurrency=sec.integer("concurrency", d.concurrency, minimum=1),
        )

    def worker(self, sec: _Section) -> WorkerSettings:
        d = WorkerSettings()
        lease_sec = sec.section("lease", _LEASE_KEYS)
        lease: LeaseSettings | None = None
        if lease_sec is not None:
            cluster = lease_sec.required_text("cluster", self.example(self.cluster_names, "prod"))
            self.reference(lease_sec, "cluster", cluster, self.cluster_names, "cluster")
            lease = LeaseSettings(
                cluster=cluster,
                namespace=lease_sec.required_text("namespace", "patrol", pattern=_DNS_LABEL,
                                                  rule=f"a Kubernetes namespace name: {_LABEL_RULE}"),
                name=lease_sec.text_or("name", LeaseSettings.name, pattern=_DNS_SUBDOMAIN,
                                       rule=f"a Lease name: {_SUBDOMAIN_RULE}"),
                duration=lease_sec.duration("duration", LeaseSettings.duration, example="15s"),
            )
        return WorkerSettings(
            listen=self.listen(sec, d.listen),
            webhook_token_file=sec.file_path("webhook_token_file"),
            state_dir=sec.file_path("state_dir") or d.state_dir,
            cooldown=sec.duration("cooldown", d.cooldown, example="10m", positive=False),
            verify_deadline=sec.duration("verify_deadline", d.verify_deadline, example="5m"),
            reconcile_interval=sec.duration("reconcile_interval", d.reconcile_interval, example="5m"),
            lease=lease,
            url=sec.url("url", required=False, https_only=False, example="http://patrol-worker.patrol.svc:9878"),
            rotate_alertnames=self.alertnames(sec, "rotate_alertnames", d.rotate_alertnames),
            **self.journal_bounds(sec, d),
        )

    def alerts(self, sec: _Section) -> AlertSettings:
        job_rule = "a Prometheus job name as it appears in up{job=...}"
        return AlertSettings(
            runbook_base_url=sec.url("runbook_base_url", required=False, https_only=False,
                                     example="https://wiki.example.org/patrol/runbook"),
            extra_labels=self.labels(
                sec, "extra_labels", _PROMETHEUS_LABEL, None,
                "a Prometheus label name: letters, digits and _, not starting with a digit",
                reserved=_RESERVED_ALERT_LABELS),
            prometheusrule_labels=self.labels(
                sec, "prometheusrule_labels", _K8S_LABEL_KEY, _K8S_LABEL_VALUE,
                "a Kubernetes label key such as 'release' or 'example.org/team'"),
            exporter_job=sec.optional_text("exporter_job", "patrol-exporter", rule=job_rule),
            worker_job=sec.optional_text("worker_job", "patrol-worker", rule=job_rule),
        )

    def labels(self, sec: _Section, key: str, name_pattern: re.Pattern[str],
               value_pattern: re.Pattern[str] | None, name_rule: str, *,
               reserved: tuple[str, ...] = ()) -> tuple[tuple[str, str], ...]:
        """A mapping of label names to string values, checked against the label syntax."""
        if not sec.has(key):
            return ()
        data = sec.data[key]
        if not isinstance(data, dict):
            sec.problem(sec.sub(key), f"expected a mapping of label names to values, got {_kind_of(data)}",
                        f"write it as '{key}: {{team: platform}}'", sec.line_of(key))
            return ()
        key_lines: Mapping[Any, int] = getattr(data, "key_lines", {})
        result: list[tuple[str, str]] = []
        for name, value in data.items():
            path, line = _join(sec.sub(key), str(name)), key_lines.get(name, sec.line_of(key))
            if not isinstance(name, str):
                sec.problem(path, f"label name {name!r} is {_kind_of(name)}", f"use {name_rule}", line)
                continue
            if name in reserved or name.startswith("__"):
                sec.problem(path, f"label {name!r} is patrol's or Prometheus' own",
                            "choose another name: patrol's routes and the worker rely on "
                            f"{', '.join(reserved)}", line)
            elif not name_pattern.fullmatch(name):
                sec.problem(path, f"{name!r} is not a valid label name", f"use {name_rule}", line)
            elif isinstance(value, bool) or not isinstance(value, str | int | float):
                sec.problem(path, f"expected a string, got {_kind_of(value)}",
                            f"write '{name}: \"some-value\"'", line)
            elif value_pattern is not None and not value_pattern.fullmatch(str(value)):
                sec.problem(path, f"{str(value)!r} is not a valid Kubernetes label value",
                            "use at most 63 letters, digits, '-', '_' or '.', starting and ending "
                            "with a letter or digit", line)
            else:
                result.append((name, str(value)))
        return tuple(result)

    def alertnames(self, sec: _Section, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        """A non-empty list of alert names (Prometheus rule names), duplicates removed."""
        example = "[" + ", ".join(default) + "]"
        if not sec.has(key):
            return default
        names: list[str] = []
        for path, value, line in sec.items(key, required=True, example=example):
            if not isinstance(value, str) or not _ALERTNAME.fullmatch(value):
                shown = repr(value) if isinstance(value, str | int | float | bool) else _kind_of(value)
                sec.problem(path, f"{shown} is not an alert name",
                            "write the name of a Prometheus alerting rule, e.g. 'PatInvalid' "
                            "(letters, digits and _, not starting with a digit)", line)
            elif value not in names:
                names.append(value)
        return tuple(names) if names else default

    def journal_bounds(self, sec: _Section, d: WorkerSettings) -> dict[str, Any]:
        decisions = sec.duration("decision_retention", d.decision_retention, example="7d")
        rotations = sec.duration("rotation_retention", d.rotation_retention, example="365d")
        if rotations < decisions:
            sec.problem(sec.sub("rotation_retention"), "is shorter than decision_retention",
                        "keep rotations (the audit trail) at least as long as decisions, e.g. "
                        "'rotation_retention: 365d'", sec.line_of("rotation_retention"))
        return {"decision_retention": decisions, "rotation_retention": rotations,
                "decisions_per_minute": sec.integer("decisions_per_minute", d.decisions_per_minute, minimum=1)}


# --------------------------------------------------------------------------- entry points


def parse_text(text: str, *, file: str, base_dir: str) -> Config:
    """Parse YAML ``text`` as if read from ``file``; relative paths resolve against ``base_dir``."""
    try:
        data = _load_yaml(text)
    except _TooDeep as exc:
        raise ConfigErrors(file, [ConfigProblem(
            file, "", f"the YAML is nested too deeply to read ({exc}, from line {exc.mark.line + 1})",
            "a patrol configuration nests only a few levels: check for runaway brackets or indentation; "
            "`patrol config example` prints a valid file", exc.mark.line + 1)]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = exc.problem or exc.context or "not valid YAML"
        raise ConfigErrors(file, [ConfigProblem(
            file, "", f"YAML syntax error{where}: {what}",
            "check indentation, quoting and ':' after each key", mark.line + 1 if mark else None,
        )]) from None
    except yaml.YAMLError as exc:
        raise ConfigErrors(file, [ConfigProblem(file, "", f"not valid YAML: {exc}",
                                                "check the file's syntax")]) from None
    parser = _Parser(file, base_dir)
    config = parser.config(data)
    if parser.problems.items or config is None:
        ordered = sorted(parser.problems.items, key=lambda p: (p.line is None, p.line or 0))
        raise ConfigErrors(file, ordered)
    return config


def parse_file(path: str) -> Config:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise ConfigErrors(path, [ConfigProblem(
            path, "", "no such file", "check the path given with --config or PATROL_CONFIG")]) from None
    except UnicodeDecodeError:
        raise ConfigErrors(path, [ConfigProblem(
            path, "", "the file is not UTF-8 text", "save it as UTF-8")]) from None
    except OSError as exc:
        raise ConfigErrors(path, [ConfigProblem(
            path, "", f"cannot read the file: {exc.strerror}",
            "check the path and that patrol may read it")]) from None
    return parse_text(text, file=path, base_dir=os.path.dirname(os.path.abspath(path)))
