"""The JSON Schema of ``patrol.yaml``, derived from the config model and the parser's key tables.

Guarantees: every key the parser accepts in a mapping (the key tables of
``core/_config_parse.py``) is a property of the schema, typed from the field of the same name in
``core/config.py``'s model, and no other key is allowed (``additionalProperties: false``, as the
parser refuses unknown keys); choices are the model's ``Literal`` types, defaults the model's
defaults, durations the syntax ``parse_duration`` reads, scopes the parser's list. A key added
to a table and to the model therefore appears here without an edit; a key whose model field
this module cannot type raises TypeError (a programming error: the test of the committed schema
fails).

The schema is for editors (completion, hover, red squiggles while typing: the example config's
first line names it for yaml-language-server). It is weaker than ``patrol config check``, which
stays the judge: cross-references (a sink's cluster must be defined), URL forms, which keys go
with which credential kind and limits such as ``lifetime <= 365d`` are checked there only.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Literal

from core import _config_parse as parse
from core.config import (
    AlertSettings,
    AzureSettings,
    Cluster,
    Config,
    ExporterSettings,
    KedaConsumer,
    KeyVaultSecretRef,
    KeyVaultSink,
    KubernetesSecretSink,
    LeaseSettings,
    Organization,
    PipelineCheck,
    Token,
    UserCredential,
    WorkerSettings,
    format_duration,
)

JsonSchema = dict[str, Any]

DIALECT = "https://json-schema.org/draft/2020-12/schema"
# The schema's identity. patrol has no web home to publish the schema under, so the id is a
# name, not a location: editors find the schema through a path (the example config's first line
# names patrol.schema.json beside it; deploy/base/patrol.yaml names the committed copy).
SCHEMA_ID = "urn:patrol:config:v1"
# The file `patrol config schema` output is saved as, beside patrol.yaml.
SCHEMA_FILE_NAME = "patrol.schema.json"

# Each YAML mapping: the model class it becomes and the keys the parser reads in it.
SECTIONS: dict[type[Any], tuple[str, ...]] = {
    Config: parse._TOP_KEYS,
    Organization: parse._ORG_KEYS,
    UserCredential: tuple(dict.fromkeys(
        (*parse._CRED_COMMON, *(key for keys in parse._CRED_BY_KIND.values() for key in keys)))),
    KeyVaultSecretRef: tuple(field.name for field in dataclasses.fields(KeyVaultSecretRef)),
    Cluster: parse._CLUSTER_KEYS,
    Token: parse._TOKEN_KEYS,
    KubernetesSecretSink: parse._SINK_KEYS["kubernetes-secret"],
    KeyVaultSink: parse._SINK_KEYS["keyvault"],
    KedaConsumer: parse._CONSUMER_KEYS,
    PipelineCheck: parse._PIPELINE_KEYS,
    AzureSettings: parse._AZURE_KEYS,
    ExporterSettings: parse._EXPORTER_KEYS,
    WorkerSettings: parse._WORKER_KEYS,
    LeaseSettings: parse._LEASE_KEYS,
    AlertSettings: parse._ALERTS_KEYS,
}

# Where the YAML and the model differ on what must be written.
_OPTIONAL_IN_YAML: dict[type[Any], frozenset[str]] = {
    Config: frozenset({"clusters"}),                         # none needed without Kubernetes sinks
    Organization: frozenset({"vssps_url", "vsrm_url"}),      # derived from a dev.azure.com url
}
_REQUIRED_IN_YAML: dict[type[Any], frozenset[str]] = {
    KubernetesSecretSink: frozenset({"kind"}),               # a default in the model; the YAML names it
    KeyVaultSink: frozenset({"kind"}),
}

_NAME_RULES = {
    "label": parse._DNS_LABEL.pattern,
    "subdomain": parse._DNS_SUBDOMAIN.pattern,
    "secret_key": parse._SECRET_KEY.pattern,
    "keyvault_name": parse._KEYVAULT_NAME.pattern,
    "env": parse._ENV_NAME.pattern,
}
# The value rules the parser applies to single keys (its getters' `pattern=` and `minimum=`).
_KEY_RULES: dict[tuple[type[Any], str], JsonSchema] = {
    (Token, "name"): {"pattern": _NAME_RULES["label"]},
    (Token, "scopes"): {"items": {"enum": list(parse.ADO_SCOPES)}, "uniqueItems": True},
    (KubernetesSecretSink, "namespace"): {"pattern": _NAME_RULES["label"]},
    (KubernetesSecretSink, "secret"): {"pattern": _NAME_RULES["subdomain"]},
    (KubernetesSecretSink, "key"): {"pattern": _NAME_RULES["secret_key"]},
    (KeyVaultSink, "secret"): {"pattern": _NAME_RULES["keyvault_name"]},
    (KeyVaultSink, "vault_url"): {"pattern": "^https://"},
    (KeyVaultSecretRef, "vault_url"): {"pattern": "^https://"},
    (KeyVaultSecretRef, "username_secret"): {"pattern": _NAME_RULES["keyvault_name"]},
    (KeyVaultSecretRef, "password_secret"): {"pattern": _NAME_RULES["keyvault_name"]},
    (KedaConsumer, "namespace"): {"pattern": _NAME_RULES["label"]},
    (KedaConsumer, "name"): {"pattern": _NAME_RULES["subdomain"]},
    (LeaseSettings, "namespace"): {"pattern": _NAME_RULES["label"]},
    (LeaseSettings, "name"): {"pattern": _NAME_RULES["subdomain"]},
    (UserCredential, "username_env"): {"pattern": _NAME_RULES["env"]},
    (UserCredential, "password_env"): {"pattern": _NAME_RULES["env"]},
    (AzureSettings, "client_secret_env"): {"pattern": _NAME_RULES["env"]},
    (Organization, "url"): {"pattern": "^https?://"},
    (Organization, "vssps_url"): {"pattern": "^https?://"},
    (Organization, "vsrm_url"): {"pattern": "^https?://"},
    (UserCredential, "authority"): {"pattern": "^https://"},
    (AzureSettings, "authority"): {"pattern": "^https://"},
    (ExporterSettings, "concurrency"): {"minimum": 1},
    (WorkerSettings, "decisions_per_minute"): {"minimum": 1},
    (PipelineCheck, "definition"): {"type": ["string", "integer"]},   # a name or a numeric id
}

# What parse_duration reads: whole numbers with units, largest first, at least one unit.
DURATION_PATTERN = r"^(?=\d)(?:\d+d)?(?:\d+h)?(?:\d+m)?(?:\d+s)?$"
_DURATION: JsonSchema = {
    "type": "string",
    "pattern": DURATION_PATTERN,
    "description": "a duration: whole numbers with a unit, largest first (90s, 15m, 26h, 30d, 1h30m)",
}


def _anchored(pattern: str) -> str:
    return pattern if pattern.startswith("^") else f"^(?:{pattern})$"


def _type_schema(hint: Any, where: str) -> JsonSchema:
    """The schema of one model field's type (``None`` in a union is left to the caller)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(members) == 1:
            return _type_schema(members[0], where)
        return {"oneOf": [_type_schema(member, where) for member in members]}
    if origin is Literal:
        values = list(typing.get_args(hint))
        return {"const": values[0]} if len(values) == 1 else {"enum": values}
    if origin is tuple and typing.get_args(hint) == (tuple[str, str], Ellipsis):
        # labels: a mapping in the YAML, kept as (name, value) pairs by the model
        return {"type": "object", "additionalProperties": {"type": "string"}}
    if origin is tuple:
        item, _ellipsis = typing.get_args(hint)
        return {"type": "array", "items": _type_schema(item, where)}
    if hint is str:
        return {"type": "string", "minLength": 1}
    if hint is bool:
        return {"type": "boolean"}
    if hint is int:
        return {"type": "integer"}
    if hint is timedelta:
        return dict(_DURATION)
    if isinstance(hint, type) and hint in SECTIONS:
        return {"$ref": f"#/$defs/{hint.__name__}"}
    raise TypeError(f"{where} has type {hint!r}, which core/schema.py does not translate "
                    "(fix: teach _type_schema the type, or add the model to SECTIONS)")


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default is dataclasses.MISSING or field.default is None:
        return dataclasses.MISSING
    if isinstance(field.default, timedelta):
        return format_duration(field.default)
    if isinstance(field.default, str | bool | int):
        return field.default
    return dataclasses.MISSING


def _section(model: type[Any], keys: tuple[str, ...]) -> JsonSchema:
    hints = typing.get_type_hints(model)
    fields = {field.name: field for field in dataclasses.fields(model)}
    properties: JsonSchema = {}
    required: list[str] = []
    for key in keys:
        where = f"{model.__name__}.{key}"
        if key not in fields:
            raise TypeError(f"the parser reads key {key!r} but {model.__name__} has no such field "
                            f"(fix: name the model's field {key!r} in core/config.py)")
        field = fields[key]
        schema = _type_schema(hints[key], where)
        schema.update(_KEY_RULES.get((model, key), {}))
        if "pattern" in schema:
            schema["pattern"] = _anchored(schema["pattern"])
        must = (field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING)
        must = (must and key not in _OPTIONAL_IN_YAML.get(model, ())) or key in _REQUIRED_IN_YAML.get(model, ())
        default = _default(field)
        if default is not dataclasses.MISSING and not must:
            schema["default"] = default
        if must:
            required.append(key)
            if schema.get("type") == "array":
                schema["minItems"] = 1                       # the parser: "is empty"
        else:
            schema = _or_null(schema)          # the parser reads an optional `key:` as not written
        properties[key] = schema
    section: JsonSchema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        section["required"] = required
    return section


def _or_null(schema: JsonSchema) -> JsonSchema:
    kind = schema.get("type")
    if isinstance(kind, str):
        return {**schema, "type": [kind, "null"]}
    if isinstance(kind, list):
        return {**schema, "type": [*kind, "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def config_schema(sections: Mapping[type[Any], tuple[str, ...]] = SECTIONS) -> JsonSchema:
    """The JSON Schema (draft 2020-12) of patrol.yaml; TypeError for a field it cannot translate."""
    definitions = {model.__name__: _section(model, keys) for model, keys in sections.items() if model is not Config}
    top = _section(Config, sections[Config])
    return {
        "$schema": DIALECT,
        "$id": SCHEMA_ID,
        "title": "patrol configuration (patrol.yaml)",
        "description": "Generated by `patrol config schema` from patrol's config model; "
                       "`patrol config check FILE` checks what a schema cannot (references between "
                       "sections, URL forms, credential kinds).",
        **top,
        "$defs": definitions,
    }
