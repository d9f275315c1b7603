"""``patrol login``: the one interactive device-code sign-in for an MFA-protected bot account.

The worker and exporter then refresh silently from the persistent token cache; when the refresh
token is gone (revoked, ~90 days unused) they fail with "run patrol login" instead of hanging.
"""

from __future__ import annotations

import sys

from core import entra
from core.config import Config
from core.errors import ConfigError


def run(config: Config, *, organization: str | None) -> int:
    candidates = [o for o in config.organizations if organization in (None, o.name)]
    if not candidates:
        raise ConfigError(config.source, "organizations", f"no organization named {organization!r}",
                          "pass --organization with a name from the file")
    if len(candidates) > 1:
        raise ConfigError(config.source, "organizations", "several organizations are configured",
                          "pass --organization NAME")
    org = candidates[0]
    if org.credential.kind != "device-code":
        raise ConfigError(config.source, f"organizations[{config.organizations.index(org)}].credential.kind",
                          f"is {org.credential.kind!r}; patrol login is only for device-code credentials",
                          "set kind: device-code for a bot account protected by MFA")
    record_file = org.credential.record_file or entra.default_record_file()
    entra.login_device_code(org.credential, azure=config.azure, record_file=record_file,
                            prompt=lambda text: print(text, file=sys.stderr, flush=True))
    print(f"signed in; record written to {record_file}. The worker can now refresh silently.")
    return 0
