"""How a sharded run's input is split: files balanced by bytes, the parameters of one shard
job, and the declared input a group (or its retry) reads.

The input is always the NAME of an input the operator declared in ``[inputs.<name>]``; each
shard job's ``params["_inputs"]`` lists its own files of that input, staged under
:data:`SHARD_DEST` of its workspace (see :mod:`gpubot.engine.staging`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gpubot.deps import EngineDeps
from gpubot.engine import staging
from gpubot.errors import CommandError
from gpubot.templates import NamedInput, Template

SHARD_DEST = "input"
"""Where a shard's files are staged, relative to the workspace (the ocr job's default)."""
INLINE_FILES_MAX = 2000
"""A shard's file list is stored in the child's params (``_inputs``); more is refused."""


def balance_shards(files: list[tuple[str, int]], n: int) -> list[list[str]]:
    """Split ``(name, size_bytes)`` into ``n`` lists with balanced byte totals. Pure.

    Greedy largest-first: files sorted by size (descending, then name) each go to the shard
    with the smallest total so far (lowest index on ties). Always returns ``n`` lists (some
    empty when there are fewer files than shards), each sorted by name. Every file appears in
    exactly one list.

    Raises:
        ValueError: ``n`` < 1, or a name appears twice.
    """
    if n < 1:
        raise ValueError("the number of shards must be at least 1")
    names = [name for name, _ in files]
    if len(set(names)) != len(names):
        raise ValueError("file names must be unique")
    totals = [0] * n
    shards: list[list[str]] = [[] for _ in range(n)]
    for name, size in sorted(files, key=lambda f: (-f[1], f[0])):
        target = min(range(n), key=lambda i: (totals[i], i))
        shards[target].append(name)
        totals[target] += size
    return [sorted(s) for s in shards]


def shard_params(
    template: Template, base: Mapping[str, Any], input_name: str, files: list[str]
) -> dict[str, Any]:
    """The params of one shard job: ``base``, plus ``src=input shards=1`` when the template
    has those parameters, plus ``_inputs`` naming ``files`` of the declared input. Pure."""
    params: dict[str, Any] = dict(base)
    if "src" in template.params:
        params["src"] = SHARD_DEST
    if "shards" in template.params:
        params["shards"] = 1
    params[staging.INPUTS_PARAM] = [{"input": input_name, "dest": SHARD_DEST, "files": files}]
    return params


def group_input(deps: EngineDeps, spec: dict[str, Any]) -> NamedInput:
    """The declared input of a sharded group's spec (``input``, or a legacy ``src`` equal to
    a declared input's source), checked for use as :func:`staging.resolve_input` does.

    Raises:
        CommandError: the input is not (or no longer) declared, or may not be used.
    """
    name = spec.get("input")
    if name is None and isinstance(spec.get("src"), str):
        name = next(
            (i.name for i in deps.config.inputs.values() if i.src == spec["src"]), None
        )
    if name is None:
        raise CommandError(
            "this run's input is no longer declared in [inputs]; ask an operator to declare "
            "it again"
        )
    return staging.resolve_input(deps, name)
