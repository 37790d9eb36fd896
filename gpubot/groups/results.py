"""Results of a group: the target metric of each run, the sweep's ranking, the merged
results of a sharded run, and the final reply.

Sweeps are ranked by the template's ``target_metric`` (``target_mode``), the best run being
the first succeeded one with a metric. Sharded runs are merged under
``groups/<gid>/results/`` with a ``manifest.jsonl`` of every input file. Object-store work
(:func:`finalize_results`, :func:`merge_shard_results`) runs with no session open.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import Any

from gpubot.db.engine import session_scope
from gpubot.db.tables import JobGroupRow, JobRow
from gpubot.deps import EngineDeps
from gpubot.errors import GpubotError
from gpubot.groups import children as kids
from gpubot.models import JobState
from gpubot.render import groups as render
from gpubot.templates import TargetMode, Template

METRICS_FILE = "metrics.json"
"""A run's result file the target metric is read from when its progress had none."""


def rank_runs(rows: list[dict[str, Any]], mode: TargetMode) -> list[dict[str, Any]]:
    """Rows (each with ``metric``: float|None and ``state``) sorted best first.

    Rows with a metric come first, ascending for ``min`` and descending for ``max``; rows
    without one keep their order at the end. Pure.
    """
    with_metric = [r for r in rows if r.get("metric") is not None]
    without = [r for r in rows if r.get("metric") is None]
    with_metric.sort(key=lambda r: float(r["metric"]), reverse=mode is TargetMode.MAX)
    return with_metric + without


def best_run(ranked: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first row of ``ranked`` that succeeded with a metric; None when there is none.
    Pure."""
    return next(
        (r for r in ranked if r["metric"] is not None and r["state"] == JobState.SUCCEEDED.value),
        None,
    )


def metric_of(job: JobRow, template: Template | None) -> float | None:
    """The latest value of the template's target metric for ``job`` (progress first, then
    the metrics recorded with its results); None when unknown or not a number."""
    if template is None or not template.target_metric:
        return None
    metrics = (job.progress or {}).get("metrics") or {}
    value = metrics.get(template.target_metric)
    if value is None:
        value = ((job.results or {}).get("metrics") or {}).get(template.target_metric)
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def shard_results_view(result: dict[str, Any]) -> render.ShardResults:
    """The renderable part of a :func:`merge_shard_results` result."""
    return render.ShardResults(
        location=result.get("location"),
        ok=result.get("ok"),
        total=result.get("total"),
        failed=list(result.get("failed") or []),
    )


def finalize_results(
    deps: EngineDeps, group_id: str, template: Template | None
) -> dict[str, Any]:
    """Results of a finished group (object-store reads/writes; no session open meanwhile).

    Sharded: :func:`merge_shard_results`. Sweep: ``{"ranking": [{job_id, state, metric}]
    best first, "best": job_id | None, "metric": name | None}``; a run whose progress had no
    metric is looked up in its ``metrics.json`` result. Raises GpubotError (storage) when
    merging fails: the caller retries on the next tick.
    """
    with session_scope(deps.sessions) as session:
        group = session.get(JobGroupRow, group_id)
        assert group is not None
        session.expunge(group)
        children = kids.of_group(session, group)
        for job in children:
            session.expunge(job)
    if group.kind == "shards":
        return merge_shard_results(deps, group, children)
    rows = []
    for job in children:
        metric = metric_of(job, template)
        if metric is None and template is not None and template.target_metric:
            metric = _metric_from_results(deps, job, template.target_metric)
        rows.append({"job_id": job.id, "state": job.state, "metric": metric})
    ranked = rank_runs(rows, template.target_mode if template else TargetMode.MIN)
    best = best_run(ranked)
    return {"ranking": ranked, "best": best["job_id"] if best else None,
            "metric": template.target_metric if template else None}


def _metric_from_results(deps: EngineDeps, job: JobRow, name: str) -> float | None:
    """``name`` from the job's ``metrics.json`` result; None when absent or unreadable."""
    if not any(f.get("name") == METRICS_FILE for f in (job.results or {}).get("files", [])):
        return None
    try:
        data = json.loads(deps.store.get_bytes(f"jobs/{job.id}/results/{METRICS_FILE}"))
        return float(data[name])
    except (GpubotError, ValueError, KeyError, TypeError):
        return None


def merge_shard_results(
    deps: EngineDeps, group: JobGroupRow, children: list[JobRow]
) -> dict[str, Any]:
    """Copy every shard's results under ``groups/<gid>/results/`` and write the manifest.

    ``manifest.jsonl`` has one line per input file (sorted): ``file, shard (1-based),
    job_id, pages, status`` (``ok``, ``error`` with ``error``, or ``missing`` when its shard
    produced no results). A file retried in a later shard takes that shard's entry.
    Idempotent (writes overwrite). Returns ``{"manifest", "location", "total", "ok",
    "failed": [files]}``.
    """
    store = deps.store
    spec = group.spec or {}
    by_id = {j.id: j for j in children}
    out_prefix = f"groups/{group.id}/results/"
    entries: dict[str, dict[str, Any]] = {}
    for number, shard in enumerate(spec.get("shards", []), start=1):
        job = by_id.get(str(shard.get("job_id")))
        if job is None:
            continue
        prefix = f"jobs/{job.id}/results/"
        reported: dict[str, dict[str, Any]] = {}
        if job.state == JobState.SUCCEEDED.value:
            for obj in store.list(prefix):
                rel = obj.key[len(prefix):]
                if rel in {"MANIFEST.jsonl", "manifest.jsonl"}:
                    continue
                store.put_bytes(out_prefix + rel, store.get_bytes(obj.key))
            try:
                body = store.get_bytes(prefix + "manifest.jsonl").decode()
            except GpubotError:
                body = ""
            for line in body.splitlines():
                if line.strip():
                    item = json.loads(line)
                    reported[str(item.get("file"))] = item
        for name in shard.get("files", []):
            item = reported.get(PurePosixPath(name).name)
            entry: dict[str, Any] = {"file": name, "shard": number, "job_id": job.id}
            if item is None:
                entry.update(pages=0, status="missing",
                             error=f"shard {job.id} {job.state}: {job.reason or 'no results'}"[
                                 :300])
            else:
                entry.update(pages=int(item.get("pages") or 0),
                             status=str(item.get("status") or "error"))
                if item.get("error"):
                    entry["error"] = str(item["error"])[:300]
            entries[name] = entry
    ordered = [entries[n] for n in sorted(entries)]
    body = "".join(json.dumps(e, sort_keys=True) + "\n" for e in ordered).encode()
    store.put_bytes(out_prefix + "manifest.jsonl", body)
    failed = [e["file"] for e in ordered if e["status"] != "ok"]
    return {
        "manifest": out_prefix + "manifest.jsonl",
        "location": store.url_for_display(out_prefix),
        "total": len(ordered),
        "ok": len(ordered) - len(failed),
        "failed": failed,
    }


def final_text(
    group: JobGroupRow,
    children: list[JobRow],
    results: dict[str, Any],
    template: Template | None,
) -> str:
    """The reply posted once when ``group`` ends (its state already final), from the result
    of :func:`finalize_results`; rendered by :func:`gpubot.render.groups.final_text`."""
    spec = group.spec or {}
    sweep = group.kind == "sweep"
    labels = dict(zip(spec.get("children", []), spec.get("labels", []), strict=False))
    ranking = [
        render.ChildRow(
            job_id=r["job_id"], label=labels.get(r["job_id"], ""), state=r["state"],
            metric=r["metric"],
        )
        for r in (results.get("ranking", []) if sweep else [])
    ]
    return render.final_text(
        render.GroupFinal(
            group_id=group.id,
            kind=group.kind,
            state=group.state,
            children=[(j.id, j.state) for j in children],
            ranking=ranking,
            metric_name=results.get("metric") if sweep else None,
            target_mode=template.target_mode.value if template else TargetMode.MIN.value,
            best_job_id=results.get("best") if sweep else None,
            results=None if sweep else shard_results_view(results),
            requester=group.requester or None,
        )
    )
