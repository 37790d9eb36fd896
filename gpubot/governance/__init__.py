"""Money rules. One concern per module:

* :mod:`.periods`: calendar periods (day, week, month in UTC) and exact USD helpers.
* :mod:`.limits`: which budgets apply to a job, user, channel or the team; spend and burn.
* :mod:`.gate`: THE launch budget gate (fits / needs approval / refused).
* :mod:`.enforce`: every tick, 50/80/100 % alerts and stop requests.
* :mod:`.budgets`: ``/gpu budget show | set`` (data; replies in :mod:`gpubot.render.budgets`).
* :mod:`.reports`: ``/gpu cost`` (ledger totals and a chart).
* :mod:`.charges`: the daily check of the ledger against the provider's charges.
"""
