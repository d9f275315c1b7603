"""``patrol exporter`` / ``python -m exporter`` take the environment from the command line's
caller (``args.env``), never from ``os.environ`` behind its back.

The sandbox's configuration is changed to read the bot's sign-in from two environment
variables (``credential.username_env``/``password_env``). With them in the environment given
to the command, the PAT Lifecycle source is up after one refresh; with them only in
``os.environ``, it cannot sign in.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from exporter.__main__ import main
from sandbox.app import SandboxThread

pytestmark = pytest.mark.contract

USER, PASSWORD = "PATROL_TEST_BOT_USER", "PATROL_TEST_BOT_PASSWORD"


@pytest.fixture(scope="module")
def env_config(sandbox: SandboxThread, tmp_path_factory: pytest.TempPathFactory) -> Path:
    doc = yaml.safe_load(Path(sandbox.ready["config"]).read_text())
    credential = doc["organizations"][0]["credential"]
    del credential["from_keyvault"]
    credential.update(username_env=USER, password_env=PASSWORD)
    path = tmp_path_factory.mktemp("config") / "patrol.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def pat_source_up(text: str, org: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "patrol_source_up" and sample.labels["source"] == f"pat-lifecycle/{org}":
                return sample.value
    return None


def test_the_environment_given_to_the_command_is_the_one_used(
        sandbox: SandboxThread, env_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bot = sandbox.ready["bot"]
    env = {"PATROL_CONFIG": str(env_config), USER: bot["username"], PASSWORD: bot["password"]}
    assert main(["--once", "--log-level", "WARNING"], env=env) == 0
    assert pat_source_up(capsys.readouterr().out, sandbox.params.org) == 1.0


def test_os_environ_is_not_read_behind_the_callers_back(
        sandbox: SandboxThread, env_config: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    bot = sandbox.ready["bot"]
    monkeypatch.setenv(USER, bot["username"])
    monkeypatch.setenv(PASSWORD, bot["password"])
    monkeypatch.setenv("PATROL_CONFIG", str(env_config))
    assert main(["--once"], env={}) == 2                 # PATROL_CONFIG only in os.environ: no config
    assert "no configuration file" in capsys.readouterr().err
    assert main(["--once", "--config", str(env_config), "--log-level", "WARNING"], env={}) == 1
    captured = capsys.readouterr()
    assert pat_source_up(captured.out, sandbox.params.org) == 0.0    # the bot could not sign in
    assert f"patrol exporter: source pat-lifecycle/{sandbox.params.org} is down: " in captured.err
    assert f"{USER}: variable is not set" in captured.err
    assert bot["password"] not in captured.out + captured.err
