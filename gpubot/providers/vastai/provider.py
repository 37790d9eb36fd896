"""The vast.ai :class:`~gpubot.providers.base.Provider`, on the official ``vastai`` SDK (1.9.1).

Every public method makes one logical SDK call (the SDK pages and retries inside it) and returns.
Vendor behaviour handled here (vastai 1.9.1 SDK and the vast.ai REST API):

- ``VastAI(retry=N)``: N is the *total* number of attempts; ``retry=0`` sends nothing, so we
  refuse values below 1. 429/502/503/504 and connection errors/timeouts are retried by the SDK
  (``Retry-After`` honoured up to 60 s); what is left afterwards becomes
  :class:`TransientProviderError`.
- A 200 reply with ``{"success": false}`` is returned by the SDK, not raised: every mutating
  reply is checked here.
- A bid below ``min_bid`` creates a *stopped* instance and answers ``success: false`` with
  ``new_contract``: we destroy it before raising :class:`NoCapacityError`.
  Whether that reply comes as a 200 or as an error status (the SDK then raises ``HTTPError``),
  the body's ``new_contract`` is read and the stopped instance destroyed in the same call.
- Destroying an instance that is already gone (404 / ``no_such_instance``) is success.
- Rate limits: vast limits each endpoint by a minimum interval between calls and sends no
  ``Retry-After``; the SDK's own retries give up after about 1.2 s and never retry
  ``search_quota_exceeded``. Every call holds a turn of a shared :class:`Pace`
  (``gpubot.providers.vastai.pace``) while it runs; the next call of that endpoint leaves one
  interval after it returned. A 429 or quota reply that is left raises
  :class:`RateLimitedError` (``retry_after_seconds`` from ``Retry-After``, the
  ``threshold=`` in vast's message or ``X-RateLimit-Reset``, else the endpoint's interval)
  and rests the endpoint that long.

Output: on the dict-query paths used here the SDK prints nothing (``quiet=True`` is passed
anyway; ``explain``/``curl`` are never enabled — ``curl=True`` would ``sys.exit``).

Secrets: the SDK sends the API key only in the ``Authorization`` header. Our exception messages
are built from the operation name, the HTTP status and vast's ``error``/``msg`` fields only, and
are passed through :meth:`VastAIProvider._redact` as a second line of defence; the original
vendor exception is kept as ``__cause__`` (its text holds the URL, which never carries the key).

Why one module over 500 lines: it is the whole translation between vast's SDK and the
Provider port (every call paced, every vendor error mapped to the one error tree, create's
refusal paths handled in one place); its parsing lives beside it in ``parsing.py``.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, NoReturn, TypeVar

import requests

from gpubot.errors import (
    ConfigError,
    NoCapacityError,
    ProviderAuthError,
    ProviderError,
    RateLimitedError,
    TransientProviderError,
)
from gpubot.models import AccountInfo, InstanceObservation, LaunchSpec, Offer, Requirements
from gpubot.providers.vastai.pace import Pace
from gpubot.providers.vastai.parsing import VastOffers, observation_from_vast
from gpubot.providers.vastai.query import search_body

log = logging.getLogger(__name__)

T = TypeVar("T")
SdkFactory = Callable[..., Any]
"""Builds the SDK object: called as ``factory(api_key=, server_url=, retry=, quiet=)``."""

TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
GONE_ERRORS = frozenset({"no_such_instance", "not_found"})
NO_CAPACITY_ERRORS = frozenset(
    {"no_such_ask", "not_available", "no_longer_available", "insufficient_bid"}
)
AUTH_ERRORS = frozenset({"auth_error", "invalid_api_key", "unauthorized"})
RATE_LIMIT_ERRORS = frozenset({"rate_limit_exceeded", "search_quota_exceeded"})
MAX_CHARGE_PAGES = 50
MAX_MESSAGE_CHARS = 300
_THRESHOLD_RE = re.compile(r"threshold\s*=\s*([0-9]+(?:\.[0-9]+)?)")


def _default_sdk_factory(**kwargs: Any) -> Any:
    from vastai import VastAI

    return VastAI(**kwargs)


class VastAIProvider:
    """vast.ai (or the simulator, which speaks the same API) through ``vastai.VastAI``.

    Error contract for every method (in addition to the per-method notes):

    - :class:`TransientProviderError`: 429 after the SDK's retries, 5xx, connection error,
      timeout, or an unreadable reply. Nothing was changed; try again on a later tick.
    - :class:`ProviderAuthError`: 401/403, or vast's ``auth_error`` (which some endpoints send
      as 404).
    - :class:`ProviderError`: any other refusal (400, 404 on an unknown instance, a 200 reply
      with ``success: false``).
    """

    name = "vastai"

    def __init__(
        self,
        *,
        api_key: str,
        server_url: str,
        retry_attempts: int = 5,
        request_timeout_seconds: float = 30.0,
        sdk_factory: SdkFactory | None = None,
        pace: Pace | None = None,
    ) -> None:
        """Build the SDK client. Nothing is sent until the first call.

        Args:
            api_key: the vast.ai API key (kept out of every message this class produces).
            server_url: ``https://console.vast.ai`` or the simulator's URL; a trailing ``/`` is
                stripped (the SDK appends ``/api/v0`` as is).
            retry_attempts: the SDK's ``retry``: total attempts per HTTP request, >= 1.
                Creates are never retried by the SDK (a retried create after a lost reply
                could rent twice); the engine resolves them by label on the next tick.
            request_timeout_seconds: per HTTP request (the SDK's default is 120 s, which with
                retries could hold a tick for ten minutes).
            sdk_factory: replaces ``vastai.VastAI`` (tests); same keyword arguments.
            pace: turns per vast endpoint shared by every worker (``make_pace``); None sends
                at once (tests). The composition root may also set :attr:`pace` later.

        Raises:
            ConfigError: empty key or URL, or ``retry_attempts < 1``.
        """
        if not api_key:
            raise ConfigError("the vast.ai API key is empty", key="VAST_API_KEY")
        if not server_url or not server_url.strip():
            raise ConfigError("the vast.ai server URL is empty", key="VAST_URL")
        if retry_attempts < 1:
            raise ConfigError(
                "retry_attempts must be >= 1 (vastai's retry=0 sends no request at all)"
            )
        self._api_key = api_key
        self.pace = pace
        self.server_url = server_url.strip().rstrip("/")
        factory = sdk_factory or _default_sdk_factory
        self._sdk = factory(
            api_key=api_key, server_url=self.server_url, retry=retry_attempts, quiet=True
        )
        self._create_sdk = factory(
            api_key=api_key, server_url=self.server_url, retry=1, quiet=True
        )
        for sdk in (self._sdk, self._create_sdk):
            client = getattr(sdk, "client", None)
            if client is not None and hasattr(client, "timeout"):
                client.timeout = request_timeout_seconds

    def __repr__(self) -> str:
        return f"VastAIProvider(server_url={self.server_url!r})"

    @property
    def pace_identity(self) -> str:
        """Names this account at this server for a shared :class:`Pace` (vast limits per API
        key): a short SHA-256 of URL and key, never the key itself."""
        digest = hashlib.sha256(f"{self.server_url}\0{self._api_key}".encode()).hexdigest()
        return digest[:16]

    # ------------------------------------------------------------------------ offers

    def search_offers(self, requirements: Requirements, *, interruptible: bool) -> Sequence[Offer]:
        """Offers of the ON-DEMAND market for ``requirements``; may be empty.

        Always ``type=on-demand``, also when ``interruptible``: vast's ``type=bid`` search
        reports ``dph_total = min_bid + storage``, which would then pass for
        the on-demand price. Each row's ``dph_total`` is the on-demand price (with the job's
        disk as ``allocated_storage``), ``dph_base`` its compute part and ``min_bid`` the
        interruptible floor; the core derives the bid from those (``gpubot.offers.bid_for``).

        With ``interruptible`` the price cap filters ``min_bid`` instead of ``dph_total``
        (an offer whose on-demand price is above the cap may still take a bid below it) and
        rows come cheapest ``min_bid`` first; otherwise cheapest ``dph_total`` first. Rows are
        re-parsed but never filtered (the core re-checks them); a row that cannot be parsed at
        all (no id, name or price) is skipped with a warning.

        The list is a :class:`VastOffers`: each row is parsed when first used, so
        ``gpubot.offers.choose_rental`` can screen the raw rows and build only the offer it
        picks; iterating, indexing or ``len`` parse (and log) every row as a plain list would.
        """
        kwargs = search_body(requirements, interruptible=False)
        if interruptible:
            query = dict(kwargs["query"])
            cap = query.pop("dph_total", None)
            if cap is not None:
                query["min_bid"] = cap
            kwargs = {**kwargs, "query": query, "order": "min_bid+"}
        rows = self._call(
            "search offers", lambda: self._sdk.search_offers(**kwargs), endpoint="search"
        )
        if not isinstance(rows, list):
            raise TransientProviderError("vast.ai search offers: unexpected reply shape")
        return VastOffers(rows)

    # --------------------------------------------------------------------- instances

    def create_instance(self, offer: Offer, spec: LaunchSpec) -> str:
        """Rent ``offer``; return the new instance id (vast ``new_contract``) as a string.

        On-demand unless ``spec.bid_per_hour_usd`` is set (then ``price=`` = the bid, $/h per
        machine). Sends image, disk, label, ``spec.env`` as a dict, ``onstart``,
        ``ssh=True, direct=True``; on-demand also sends ``cancel_unavail=True`` so an offer that
        cannot be scheduled is refused instead of leaving a stopped instance.

        After a successful create, ``spec.ssh_public_key`` (if any) is attached with one more
        call; a failure there is logged, not raised (the id must reach the caller; call
        :meth:`attach_ssh_key` again, it is idempotent).

        Raises:
            NoCapacityError: 404 ``no_such_ask``/410 (offer gone), or ``success: false`` (bid
                lost). When vast created a stopped instance anyway (``new_contract`` set), it
                was destroyed first; ``created_instance_id`` names it. If that destroy failed,
                the message says so and the caller must destroy it.
            RateLimitedError: no create turn (nothing was sent) or vast answered 429 to the
                one attempt a create makes: nothing was rented; try after
                ``retry_after_seconds``.
            TransientProviderError: vast refused for now (5xx) or did not answer. After a
                timeout or a 5xx vast may still have created the instance: look for
                ``spec.label`` with :meth:`find_by_label` before renting again.
            ProviderAuthError / ProviderError: see the class docstring.
        """
        offer_id = _numeric_id(offer.offer_id, "offer")
        bid = spec.bid_per_hour_usd
        what = f"create instance from offer {offer.offer_id}"
        try:
            reply = self._call(
                what,
                lambda: self._create_sdk.create_instance(
                    offer_id,
                    image=spec.image,
                    disk=spec.disk_gb,
                    env=dict(spec.env),
                    price=float(bid) if bid is not None else None,
                    label=spec.label,
                    onstart_cmd=spec.onstart,
                    ssh=True,
                    direct=True,
                    cancel_unavail=bid is None,
                ),
                check_success=False,
                endpoint="create",
            )
        except ProviderError as e:
            body = _error_body(e)
            if body is not None and body.get("new_contract"):
                # The low-bid "created stopped" answer with an error status: the SDK raised,
                # but vast did rent (the stopped instance bills storage).
                self._refused_create(what, body, cause=e)
            status, code = _vendor_failure(e)
            if not isinstance(e, (ProviderAuthError, TransientProviderError)) and (
                status in (404, 410) or code in NO_CAPACITY_ERRORS
            ):
                raise NoCapacityError(f"vast.ai {what}: offer no longer available") from e
            raise
        if not isinstance(reply, Mapping):
            raise TransientProviderError(f"vast.ai {what}: unexpected reply shape")
        if reply.get("success") is False:
            self._refused_create(what, reply)
        new_contract = reply.get("new_contract")
        if not new_contract:
            raise ProviderError(f"vast.ai {what}: the reply has no instance id")
        instance_id = str(new_contract)
        if spec.ssh_public_key:
            try:
                self.attach_ssh_key(instance_id, spec.ssh_public_key)
            except ProviderError as e:
                log.warning("attaching the SSH key to new instance %s failed: %s", instance_id, e)
        return instance_id

    def _refused_create(
        self, what: str, body: Mapping[str, Any], *, cause: BaseException | None = None
    ) -> NoReturn:
        """One path for every refused create, a 200 ``success: false`` or an error status.

        A ``new_contract`` in ``body`` is an instance vast created anyway (stopped: the bid was
        below ``min_bid``): it is destroyed here, then :class:`NoCapacityError` names it.
        """
        code, msg = _error_fields(body)
        new_contract = body.get("new_contract")
        if new_contract:
            instance_id = str(new_contract)
            cleanup = "it was destroyed"
            try:
                self.destroy(instance_id)
            except ProviderError as destroy_error:
                log.error(
                    "vast.ai left stopped instance %s after a refused create and destroying "
                    "it failed: %s",
                    instance_id,
                    destroy_error,
                )
                cleanup = "destroying it FAILED, destroy it later"
            raise NoCapacityError(
                self._redact(
                    f"vast.ai {what} refused ({code or 'no error code'}: {msg}); vast "
                    f"created stopped instance {instance_id} anyway and {cleanup}"
                ),
                created_instance_id=instance_id,
            ) from cause
        if code in NO_CAPACITY_ERRORS:
            raise NoCapacityError(
                self._redact(f"vast.ai {what} refused ({code}: {msg})")
            ) from cause
        self._raise_refused(what, body)

    def observe(self, provider_id: str) -> InstanceObservation | None:
        """The instance's current state, or None when vast no longer knows it.

        None for ``{"instances": null}``, a 404, or an id that is not a vast id at all.
        """
        if not _is_numeric(provider_id):
            return None
        what = f"show instance {provider_id}"
        try:
            row = self._call(what, lambda: self._sdk.show_instance(int(provider_id)))
        except ProviderError as e:
            if _vendor_failure(e)[0] == 404 and not isinstance(e, ProviderAuthError):
                return None
            raise
        if row is None:
            return None
        if not isinstance(row, Mapping):
            raise TransientProviderError(f"vast.ai {what}: unexpected reply shape")
        return self._parse_observation(row, what)

    def list_instances(self) -> list[InstanceObservation]:
        """Every instance of the account: all pages of ``GET /api/v1/instances/``.

        Raises:
            TransientProviderError: any page failed or a row was unreadable. A failure is never
                an empty list.
            ProviderAuthError: the key was refused.
        """
        what = "list instances"
        try:
            rows = self._call(what, self._sdk.show_instances, endpoint="list")
        except ProviderAuthError:
            raise
        except TransientProviderError:
            raise
        except ProviderError as e:
            raise TransientProviderError(str(e)) from e
        if not isinstance(rows, list):
            raise TransientProviderError(f"vast.ai {what}: unexpected reply shape")
        return [self._parse_observation(row, what) for row in rows]

    def find_by_label(self, label: str) -> list[InstanceObservation]:
        """Instances whose label is exactly ``label`` (one full :meth:`list_instances`)."""
        return [obs for obs in self.list_instances() if obs.label == label]

    def destroy(self, provider_id: str) -> None:
        """Ask vast to destroy the instance. Idempotent: already gone (404 or
        ``no_such_instance``) is success. Verification is the caller's job."""
        instance_id = _numeric_id(provider_id, "instance")
        what = f"destroy instance {provider_id}"
        try:
            reply = self._call(
                what,
                lambda: self._sdk.destroy_instance(instance_id),
                check_success=False,
                endpoint="destroy",
            )
        except ProviderError as e:
            status, code = _vendor_failure(e)
            if isinstance(e, (ProviderAuthError, TransientProviderError)):
                raise
            if status in (404, 410) or code in GONE_ERRORS:
                log.info("vast.ai instance %s was already gone", provider_id)
                return
            raise
        if isinstance(reply, Mapping) and reply.get("success") is False:
            code, _ = _error_fields(reply)
            if code in GONE_ERRORS:
                return
            self._raise_refused(what, reply)

    def stop(self, provider_id: str) -> None:
        """Stop the container (``state=stopped``); storage keeps billing.

        Raises ProviderError (404) when the instance is unknown."""
        instance_id = _numeric_id(provider_id, "instance")
        self._call(f"stop instance {provider_id}", lambda: self._sdk.stop_instance(instance_id))

    def start(self, provider_id: str) -> None:
        """Start a stopped container (``state=running``). An interruptible instance may stay
        in "Scheduling" (observed as OUTBID) while its GPU cannot be reacquired."""
        instance_id = _numeric_id(provider_id, "instance")
        self._call(f"start instance {provider_id}", lambda: self._sdk.start_instance(instance_id))

    def set_label(self, provider_id: str, label: str) -> None:
        """Set the instance label (vast allows up to 1024 characters)."""
        instance_id = _numeric_id(provider_id, "instance")
        self._call(
            f"label instance {provider_id}",
            lambda: self._sdk.label_instance(instance_id, label),
        )

    def attach_ssh_key(self, provider_id: str, public_key: str) -> None:
        """Authorise ``public_key`` (an OpenSSH public key line) for SSH on the instance."""
        instance_id = _numeric_id(provider_id, "instance")
        self._call(
            f"attach ssh key to instance {provider_id}",
            lambda: self._sdk.attach_ssh(instance_id, public_key.strip()),
        )

    # ----------------------------------------------------------------------- account

    def ensure_account_ssh_key(self, public_key: str) -> bool:
        """Register ``public_key`` on the vast ACCOUNT unless it is there; True if it was added.

        vast adds the account's keys to every instance at creation (vast docs, "SSH
        connection": keys on the account are applied to new instances; SDK ``show_ssh_keys``
        ``GET /ssh/``, ``create_ssh_key`` ``POST /ssh/``), so SSH works from the first boot.
        Idempotent: the account's keys are listed first and compared by type and body (the
        comment is ignored). Call once per process; the per-instance attach stays as fallback.

        Raises:
            ProviderError (and subclasses): the listing or the registration failed.
        """
        wanted = _key_body(public_key)
        if not wanted:
            raise ProviderError("not an OpenSSH public key line")
        reply = self._call("show ssh keys", self._sdk.show_ssh_keys)
        rows: Any = reply
        if isinstance(reply, Mapping):
            rows = reply.get("ssh_keys") or reply.get("keys") or []
        if not isinstance(rows, list):
            raise TransientProviderError("vast.ai show ssh keys: unexpected reply shape")
        for row in rows:
            if not isinstance(row, Mapping):
                continue
            text = row.get("public_key") or row.get("ssh_key") or row.get("key") or ""
            if isinstance(text, str) and _key_body(text) == wanted:
                return False
        self._call("create ssh key", lambda: self._sdk.create_ssh_key(public_key.strip()))
        log.info("registered the bot's SSH public key on the vast.ai account")
        return True

    def account(self) -> AccountInfo:
        """Money left: ``credit`` of ``GET /users/current`` (``balance`` is post-paid and
        often 0 on prepaid accounts)."""
        what = "show user"
        user = self._call(what, self._sdk.show_user)
        if not isinstance(user, Mapping) or user.get("credit") is None:
            raise ProviderError(f"vast.ai {what}: the reply has no credit field")
        try:
            credit = Decimal(str(user["credit"]))
        except InvalidOperation as e:
            raise ProviderError(f"vast.ai {what}: credit is not a number") from e
        return AccountInfo(credit_usd=credit, email=str(user.get("email") or ""))

    def charges(
        self, *, start: datetime | None = None, end: datetime | None = None
    ) -> list[dict[str, object]]:
        """vast's charge rows (``GET /api/v0/charges/``, table format), all pages.

        Without ``start``/``end`` the SDK's default window applies (the last 7 days). Rows are
        returned as vast sends them (``start``, ``end``, ``type``, ``source``, ``amount``,
        ``items``, ...). At most ``MAX_CHARGE_PAGES`` pages of 100 rows are read.
        """
        params: dict[str, Any] = {"charges": True, "limit": 100, "format": "table"}
        if start is not None:
            params["start_date"] = int(start.timestamp())
        if end is not None:
            params["end_date"] = int(end.timestamp())
        rows: list[dict[str, object]] = []
        for _ in range(MAX_CHARGE_PAGES):
            page = self._call("show charges", lambda: self._sdk.show_invoices_v1(**params))
            if not isinstance(page, Mapping):
                raise TransientProviderError("vast.ai show charges: unexpected reply shape")
            rows.extend(dict(r) for r in page.get("results") or [] if isinstance(r, Mapping))
            token = page.get("next_token")
            if not token:
                break
            params["next_token"] = token
        return rows

    # ----------------------------------------------------------------------- helpers

    def _parse_observation(self, row: Mapping[str, Any], what: str) -> InstanceObservation:
        try:
            return observation_from_vast(row)
        except (ValueError, TypeError, AttributeError) as e:
            raise TransientProviderError(f"vast.ai {what}: unreadable instance row") from e

    def _call(
        self,
        what: str,
        fn: Callable[[], T],
        *,
        check_success: bool = True,
        endpoint: str = "other",
    ) -> T:
        """Take a turn on ``endpoint`` (see :attr:`pace`), run one SDK call, and translate every
        vendor failure into the gpubot error tree. A rate-limit answer rests the endpoint."""
        if self.pace is None:
            return self._call_now(what, fn, check_success=check_success)
        # The turn is held for the whole call and the next one comes one interval after this
        # call returns; entering raises RateLimitedError (nothing sent) when it is too far.
        with self.pace.turn(endpoint):
            try:
                return self._call_now(what, fn, check_success=check_success)
            except RateLimitedError as e:
                # vast answered 429 anyway: rest the endpoint for the wait it named, else its
                # interval; the caller retries then.
                e.retry_after_seconds = self.pace.defer(endpoint, e.retry_after_seconds)
                raise

    def _call_now(self, what: str, fn: Callable[[], T], *, check_success: bool) -> T:
        try:
            result = fn()
        except requests.HTTPError as e:
            self._raise_http(what, e)
        except (requests.ConnectionError, requests.Timeout) as e:
            raise TransientProviderError(
                f"vast.ai {what}: {type(e).__name__} (no reply from {self.server_url})"
            ) from e
        except ValueError as e:
            # requests' JSONDecodeError (a 200 that is not JSON) lands here too.
            raise TransientProviderError(f"vast.ai {what}: unreadable reply") from e
        except requests.RequestException as e:
            raise ProviderError(f"vast.ai {what}: {type(e).__name__}") from e
        except (KeyError, TypeError, AttributeError) as e:
            # The SDK indexes reply fields itself (e.g. "offers", "start_date").
            raise TransientProviderError(
                f"vast.ai {what}: malformed reply ({type(e).__name__})"
            ) from e
        if check_success and isinstance(result, Mapping) and result.get("success") is False:
            self._raise_refused(what, result)
        return result

    def _raise_http(self, what: str, e: requests.HTTPError) -> NoReturn:
        response = e.response
        status = response.status_code if response is not None else None
        code, msg = _response_error_fields(response)
        text = self._redact(
            f"vast.ai {what}: HTTP {status}"
            + (f" {code}" if code else "")
            + (f": {msg}" if msg else "")
        )
        error: ProviderError
        if status in (401, 403) or code in AUTH_ERRORS:
            error = ProviderAuthError(text)
        elif status == 429 or code in RATE_LIMIT_ERRORS:
            error = RateLimitedError(text, retry_after_seconds=_retry_after(response, msg))
        elif status in TRANSIENT_STATUS or (status is not None and status >= 500):
            error = TransientProviderError(text)
        else:
            error = ProviderError(text)
        raise error from e

    def _raise_refused(self, what: str, reply: Mapping[str, Any]) -> NoReturn:
        """A 200 reply with ``success: false``."""
        code, msg = _error_fields(reply)
        text = self._redact(
            f"vast.ai {what} refused: {code or 'no error code'}" + (f": {msg}" if msg else "")
        )
        error: ProviderError
        if code in AUTH_ERRORS:
            error = ProviderAuthError(text)
        elif code in RATE_LIMIT_ERRORS:
            error = RateLimitedError(text, retry_after_seconds=_threshold(msg))
        else:
            error = ProviderError(text)
        raise error

    def _redact(self, text: str) -> str:
        """Remove the API key from ``text`` (belt and braces: vendor text is echoed)."""
        if self._api_key and self._api_key in text:
            text = text.replace(self._api_key, "***")
        return text


def _numeric_id(value: str, kind: str) -> int:
    if not _is_numeric(value):
        raise ProviderError(f"not a vast.ai {kind} id: {value[:40]!r}")
    return int(value)


def _is_numeric(value: str) -> bool:
    return isinstance(value, str) and value.strip().isdigit()


def _vendor_failure(error: ProviderError) -> tuple[int | None, str]:
    """(HTTP status, vast error code) of the HTTP failure behind ``error``, if any."""
    cause = error.__cause__
    if isinstance(cause, requests.HTTPError) and cause.response is not None:
        return cause.response.status_code, _response_error_fields(cause.response)[0]
    return None, ""


def _error_fields(reply: Mapping[str, Any]) -> tuple[str, str]:
    """vast's ``error`` code and human ``msg`` (or ``detail``), shortened."""
    code = reply.get("error")
    msg = reply.get("msg") or reply.get("detail") or reply.get("message") or ""
    code_text = code if isinstance(code, str) else ""
    return code_text[:80], str(msg)[:MAX_MESSAGE_CHARS]


def _response_error_fields(response: requests.Response | None) -> tuple[str, str]:
    if response is None:
        return "", ""
    try:
        body = response.json()
    except ValueError:
        return "", response.text.strip()[:MAX_MESSAGE_CHARS] if response.text else ""
    if isinstance(body, Mapping):
        return _error_fields(body)
    return "", ""


def _error_body(error: ProviderError) -> Mapping[str, Any] | None:
    """The JSON object of the HTTP error reply behind ``error``, if it has one."""
    cause = error.__cause__
    if not isinstance(cause, requests.HTTPError) or cause.response is None:
        return None
    try:
        body = cause.response.json()
    except ValueError:
        return None
    return body if isinstance(body, Mapping) else None


def _threshold(msg: str) -> float | None:
    """vast's "API requests too frequent endpoint threshold=4.5" -> 4.5 (seconds)."""
    match = _THRESHOLD_RE.search(msg or "")
    return float(match.group(1)) if match else None


def _retry_after(response: requests.Response | None, msg: str) -> float | None:
    """Seconds to wait after a 429: ``Retry-After``, else the message's ``threshold=``, else
    ``X-RateLimit-Reset`` (epoch seconds; the daily search quota), else None."""
    if response is None:
        return _threshold(msg)
    try:
        header = response.headers.get("Retry-After")
        if header is not None:
            return max(0.0, float(header))
    except ValueError:
        pass
    threshold = _threshold(msg)
    if threshold is not None:
        return threshold
    try:
        reset = response.headers.get("X-RateLimit-Reset")
        if reset is not None:
            return max(0.0, float(reset) - time.time())
    except ValueError:
        pass
    return None


def _key_body(public_key: str) -> tuple[str, str] | None:
    """(type, base64 body) of an OpenSSH public key line; None if it is not one."""
    parts = public_key.strip().split()
    if len(parts) < 2:
        return None
    return parts[0], parts[1]
