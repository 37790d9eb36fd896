"""The market verb: ``/gpu offers [template] [filters]``, the cheapest matching offers.

One provider search per call, no writes.
"""

from __future__ import annotations

from gpubot import offers as offer_rules
from gpubot.chat.reply import Reply
from gpubot.commands import OffersCommand
from gpubot.deps import EngineDeps
from gpubot.engine import planning
from gpubot.errors import CommandError
from gpubot.models import InterruptibleMode, OfferRanking, RentalType
from gpubot.render import chat as texts
from gpubot.render import slack as slack_render


def offers(deps: EngineDeps, command: OffersCommand) -> Reply:
    """The ``command.limit`` cheapest offers matching the template's (or the filters')
    requirements, bid prices when interruptible was asked for.

    Raises:
        CommandError: the template is unknown.
        TransientProviderError: the market did not answer (the dispatcher says so).
    """
    if command.template is not None and command.template not in deps.config.templates:
        raise CommandError(f"unknown template {command.template!r}")
    filters = command.filters
    requirements = planning.requirements_for(deps.config, command.template, filters)
    interruptible = filters.interruptible is InterruptibleMode.YES
    rental_type = RentalType.INTERRUPTIBLE if interruptible else RentalType.ON_DEMAND
    market = deps.provider.search_offers(requirements, interruptible=interruptible)
    matching = [
        o
        for o in market
        if not offer_rules.offer_matches(o, requirements, rental_type=rental_type)
    ]
    best = offer_rules.rank_offers(matching, OfferRanking.PRICE, rental_type=rental_type)
    best = best[: command.limit]
    title = texts.offers_title(len(best), interruptible=interruptible)
    return Reply(
        text=texts.offers_text(title, slack_render.offers_table(best)),
        blocks=slack_render.offers_blocks(best, title),
    )
