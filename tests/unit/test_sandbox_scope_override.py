"""The sandbox's ``scope_override`` knob: a PAT created while it is on carries other scopes.

Real ADO may narrow a PAT's scopes by organization policy; the sandbox simulates that so the
saga's scope read-back (stop, revoke the PAT) is tested over real HTTP in tests/e2e.
"""

from __future__ import annotations

import pytest

from sandbox.ado import AdoWorld
from sandbox.entra import Entra


@pytest.fixture
def world() -> AdoWorld:
    return AdoWorld("org", Entra("tenant", clock=lambda: 1_800_000_000.0), clock=lambda: 1_800_000_000.0)


def test_scope_override_is_validated_and_normalised(world: AdoWorld) -> None:
    assert world.policy.scope_override is None
    assert world.set_policy(scope_override="  vso.agentpools   vso.build ").scope_override == (
        "vso.agentpools vso.build")
    assert world.policy.to_dict()["scope_override"] == "vso.agentpools vso.build"
    for bad in ("", "   ", "not a scope!", 42):
        with pytest.raises(ValueError, match="scope_override"):
            world.set_policy(scope_override=bad)
    assert world.set_policy(scope_override=None).scope_override is None
