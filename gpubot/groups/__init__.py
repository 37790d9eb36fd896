"""Job groups: parameter sweeps and sharded runs (one parent thread, many child jobs).

A group is a :class:`~gpubot.db.tables.JobGroupRow` plus N ordinary child jobs (``JobRow``
with ``group_id``), each launched through :func:`gpubot.chat.launch.submit`: own instance,
card, checkpoints and results; the engine runs them like any job (an outbid child resumes on
its own). ``/gpu sweep <template> k=v1,v2,…`` makes one child per combination; a shardable
template with ``shards=N`` splits its declared input across N children balanced by bytes.
The plan's estimate, the approval rules and the budget gate apply to the group *total*;
``budget=`` caps the sum of the children's ledger; ``/gpu cancel g-…`` cancels every child.

Which module owns what:

* :mod:`~gpubot.groups.submit`: launching a group (:func:`submit_sweep`,
  :func:`submit_shards`, the retry shard), idempotent per ``request_key``.
* :mod:`~gpubot.groups.shards`: splitting an input (:func:`balance_shards`, pure), the
  params of one shard job, the group's declared input.
* :mod:`~gpubot.groups.children`: the children of a group; holding those beyond
  ``[engine] max_concurrent_children`` (queued, ``due_at`` far ahead) and releasing them.
* :mod:`~gpubot.groups.advance`: :func:`advance_groups`, the groups' part of every tick
  (budget, hold/release, summary card, results and final state).
* :mod:`~gpubot.groups.budget`: the group budget (alerts at 50/80 %, stop at 100 %).
* :mod:`~gpubot.groups.summary`: the live summary card on the parent message.
* :mod:`~gpubot.groups.results`: the target metric, the sweep ranking (:func:`rank_runs`,
  pure), merging shard results under ``groups/<gid>/results/`` with a ``manifest.jsonl``,
  the final reply.
* :mod:`~gpubot.groups.actions`: :func:`cancel_group`, :func:`approve_group`,
  :func:`retry_failed`.
* Every text (plan, card, replies, labels) is rendered by :mod:`gpubot.render.groups` from
  plain data; every audit event goes through :func:`gpubot.notify.audit.record`.

Every function reads state and makes conditional updates; running two at once is safe.
This package re-exports the entry points the chat front, the tick and the tests call.
"""

from gpubot.groups.actions import approve_group, cancel_group, retry_failed
from gpubot.groups.advance import GroupTickReport, advance_groups
from gpubot.groups.results import merge_shard_results, rank_runs
from gpubot.groups.shards import balance_shards
from gpubot.groups.submit import GroupSubmission, new_group_id, submit_shards, submit_sweep

__all__ = [
    "GroupSubmission",
    "GroupTickReport",
    "advance_groups",
    "approve_group",
    "balance_shards",
    "cancel_group",
    "merge_shard_results",
    "new_group_id",
    "rank_runs",
    "retry_failed",
    "submit_shards",
    "submit_sweep",
]
