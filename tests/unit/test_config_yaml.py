"""The config's YAML reader (core/_config_parse.py): built from parser events, not a node tree.

It must give what PyYAML's composed tree gave (lines of mappings, keys and items, keys written
twice, anchors and merge keys, safe tags only, the pure parser's error wording) with either
parser, and refuse runaway nesting with a problem instead of exhausting a stack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from core import _config_parse as parse
from core.config import ConfigErrors

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "config"
PARSERS = pytest.mark.parametrize("loader", [yaml.SafeLoader, parse._FAST_LOADER], ids=["pure", "fast"])


def shape(value: Any) -> Any:
    """Value and every line the reader kept, comparable with ==."""
    if isinstance(value, dict):
        return ("map", getattr(value, "line", None), dict(getattr(value, "key_lines", {})),
                list(getattr(value, "duplicates", [])), [(k, shape(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("seq", getattr(value, "line", None), list(getattr(value, "item_lines", [])),
                [shape(v) for v in value])
    return value


def test_the_published_wheel_brings_libyaml_and_the_reader_uses_it() -> None:
    assert yaml.__with_libyaml__, "PyYAML without libyaml: the reader falls back to the 5x slower parser"
    assert parse._FAST_LOADER is yaml.CSafeLoader


@pytest.mark.parametrize("text", [
    (FIXTURES / "two-clusters.yaml").read_text(),
    (FIXTURES / "docs-broken-example.yaml").read_text(),
    "a: &x {b: 1, c: 2}\nd:\n  <<: *x\n  c: 3\n",
    "m1: &m1 {a: 1, b: 1}\nm2: &m2 {b: 2, c: 2}\nt:\n  <<: [*m1, *m2]\n  d: 4\n",
    "a: !!str 1\nb: !!int '2'\nc: 2026-01-01\nd: !!binary aGk=\ne: ~\nf: yes\ng: 1.5\n=: eq\n",
    "- &a x\n- *a\n- [1, {k: v}]\n",
    "a: 1\nb: 2\na: 3\n",
    "",
], ids=["two-clusters", "docs-broken-example", "merge", "merge-list", "scalars", "alias", "duplicate", "empty"])
def test_both_parsers_read_the_same_values_and_lines(text: str) -> None:
    assert shape(parse._load_yaml(text, parse._FAST_LOADER)) == shape(parse._load_yaml(text, yaml.SafeLoader))


@PARSERS
def test_lines_are_kept_for_mappings_keys_and_items(loader: type[yaml.SafeLoader]) -> None:
    data = parse._load_yaml("tokens:\n  - name: a\n    scopes:\n      - x\n      - y\n  - name: b\n", loader)
    assert (data.line, data.key_lines) == (1, {"tokens": 1})
    tokens = data["tokens"]
    assert (tokens.line, tokens.item_lines) == (2, [2, 6])
    assert tokens[0].key_lines == {"name": 2, "scopes": 3}
    assert tokens[0]["scopes"].item_lines == [4, 5]


@PARSERS
def test_keys_written_twice_are_reported_with_their_line(loader: type[yaml.SafeLoader]) -> None:
    data = parse._load_yaml("a: 1\nb: 2\na: 3\n", loader)
    assert data == {"a": 3, "b": 2} and data.duplicates == [("a", 3)]


@PARSERS
def test_merge_keys_follow_yaml_precedence_and_keep_the_source_lines(loader: type[yaml.SafeLoader]) -> None:
    text = ("one: &one {a: 1, b: 1}\n"
            "two: &two {b: 2, c: 2}\n"
            "t:\n"
            "  <<: [*one, *two]\n"
            "  c: 3\n")
    t = parse._load_yaml(text, loader)["t"]
    assert t == {"a": 1, "b": 1, "c": 3}           # earlier merge wins, the mapping's own key wins
    assert t.key_lines == {"a": 1, "b": 1, "c": 5} and t.duplicates == []


@PARSERS
@pytest.mark.parametrize(("text", "error"), [
    ("a: !!python/object:os.system x\n", "could not determine a constructor"),
    ("a: !!python/name:os.system\n", "could not determine a constructor"),
    ("a: !!set {x, y}\n", "not used in a patrol configuration"),
    ("a: *nowhere\n", "found undefined alias"),
    ("a: &x 1\nb: &x 2\n", "found duplicate anchor"),
    ("? [a]\n: 1\n", "found a key that is not a plain value"),
    ("a:\n  <<: 1\n", "expected a mapping or list of mappings for merging"),
    ("a: <<\n", "could not determine a constructor"),
    ("a: 1\n---\nb: 2\n", "expected a single document"),
])
def test_what_safe_load_refuses_is_refused(loader: type[yaml.SafeLoader], text: str, error: str) -> None:
    with pytest.raises(yaml.MarkedYAMLError) as info:
        parse._load_yaml(text, loader)
    assert error in str(info.value)


def test_a_file_libyaml_refuses_gets_the_pure_parsers_words() -> None:
    # docs/configuration.md quotes this message; libyaml alone would say "did not find expected key".
    text = "organizations:\n  - name: a\n  url: b\n   c: d\n"
    with pytest.raises(yaml.MarkedYAMLError) as fast:
        parse._read(yaml.CSafeLoader, text)
    with pytest.raises(yaml.MarkedYAMLError) as pure:
        parse._read(yaml.SafeLoader, text)
    assert str(fast.value) != str(pure.value)
    with pytest.raises(yaml.MarkedYAMLError) as read:
        parse._load_yaml(text)
    assert str(read.value) == str(pure.value)


@PARSERS
def test_nesting_up_to_the_limit_loads_and_one_more_level_is_refused_early(loader: type[yaml.SafeLoader]) -> None:
    depth = parse.MAX_DEPTH
    assert parse._load_yaml("[" * depth + "]" * depth, loader) is not None
    with pytest.raises(yaml.YAMLError, match=f"more than {depth} levels"):
        parse._load_yaml("[" * (depth + 1) + "]" * (depth + 1), loader)


def test_a_million_open_brackets_is_a_problem_not_a_crash() -> None:
    # PyYAML's own CSafeLoader composes recursively in C: this input kills the interpreter
    # (SIGSEGV) with yaml.load(text, Loader=yaml.CSafeLoader). The reader stops at MAX_DEPTH.
    with pytest.raises(ConfigErrors) as info:
        parse.parse_text("a: " + "[" * 1_000_000, file="deep.yaml", base_dir="/")
    (problem,) = info.value.problems
    assert "nested too deeply" in problem.problem and problem.line == 1


def test_a_lone_surrogate_in_the_text_is_a_problem_not_a_traceback() -> None:
    with pytest.raises(ConfigErrors) as info:
        parse.parse_text("organizations: \ud800\n", file="bad.yaml", base_dir="/")
    assert "not valid YAML" in info.value.problems[0].problem
