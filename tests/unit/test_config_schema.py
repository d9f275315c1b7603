"""The JSON Schema of patrol.yaml: committed and current, valid, and in agreement with the parser.

The parser (core/_config_parse.py) is the judge; the schema is what an editor checks while one
types. These tests hold the two together: every example config validates, what the schema
requires the parser requires, what the parser refuses for a reason a schema can express the
schema refuses too, and every key table of the parser is covered.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from core import _config_parse
from core.config import ConfigErrors, DurationError, parse_duration
from core.schema import DURATION_PATTERN, SCHEMA_FILE_NAME, SCHEMA_ID, config_schema
from patrol import cli, config_cmd

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "patrol.schema.json"
DEPLOY_CONFIG = ROOT / "deploy" / "base" / "patrol.yaml"
CONFIGURATION_DOC = ROOT / "docs" / "configuration.md"
SCHEMA_LINE = re.compile(r"^# yaml-language-server: \$schema=(\S+)$", re.MULTILINE)

Document = dict[str, Any]


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(config_schema())


def _schema_errors(document: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in _validator().iter_errors(document)]


def _parser_errors(document: Any) -> list[str]:
    try:
        _config_parse.parse_text(yaml.safe_dump(document, sort_keys=False), file="patrol.yaml", base_dir="/")
    except ConfigErrors as exc:
        return [str(problem) for problem in exc.problems]
    return []


def _example() -> Document:
    document: Document = yaml.safe_load(config_cmd.EXAMPLE_CONFIG)
    return document


# --- the committed file and the CLI ---------------------------------------------------------


def test_committed_schema_is_what_patrol_config_schema_prints(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config", "schema"]) == 0
    printed = capsys.readouterr().out
    assert printed == config_cmd.render_schema()
    assert COMMITTED.read_text(encoding="utf-8") == printed, (
        "docs/patrol.schema.json is stale: run `patrol config schema > docs/patrol.schema.json`")


def test_schema_is_valid_draft_2020_12_and_names_itself_without_a_guessed_location() -> None:
    schema = json.loads(COMMITTED.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$id"] == SCHEMA_ID == "urn:patrol:config:v1"      # a name: patrol has no web home
    assert COMMITTED.name == SCHEMA_FILE_NAME


def test_examples_name_the_schema_on_their_first_line() -> None:
    first = config_cmd.EXAMPLE_CONFIG.splitlines()[0]
    assert first == f"# yaml-language-server: $schema={SCHEMA_FILE_NAME}"        # beside patrol.yaml
    assert f"patrol config schema > {SCHEMA_FILE_NAME}" in config_cmd.EXAMPLE_CONFIG.splitlines()[2]
    deploy_first = DEPLOY_CONFIG.read_text(encoding="utf-8").splitlines()[0]
    match = SCHEMA_LINE.match(deploy_first)
    assert match, deploy_first
    assert (DEPLOY_CONFIG.parent / match.group(1)).resolve() == COMMITTED


@pytest.mark.parametrize("name", ["example", "deploy", "docs"])
def test_every_example_config_validates_against_the_schema(name: str) -> None:
    texts = {
        "example": config_cmd.EXAMPLE_CONFIG,
        "deploy": DEPLOY_CONFIG.read_text(encoding="utf-8"),
        "docs": "\n".join(block for block in re.findall(r"```yaml\n(.*?)```", CONFIGURATION_DOC.read_text(),
                                                        flags=re.DOTALL) if block.startswith("# yaml-language")),
    }
    document = yaml.safe_load(texts[name])
    assert document, name
    assert _schema_errors(document) == []
    assert _parser_errors(document) == []


# --- the schema follows the parser's key tables ----------------------------------------------


def _key_tables() -> Iterator[tuple[str, tuple[str, ...]]]:
    for name, value in vars(_config_parse).items():
        if not re.fullmatch(r"_[A-Z_]*KEYS", name) or name == "_ALL_ORGS_KEYS":  # allOrgs: refused keys
            continue
        tables = value.values() if isinstance(value, dict) else [value]
        for table in tables:
            yield name, tuple(table)


def _properties(schema: Any) -> Iterator[str]:
    if isinstance(schema, dict):
        yield from schema.get("properties", {})
        for value in schema.values():
            yield from _properties(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from _properties(value)


def test_every_key_the_parser_reads_is_in_the_schema() -> None:
    tables = list(_key_tables())
    assert len(tables) >= 12                                 # the tables were found at all
    known = set(_properties(config_schema()))
    for name, keys in tables:
        assert set(keys) <= known, f"{name}: {sorted(set(keys) - known)} missing from core/schema.py's SECTIONS"


def test_a_key_the_model_lacks_is_a_clear_programming_error() -> None:
    from core.config import LeaseSettings
    from core.schema import SECTIONS

    with pytest.raises(TypeError, match="'renew' but LeaseSettings has no such field"):
        config_schema({**SECTIONS, LeaseSettings: (*SECTIONS[LeaseSettings], "renew")})


# --- schema and parser agree ------------------------------------------------------------------


def _resolve(schema: Document, node: Document, value: Any) -> Document | None:
    """The object schema that checks ``value`` (a mapping) at ``node``: $ref followed, union chosen."""
    if "$ref" in node:
        return _resolve(schema, schema["$defs"][node["$ref"].rsplit("/", 1)[1]], value)
    for key in ("anyOf", "oneOf"):
        if key in node:
            chosen = [option for option in node[key] if _matches(schema, option, value)]
            return _resolve(schema, chosen[0], value) if chosen else None
    return node if node.get("type") == "object" else None


def _matches(schema: Document, node: Document, value: Any) -> bool:
    return jsonschema.Draft202012Validator({**node, "$defs": schema["$defs"]}).is_valid(value)


def _mappings(schema: Document, node: Document, value: Any, path: tuple[Any, ...] = ()) -> Iterator[
        tuple[tuple[Any, ...], Document]]:
    """(path, object schema) for every mapping in ``value``."""
    if isinstance(value, dict):
        resolved = _resolve(schema, node, value)
        if resolved is None:
            return
        yield path, resolved
        for key, item in value.items():
            yield from _mappings(schema, resolved["properties"][key], item, (*path, key))
    elif isinstance(value, list):
        items = node
        while "$ref" in items or "anyOf" in items:
            items = (schema["$defs"][items["$ref"].rsplit("/", 1)[1]] if "$ref" in items
                     else next(o for o in items["anyOf"] if o.get("type") != "null"))
        for index, item in enumerate(value):
            yield from _mappings(schema, items["items"], item, (*path, index))


def _at(document: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        document = document[step]
    return document


def _every_mapping_of_the_example() -> list[tuple[tuple[Any, ...], Document]]:
    schema = config_schema()
    return list(_mappings(schema, schema, _example()))


def test_every_mapping_of_the_example_has_a_schema() -> None:
    found = {tuple(k for k in path if isinstance(k, str)) for path, _ in _every_mapping_of_the_example()}
    assert {(), ("organizations", "credential", "from_keyvault"), ("tokens", "sinks"), ("tokens", "pipeline"),
            ("worker",), ("exporter",), ("azure",)} <= found, found


def test_what_the_schema_requires_the_parser_requires() -> None:
    checked = 0
    for path, node in _every_mapping_of_the_example():
        for key in node.get("required", []):
            document = _example()
            mapping = _at(document, path)
            if key not in mapping:
                continue
            del mapping[key]
            assert _schema_errors(document), (path, key)
            assert _parser_errors(document), f"the schema requires {path}.{key} but the parser does not"
            checked += 1
    assert checked >= 20


# What the parser needs only together with another key: a schema of independent keys cannot say it.
CONDITIONALLY_REQUIRED = {
    ("clusters",),                                 # ... when a sink, consumer or lease names one
    ("clusters", "context"),                       # ... unless in_cluster: true
    ("organizations", "credential", "from_keyvault"),  # ... unless username_env and password_env
}


def test_what_the_schema_leaves_optional_the_parser_does_not_require() -> None:
    checked = 0
    for path, node in _every_mapping_of_the_example():
        for key in set(node["properties"]) - set(node.get("required", [])):
            document = _example()
            mapping = _at(document, path)
            where = (*(k for k in path if isinstance(k, str)), key)
            if key not in mapping or where in CONDITIONALLY_REQUIRED:
                continue
            del mapping[key]
            assert _schema_errors(document) == []
            errors = _parser_errors(document)
            assert errors == [], f"the schema has {path}.{key} optional but the parser requires it: {errors}"
            checked += 1
    assert checked >= 20


def _set(path: tuple[Any, ...], key: str, value: Any) -> Document:
    document = _example()
    _at(document, path)[key] = value
    return document


MISTAKES = {
    "unknown top-level key": ((), "tokenz", []),
    "unknown token key": (("tokens", 0), "renewBefore", "7d"),
    "global PAT": (("tokens", 0), "allOrgs", True),
    "password in the file": (("organizations", 0, "credential"), "password", "hunter2"),
    "client secret in the file": (("azure",), "client_secret", "s3cret"),
    "webhook token in the file": (("worker",), "webhook_token", "t0ken"),
    "duration without unit": (("tokens", 0), "lifetime", "30"),
    "fractional duration": (("tokens", 0), "renew_before", "1.5h"),
    "duration units out of order": (("exporter",), "pat_interval", "5s1m"),
    "unknown scope": (("tokens", 0), "scopes", ["vso.agentpool_manage"]),
    "no scopes": (("tokens", 0), "scopes", []),
    "scope twice": (("tokens", 0), "scopes", ["vso.build", "vso.build"]),
    "flux policy misspelt": (("tokens", 0, "sinks", 0), "flux", "refus"),
    "sink kind unknown": (("tokens", 0, "sinks", 0), "kind", "configmap"),
    "namespace not a DNS label": (("tokens", 0, "sinks", 0), "namespace", "Azure_DevOps"),
    "token name not a DNS label": (("tokens", 0), "name", "KEDA token"),
    "key vault secret name": (("tokens", 1, "sinks", 0), "secret", "azure_devops_token"),
    "key vault over http": (("tokens", 1, "sinks", 0), "vault_url", "http://x.vault.azure.net"),
    "credential kind unknown": (("organizations", 0, "credential"), "kind", "password"),
    "env var name": (("azure",), "client_secret_env", "AZURE-SECRET"),
    "concurrency zero": (("exporter",), "concurrency", 0),
    "no decisions per minute": (("worker",), "decisions_per_minute", 0),
    "switch mode misspelt": (("tokens", 0, "consumers", 0), "switch", "bumps"),
    "drain_max without unit": (("tokens", 0), "drain_max", "2"),
    "concurrency not a number": (("exporter",), "concurrency", "8"),
    "in_cluster not a boolean": (("clusters", 0), "in_cluster", "yes"),
    "tokens not a list": ((), "tokens", {"name": "keda"}),
    "empty organization name": (("organizations", 0), "name", ""),
}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_a_mistake_the_schema_can_express_is_refused_by_both(mistake: str) -> None:
    path, key, value = MISTAKES[mistake]
    document = _set(path, key, value)
    assert _parser_errors(document), f"the parser accepts {mistake}"
    assert _schema_errors(document), f"the schema accepts {mistake}"


@pytest.mark.parametrize("text", ["90s", "15m", "26h", "30d", "1h30m", "1d12h", "0s", "1d2h3m4s",
                                  "10", "-5m", "1.5h", "m", "30 d", "1m1h", "1h1h", "5S", "1w", "d1"])
def test_the_duration_pattern_is_what_parse_duration_reads(text: str) -> None:
    try:
        parse_duration(text)
        parsed = True
    except DurationError:
        parsed = False
    assert bool(re.search(DURATION_PATTERN, text)) == parsed, "schema and parse_duration disagree"


def test_every_key_of_the_schema_is_in_the_configuration_reference() -> None:
    """docs/configuration.md's reference tables name every key an editor will offer."""
    text = CONFIGURATION_DOC.read_text(encoding="utf-8")
    reference = text.split("\n## Reference\n", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(?:[a-z_]+(?:\[\])?\.)*([a-z_]+)(?:\[\])?`", reference))
    keys = set(_properties(config_schema()))
    assert keys <= documented, f"not in docs/configuration.md's reference: {sorted(keys - documented)}"
