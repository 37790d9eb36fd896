"""The one error tree of gpubot.

Everything the bot raises on purpose derives from :class:`GpubotError`. Adapters translate
vendor exceptions (requests, paramiko, botocore, slack_sdk) at their boundary with
``raise X(...) from e``; nothing above ``gpubot.providers``/``remote``/``storage`` sees them.

::

    GpubotError
    ├── ConfigError                 settings or gpubot.toml invalid; names the key (and line)
    ├── CommandError                a user typed something we can't run; .user_message
    │   ├── CommandSyntaxError      bad grammar; carries .usage and the offending .token
    │   └── PermissionDenied        the user/channel may not do this; .user_message says why
    ├── BudgetError                 a request would exceed a budget; .limit_usd, .projected_usd
    ├── NoOfferError                no offer satisfies the requirements
    ├── ProviderError               the GPU marketplace
    │   ├── NoCapacityError         offer gone / bid lost: try the next offer
    │   ├── ProvisioningError       this rental is dead: terminate it with a reason
    │   ├── TransientProviderError  429/5xx/timeouts: retry on a later tick
    │   │   └── RateLimitedError    429 / quota / our own pacing: wait, not a failure
    │   └── ProviderAuthError       the API key was refused
    ├── RemoteError                 SSH to a rented instance
    │   ├── SSHConnectError         could not connect / authenticate / connection dropped
    │   └── RemoteCommandFailed     a command exited non-zero; .exit_status, .stderr_tail
    ├── StorageError                S3 (checkpoints, results, staging)
    └── StaleLockError              a claimed row was taken over; results must be dropped

Messages never contain secrets: adapters pass only ids, URLs without signatures and vendor
error codes into them (see :func:`gpubot.redact.redact`).
"""

from __future__ import annotations

from decimal import Decimal


class GpubotError(Exception):
    """Root of every error gpubot raises on purpose."""

    user_message: str

    def __init__(self, message: str, *, user_message: str | None = None) -> None:
        super().__init__(message)
        self.user_message = user_message or message


class ConfigError(GpubotError):
    """Settings or gpubot.toml are invalid. ``key`` and ``line`` locate the problem."""

    def __init__(self, message: str, *, key: str | None = None, line: int | None = None) -> None:
        where = ""
        if key:
            where = f"{key}: "
        if line is not None:
            where = f"line {line}: {where}"
        super().__init__(f"{where}{message}")
        self.key = key
        self.line = line


class CommandError(GpubotError):
    """A user's command cannot be run. ``user_message`` is safe to show in Slack."""


class CommandSyntaxError(CommandError):
    """The command text does not follow the grammar.

    Attributes:
        token: the offending token as typed (truncated), or None.
        usage: a usage text for the verb (or the general help).
    """

    def __init__(self, message: str, *, token: str | None = None, usage: str = "") -> None:
        super().__init__(message, user_message=message)
        self.token = token
        self.usage = usage


class PermissionDenied(CommandError):
    """The requester may not do this here. The message says why."""


class BudgetError(GpubotError):
    """A request would exceed a budget."""

    def __init__(
        self,
        message: str,
        *,
        limit_usd: Decimal | None = None,
        projected_usd: Decimal | None = None,
    ) -> None:
        super().__init__(message)
        self.limit_usd = limit_usd
        self.projected_usd = projected_usd


class NoOfferError(GpubotError):
    """No offer on the market satisfies the requirements."""


class AboveCeilingError(NoOfferError):
    """Offers satisfy the requirements, but only above the job's approved price ceiling.
    ``cheapest_per_hour_usd`` is the price ($/h) of the one that would be chosen without the
    ceiling: what a user would have to approve for the job to rent now."""

    def __init__(self, message: str, *, cheapest_per_hour_usd: Decimal) -> None:
        super().__init__(message)
        self.cheapest_per_hour_usd = cheapest_per_hour_usd


class ProviderError(GpubotError):
    """The GPU marketplace failed or refused."""


class NoCapacityError(ProviderError):
    """The offer is gone or the bid lost. Any half-created instance was already destroyed."""

    def __init__(self, message: str, *, created_instance_id: str | None = None) -> None:
        super().__init__(message)
        self.created_instance_id = created_instance_id


class ProvisioningError(ProviderError):
    """The rental is dead (image failed, host lost): terminate it."""


class TransientProviderError(ProviderError):
    """Rate limit, 5xx or timeout: nothing changed, try again on a later tick."""


class RateLimitedError(TransientProviderError):
    """The provider (or our own pacing of it) says "not now": wait ``retry_after_seconds``
    (None: unknown) and try again. Not a failure: it never counts toward giving up a job."""

    def __init__(self, message: str, *, retry_after_seconds: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class ProviderAuthError(ProviderError):
    """The provider refused the API key."""


class RemoteError(GpubotError):
    """Talking to a rented instance over SSH failed."""


class SSHConnectError(RemoteError):
    """Could not connect or authenticate, or the connection dropped."""


class RemoteCommandFailed(RemoteError):
    """A remote command exited non-zero."""

    def __init__(self, message: str, *, exit_status: int, stderr_tail: str = "") -> None:
        super().__init__(message)
        self.exit_status = exit_status
        self.stderr_tail = stderr_tail


class StorageError(GpubotError):
    """Object storage (S3) failed."""


class StaleLockError(GpubotError):
    """The row's lock token changed: another worker owns it now; drop our results."""
