"""patrol's one exception hierarchy.

Adapters translate third-party exceptions (httpx, azure.core, kubernetes) into these at the
boundary (``raise X(...) from exc``); services and the saga never catch a third-party type.

    PatrolError
    ├── ConfigError                    a configuration file is wrong (names file, key path, fix)
    ├── ListenError                    a server cannot bind its address (in use, not allowed)
    ├── TransientError(delay)          worth retrying, after ``delay`` seconds if the server said so
    │   ├── UnavailableError           connection refused/reset, timeout, DNS
    │   ├── ServerError                5xx
    │   ├── ThrottledError             429, or a 200 that asked us to wait (Retry-After)
    │   └── ConflictError              409 / resourceVersion precondition failed
    └── PermanentError                 retrying will not help
        ├── UnauthorizedError          401, 203 + HTML sign-in page, 403
        │   └── CredentialError(cause) the bot's sign-in is refused for a reason a human must fix
        │       └── AuthenticationRequiredError  a credential needs a human (expired refresh token)
        ├── NotFoundError              404
        ├── BadRequestError            other 4xx
        ├── PolicyViolationError(code) PAT API answered patTokenError != "none"
        └── ScopeMismatchError         a created PAT does not carry exactly the scopes asked for

Every message must be safe to log: never put a token value in one.
"""

from __future__ import annotations

import errno
import os


class PatrolError(Exception):
    """Base of every error patrol raises on purpose."""


class ConfigError(PatrolError):
    """A configuration problem, reported as ``file: key.path: problem (fix: ...)``."""

    def __init__(self, file: str, path: str, problem: str, fix: str = "") -> None:
        self.file = file
        self.path = path
        self.problem = problem
        self.fix = fix
        where = f"{file}: {path}" if path else file
        text = f"{where}: {problem}"
        if fix:
            text += f" (fix: {fix})"
        super().__init__(text)


class ListenError(PatrolError):
    """A server cannot listen on its address: a usage problem (exit 2), told in one line.

    ``cannot listen on 0.0.0.0:9877: address already in use (use --listen)``
    """

    # what bind(2) fails with when the address, not the program, is the problem
    ERRNOS = frozenset({errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL})

    def __init__(self, host: str, port: int, reason: str, flag: str) -> None:
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.reason = reason
        super().__init__(f"cannot listen on {self.address}: {reason} (use {flag})")

    @classmethod
    def from_os_error(cls, exc: OSError, host: str, port: int, flag: str) -> ListenError | None:
        """The ListenError for a bind failure, or None for any other OSError."""
        if exc.errno not in cls.ERRNOS:
            return None
        return cls(host, port, os.strerror(exc.errno).lower(), flag)


class TransientError(PatrolError):
    """Worth retrying. ``delay`` is the server's requested wait in seconds, if it gave one."""

    def __init__(self, message: str, *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(PatrolError):
    """Retrying the same call will not help."""


class ApiError(PatrolError):
    """Mixin carrying what an API answered: which service, which HTTP status."""

    service: str = ""
    status: int | None = None


class UnavailableError(TransientError, ApiError):
    """The service could not be reached (connection error, timeout)."""

    def __init__(self, message: str, *, service: str = "", delay: float | None = None) -> None:
        super().__init__(message, delay=delay)
        self.service = service


class ServerError(TransientError, ApiError):
    def __init__(self, message: str, *, service: str = "", status: int | None = None,
                 delay: float | None = None) -> None:
        super().__init__(message, delay=delay)
        self.service = service
        self.status = status


class ThrottledError(TransientError, ApiError):
    def __init__(self, message: str, *, service: str = "", status: int | None = 429,
                 delay: float | None = None) -> None:
        super().__init__(message, delay=delay)
        self.service = service
        self.status = status


class ConflictError(TransientError, ApiError):
    def __init__(self, message: str, *, service: str = "", status: int | None = 409) -> None:
        super().__init__(message)
        self.service = service
        self.status = status


class _PermanentApiError(PermanentError, ApiError):
    def __init__(self, message: str, *, service: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.service = service
        self.status = status


class UnauthorizedError(_PermanentApiError):
    """401/403, or ADO's 203 + HTML sign-in page: the credential does not authenticate."""


class NotFoundError(_PermanentApiError):
    pass


class BadRequestError(_PermanentApiError):
    pass


class PolicyViolationError(_PermanentApiError):
    """The PAT Lifecycle API refused by policy; ``code`` is the ``patTokenError`` value."""

    def __init__(self, message: str, *, code: str, service: str = "ado",
                 status: int | None = None) -> None:
        super().__init__(message, service=service, status=status)
        self.code = code


class ScopeMismatchError(PermanentError):
    """A PAT came back with scopes other than those requested."""


class CredentialError(UnauthorizedError):
    """A credential is refused for a reason only a human can fix (MFA, Conditional Access, consent,
    app settings, a token the service keeps rejecting). ``cause`` is a short, fixed word naming
    it (the ``cause`` label of ``patrol_credential_failures_total``); the message names the cause
    and the fix. Retrying does not help, so nothing retries it.
    """

    def __init__(self, message: str, *, cause: str, service: str = "entra",
                 status: int | None = None) -> None:
        super().__init__(message, service=service, status=status)
        self.cause = cause


class AuthenticationRequiredError(CredentialError):
    """A credential cannot get a token without a human (run ``patrol login``)."""

    def __init__(self, message: str, *, cause: str = "sign_in_required", service: str = "entra",
                 status: int | None = None) -> None:
        super().__init__(message, cause=cause, service=service, status=status)
