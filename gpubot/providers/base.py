"""The GPU marketplace port. Pure: no vendor imports.

Every method makes at most one logical API call (the SDK may page or retry inside it) and
returns; nothing waits for an instance to change state. Waiting happens across reconcile ticks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from gpubot.models import AccountInfo, InstanceObservation, LaunchSpec, Offer, Requirements


class Provider(Protocol):
    """A GPU marketplace (vast.ai, or the simulator through the same adapter)."""

    name: str

    def search_offers(self, requirements: Requirements, *, interruptible: bool) -> Sequence[Offer]:
        """Offers that the marketplace says match ``requirements``, cheapest first.

        The caller re-checks every offer (gpubot.offers.offer_matches); a marketplace search can
        return the wrong card. May be empty.

        Raises:
            TransientProviderError: rate limited, 5xx or timeout.
        """
        ...

    def create_instance(self, offer: Offer, spec: LaunchSpec) -> str:
        """Rent ``offer`` and return the provider instance id as soon as it is known.

        Raises:
            NoCapacityError: the offer is gone or the bid lost; a half-created (stopped)
                instance has already been destroyed.
            TransientProviderError: nothing was created; try again later.
        """
        ...

    def observe(self, provider_id: str) -> InstanceObservation | None:
        """The instance's current state, or None when the provider no longer knows it."""
        ...

    def list_instances(self) -> list[InstanceObservation]:
        """Every instance of the account (all pages).

        Raises:
            TransientProviderError: the listing failed. A failure is never an empty list.
        """
        ...

    def destroy(self, provider_id: str) -> None:
        """Ask for destruction. Idempotent: an unknown instance is success.

        Verification (the instance leaving the listing) is the caller's job.
        """
        ...

    def stop(self, provider_id: str) -> None:
        """Stop the container (storage keeps billing)."""
        ...

    def start(self, provider_id: str) -> None:
        """Start a stopped container."""
        ...

    def set_label(self, provider_id: str, label: str) -> None:
        """Set the instance label."""
        ...

    def attach_ssh_key(self, provider_id: str, public_key: str) -> None:
        """Authorise ``public_key`` for SSH on the instance."""
        ...

    def account(self) -> AccountInfo:
        """Money left on the account."""
        ...

    def charges(self) -> list[dict[str, object]]:
        """The provider's own charge rows (for the daily reconciliation)."""
        ...
