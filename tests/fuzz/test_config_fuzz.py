"""Fuzzing the config loader (issue 10, "Proof"): whatever the file holds, ``patrol config
check`` gives a list of problems naming the file, or a config, never a traceback.

Inputs are mutations of the two-cluster example, tests/fixtures/config/two-clusters.yaml
(YAML-significant characters spliced in, lines duplicated, dropped or re-indented, values
swapped for hostile scalars), structured documents dumped as YAML, and raw bytes. ``make
test`` loads a few hundred files; ``make fuzz`` sets ``PATROL_FUZZ_CONFIG_EXAMPLES=10000``.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.config import Config, ConfigErrors, load_config

EXAMPLES = int(os.environ.get("PATROL_FUZZ_CONFIG_EXAMPLES", "300"))
EXAMPLE = (Path(__file__).resolve().parents[1] / "fixtures" / "config" / "two-clusters.yaml").read_text()
LINES = EXAMPLE.splitlines(keepends=True)
SPLICES = st.sampled_from(["[", "]", "{", "}", ":", "- ", "&a ", "*a", "!!python/object:os.system ", "<<: *a\n",
                           "'", '"', "#", "\t", "\n", "  ", "? ", "|", ">", "%YAML 1.1\n", "---\n", "\x00",
                           "\ud800", "9" * 400, "1e999", "-1d", "0s", "366d", "[" * 3000, "{a: " * 1500])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30),
                    st.sampled_from(["30d", "0s", "-5m", "https://dev.azure.com/x", "vso.agentpools_manage"]))
DOCUMENTS = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.sampled_from(["organizations", "clusters", "tokens", "worker", "exporter", "azure",
                                     "name", "url", "sinks", "consumers", "lease", "scopes", "kind"]),
                    inner, max_size=5)), max_leaves=20)


@st.composite
def mutated_example(draw: st.DrawFn) -> str:
    lines = list(LINES)
    for _ in range(draw(st.integers(1, 5))):
        op = draw(st.sampled_from(("splice", "splice", "drop", "dup", "indent")))
        i = draw(st.integers(0, len(lines) - 1))
        if op == "splice":
            at = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:at] + draw(SPLICES) + lines[i][at:]
        elif op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        else:
            lines[i] = " " * draw(st.integers(1, 6)) + lines[i]
        if not lines:
            lines = [""]
    return "".join(lines)


TEXTS = st.one_of(mutated_example(), mutated_example(), mutated_example(),
                  DOCUMENTS.map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
                  st.binary(max_size=300).map(lambda b: b.decode("latin-1")))


def test_any_file_is_a_config_or_a_list_of_problems_naming_it(tmp_path: Path) -> None:
    outcomes: Counter[str] = Counter()
    path = tmp_path / "patrol.yaml"

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=EXAMPLES <= 5000,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(TEXTS)
    def one(text: str) -> None:
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        try:
            config = load_config(str(path))
        except ConfigErrors as exc:
            assert exc.file == str(path) and exc.problems
            assert all(p.problem for p in exc.problems)
            outcomes["problems"] += 1
        else:
            assert isinstance(config, Config)
            outcomes["loaded"] += 1

    one()
    print(f"\nconfig fuzz: {sum(outcomes.values())} files, {dict(outcomes)}, 0 tracebacks")
    assert sum(outcomes.values()) >= EXAMPLES
