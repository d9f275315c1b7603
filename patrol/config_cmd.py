"""``patrol config check FILE``, ``patrol config example`` and ``patrol config schema``.

A person editing the config wants every mistake at once and, when there are none, a short
summary to confirm that patrol read what they meant (which token goes where, with which
scopes and timings). ``example`` prints a fully commented configuration to start from; the same
text is the annotated example in docs/configuration.md (a test keeps the two identical); its
first line names the JSON Schema for editors (yaml-language-server). ``schema`` prints that JSON
Schema, generated from the config model (``core/schema.py``); docs/patrol.schema.json is its
committed copy (a test keeps it up to date).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from core.config import (
    Cluster,
    Config,
    ConfigErrors,
    KeyVaultSink,
    Organization,
    Token,
    format_duration,
    load_config,
)
from core.errors import ConfigError
from core.schema import SCHEMA_FILE_NAME, config_schema

EXIT_OK, EXIT_USAGE = 0, 2

# A path relative to the YAML file: the schema is written beside it (`patrol config schema`).
SCHEMA_LINE = f"# yaml-language-server: $schema={SCHEMA_FILE_NAME}\n"

EXAMPLE_CONFIG = SCHEMA_LINE + """\
# patrol configuration. Check it with: patrol config check patrol.yaml
# Editor completion: patrol config schema > patrol.schema.json (the file the line above names)
# Durations are whole numbers with a unit: 90s, 15m, 26h, 30d, or combined like 1h30m.
# Relative paths are resolved against the directory of this file.

organizations:                       # the Azure DevOps organizations whose PATs patrol manages
  - name: contoso                    # referenced by tokens[].organization
    url: https://dev.azure.com/contoso  # vssps/vsrm URLs are derived from this form
    # vssps_url: https://vssps.dev.azure.com/contoso  # only needed for other URL forms
    # vsrm_url: https://vsrm.dev.azure.com/contoso
    credential:                      # the *user* (bot account) that creates and revokes PATs
      kind: username-password        # or device-code, azure-cli, environment
      tenant_id: organizations       # your Entra tenant id, or "organizations"
      # client_id: 04b07795-8ddb-461a-bbee-02f9e1bf7b46  # public client used to sign in
      # authority: https://login.microsoftonline.com
      from_keyvault:                 # where the bot's username and password are kept
        vault_url: https://contoso-bot.vault.azure.net
        username_secret: bot-azure-devops-email
        password_secret: bot-azure-devops-password
      # or, instead of from_keyvault, environment variables holding them:
      # username_env: PATROL_BOT_USERNAME
      # password_env: PATROL_BOT_PASSWORD
      # kind: device-code uses instead:
      # cache_name: patrol           # persistent MSAL token cache name
      # record_file: bot-auth-record.json  # written by `patrol login`

clusters:                            # Kubernetes clusters holding sinks, consumers or the lease
  - name: build-a
    context: build-a                 # a kubeconfig context ...
    # kubeconfig: ~/.kube/config     # ... from this file (default: $KUBECONFIG or ~/.kube/config)
  - name: build-b
    context: build-b
  # - name: here
  #   in_cluster: true               # ... or the service account of the pod patrol runs in

tokens:                              # one entry per PAT patrol keeps alive
  - name: keda                       # lowercase letters, digits and '-'
    organization: contoso
    scopes: [vso.agentpools_manage]  # exactly what the PAT is created with; least privilege
    lifetime: 30d                    # validTo = creation + lifetime (at most 365d)
    renew_before: 7d                 # rotate when expiry is this close (like cert-manager)
    sinks:                           # where the PAT is delivered; each has exactly one writer
      - kind: kubernetes-secret
        cluster: build-a
        namespace: azure-devops
        secret: azure-devops-token
        key: token                   # default: token
        flux: refuse                 # refuse (default) to write a Flux-managed Secret, or ignore-drift-risk
      - {kind: kubernetes-secret, cluster: build-b, namespace: azure-devops, secret: azure-devops-token}
    consumers:                       # what uses the PAT: switched and verified after delivery
      - kind: keda-scaledjob         # or keda-scaledobject
        cluster: build-a
        namespace: azure-devops
        name: azure-devops-agent
        pool: agents-a               # the agent pool it scales
      - {kind: keda-scaledjob, cluster: build-b, namespace: azure-devops,
         name: azure-devops-agent, pool: agents-b}

  - name: daily-checks
    organization: contoso
    scopes: [vso.agentpools, vso.build, vso.pipelineresources_use, vso.release]
    lifetime: 30d
    renew_before: 7d
    sinks:
      - kind: keyvault
        vault_url: https://contoso-checks.vault.azure.net
        secret: azure-devops-token
    pipeline:                        # the pipeline that uses this PAT, watched for staleness
      project: Operations
      definition: daily-checks       # name or numeric id
      max_age: 26h                   # default: 26h

azure:                               # how patrol itself reaches Key Vault (not the bot account)
  credential: default                # default, client-secret, managed-identity, azure-cli, environment
  # tenant_id: 00000000-0000-0000-0000-000000000000   # required for client-secret
  # client_id: 00000000-0000-0000-0000-000000000000   # required for client-secret
  # client_secret_file: /var/run/secrets/patrol/client-secret  # wins over client_secret_env
  # client_secret_env: AZURE_CLIENT_SECRET
  # authority: https://login.microsoftonline.com
  # ca_bundle: ca.pem                # extra CA certificates for TLS
  # verify_challenge_resource: true  # false only for a local Key Vault fake

exporter:                            # patrol exporter
  listen: 0.0.0.0:9877
  pat_interval: 5m                   # how often each data source is refreshed
  validity_interval: 5m
  keda_interval: 30s
  pools_interval: 30s
  pipeline_interval: 5m
  concurrency: 8                     # concurrent API calls per refresh

worker:                              # patrol worker (webhook receiver and rotations)
  listen: 0.0.0.0:9878
  webhook_token_file: /var/run/secrets/patrol/webhook-token  # bearer token Alertmanager sends
  state_dir: /var/lib/patrol         # journal and locks
  cooldown: 10m                      # least time between two rotations of one token
  verify_deadline: 5m                # how long a new PAT has to prove itself
  reconcile_interval: 5m             # the worker's own schedule check
  # lease:                           # when running more than one replica
  #   cluster: build-a
  #   namespace: patrol
  #   name: patrol-worker
  #   duration: 15s
"""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``config check [FILE]`` and ``config example``; handlers are set as ``func``."""
    config = subparsers.add_parser("config", help="check a configuration file or print an example",
                                   description="Check a configuration file or print an example.")
    sub = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    check = sub.add_parser(
        "check", help="validate a configuration file and summarise it",
        description="Validate a configuration file. Prints a summary and exits 0 when it is "
                    "valid; prints every problem to stderr and exits 2 otherwise.")
    check.add_argument("file", nargs="?", default=None,
                       help="the configuration file (default: --config / PATROL_CONFIG)")
    check.set_defaults(func=run, config_command="check")
    example = sub.add_parser("example", help="print a fully commented example configuration",
                             description="Print a fully commented example configuration.")
    example.set_defaults(func=run, config_command="example")
    schema = sub.add_parser("schema", help="print the JSON Schema of the configuration file",
                            description="Print the JSON Schema of the configuration file (for editors).")
    schema.set_defaults(func=run, config_command="schema")


def run(args: argparse.Namespace) -> int:
    if getattr(args, "config_command", "check") == "example":
        sys.stdout.write(EXAMPLE_CONFIG)
        return EXIT_OK
    if getattr(args, "config_command", "check") == "schema":
        sys.stdout.write(render_schema())
        return EXIT_OK
    path = getattr(args, "file", None) or getattr(args, "config", None)
    if getattr(args, "json", False):
        return run_json(path, sys.stdout)
    if not path:
        print("patrol config check: no configuration file given "
              "(fix: pass FILE, --config FILE or set PATROL_CONFIG)", file=sys.stderr)
        return EXIT_USAGE
    try:
        config = load_config(path)
    except ConfigErrors as exc:
        count = len(exc.problems)
        print(f"{path}: {count} problem{'s' if count != 1 else ''}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    write_summary(config, sys.stdout)
    return EXIT_OK


def render_schema() -> str:
    """The JSON Schema as ``patrol config schema`` prints it and docs/patrol.schema.json holds it."""
    return json.dumps(config_schema(), indent=2, ensure_ascii=False) + "\n"


def problem_json(error: ConfigError) -> dict[str, Any]:
    """One problem as ``config check --json`` prints it: file, line (or null), path, problem, fix."""
    return {"file": error.file, "line": getattr(error, "line", None), "path": error.path,
            "problem": error.problem, "fix": error.fix}


def run_json(path: str | None, out: TextIO) -> int:
    """``config check --json``: one JSON document on stdout, whatever happens; exit 0 or 2.

    ``{"file", "valid", "problems": [{"file", "line", "path", "problem", "fix"}], "summary"}``;
    ``summary`` (names of organizations, clusters and tokens, each token's sinks and consumers)
    only when valid. Nothing goes to stderr, so a script reads one stream.
    """
    problems: list[dict[str, Any]] = []
    summary: dict[str, Any] | None = None
    if not path:
        problems.append({**problem_json(ConfigError("", "", "no configuration file given",
                                                    "pass FILE, --config FILE or set PATROL_CONFIG")),
                         "file": None})
    else:
        try:
            config = load_config(path)
        except ConfigErrors as exc:
            problems = [problem_json(problem) for problem in exc.problems]
        except ConfigError as exc:
            problems = [problem_json(exc)]
        else:
            summary = {
                "organizations": [org.name for org in config.organizations],
                "clusters": [cluster.name for cluster in config.clusters],
                "tokens": [{"name": token.name, "organization": token.organization,
                            "scopes": list(token.scopes),
                            "sinks": [sink.id for sink in token.sinks],
                            "consumers": [f"{c.cluster}/{c.namespace}/{c.name}" for c in token.consumers]}
                           for token in config.tokens],
            }
    doc: dict[str, Any] = {"file": path, "valid": not problems, "problems": problems}
    if summary is not None:
        doc["summary"] = summary
    out.write(json.dumps(doc, indent=2) + "\n")
    return EXIT_USAGE if problems else EXIT_OK


def write_summary(config: Config, out: TextIO) -> None:
    """A one-screen account of what patrol read from the file."""
    out.write(f"{config.source}: OK - {len(config.organizations)} organization(s), "
              f"{len(config.clusters)} cluster(s), {len(config.tokens)} token(s)\n")
    out.write("organizations:\n")
    for org in config.organizations:
        out.write(f"  {org.name}: {org.url} (credential: {_credential(org)})\n")
    if config.clusters:
        out.write("clusters:\n")
        for cluster in config.clusters:
            out.write(f"  {cluster.name}: {_cluster(cluster)}\n")
    out.write("tokens:\n")
    for token in config.tokens:
        _token(token, out)
    worker = config.worker
    out.write(f"exporter: listen {config.exporter.listen}\n")
    lease = f", lease {worker.lease.cluster}/{worker.lease.namespace}/{worker.lease.name}" \
        if worker.lease else ""
    out.write(f"worker: listen {worker.listen}, state {worker.state_dir}{lease}\n")


def _credential(org: Organization) -> str:
    cred = org.credential
    if cred.from_keyvault is not None:
        return f"{cred.kind}, from Key Vault {cred.from_keyvault.vault_url}"
    if cred.username_env:
        return f"{cred.kind}, from ${cred.username_env} / ${cred.password_env}"
    return cred.kind


def _cluster(cluster: Cluster) -> str:
    if cluster.in_cluster:
        return "in-cluster service account"
    where = f" in {cluster.kubeconfig}" if cluster.kubeconfig else ""
    return f"context {cluster.context}{where}"


def _token(token: Token, out: TextIO) -> None:
    out.write(f"  {token.name} ({token.organization})\n")
    out.write(f"    scopes: {' '.join(token.scopes)}\n")
    out.write(f"    lifetime: {format_duration(token.lifetime)}, "
              f"renew_before: {format_duration(token.renew_before)}\n")
    for sink in token.sinks:
        extra = "" if isinstance(sink, KeyVaultSink) else f" (flux: {sink.flux})"
        out.write(f"    sink: {sink.id}{extra}\n")
    for consumer in token.consumers:
        out.write(f"    consumer: {consumer.k8s_kind} {consumer.cluster}/{consumer.namespace}/"
                  f"{consumer.name} (pool {consumer.pool})\n")
    if token.pipeline is not None:
        out.write(f"    pipeline: {token.pipeline.project}/{token.pipeline.definition}, "
                  f"stale after {format_duration(token.pipeline.max_age)}\n")
