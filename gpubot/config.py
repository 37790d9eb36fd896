"""gpubot.toml: job templates, budgets, idle policy, roles, ops channel and engine policy.

Pure: standard library only. :func:`load_config` reads the packaged ``builtin.toml`` and, if a
path is given, the operator's gpubot.toml merged over it:

* ``[templates.<name>]`` tables are merged key by key (nested tables too) over the built-in
  template of the same name, or add a new template. Setting ``workdir`` or ``repo`` in the
  user's table drops the built-in's code source (``workdir``/``repo``/``ref``).
* Every other section overrides the built-in defaults key by key.
* ``[inputs.<name>]`` declares a named input (``src``, ``description``, ``max_files``,
  ``max_total_gb``): the only data a user can point a sharded run at (``src=<name>``). A
  local ``src`` must be absolute and must neither be inside GPUBOT_HOME nor contain it.

Any unknown key or bad value raises :class:`gpubot.errors.ConfigError` naming the dotted key
and the line in the file it came from (:mod:`gpubot.tomlcheck`: the TOML reader with line
numbers and the typed value readers). A syntax error keeps tomllib's own line and column.

Money is ``Decimal`` USD. A budget of ``"none"`` means no limit.

Why one module over 500 lines: this is the schema of gpubot.toml, one validator per section
(templates with their params, resources, data and code source; inputs; idle; budgets; roles;
ops; engine) next to the dataclasses they build. The sections cross-check each other (a
template's data inputs against ``[inputs]``, its idle policy over ``[idle]``, local inputs
against GPUBOT_HOME), and reading the whole schema top to bottom is how an operator-facing
error message is checked. The generic part (parsing, key lines, typed readers) is already
split out into :mod:`gpubot.tomlcheck`.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

from gpubot.errors import ConfigError
from gpubot.models import InterruptibleMode, OfferRanking
from gpubot.templates import (
    BUILTIN_JOBS,
    BUILTIN_WORKDIR_PREFIX,
    DATA_DEST_RE,
    DEFAULT_EXCLUDE,
    DEFAULT_INPUT_MAX_FILES,
    DEFAULT_INPUT_MAX_TOTAL_GB,
    IMAGE_RE,
    INPUT_NAME_RE,
    PARAM_NAME_RE,
    RESERVED_VERBS,
    RESOURCE_KEYS,
    TEMPLATE_NAME_RE,
    DataInput,
    IdlePolicy,
    NamedInput,
    ParamSpec,
    ParamType,
    ParamValue,
    ResourceSpec,
    TargetMode,
    Template,
    local_input_conflict,
    parse_s3_url,
    render_command,
)
from gpubot.tomlcheck import Checker, KeyPath, TomlSource, deep_merge, type_name

BUILTIN_CONFIG_NAME = "builtin.toml"


class OnExceed(enum.StrEnum):
    """What happens when a launch would exceed a budget."""

    REFUSE = "refuse"
    APPROVAL = "approval"
    """An admin may approve it with a button."""


@dataclass(frozen=True, slots=True)
class BudgetPolicy:
    """``[budgets]``: monthly limits (None = no limit) and the per-job default cap."""

    team_monthly_usd: Decimal | None = Decimal(500)
    user_monthly_usd: Decimal | None = Decimal(100)
    """Default monthly limit for each user (``budget set user=...`` overrides it)."""
    channel_monthly_usd: Decimal | None = Decimal(200)
    """Default monthly limit for each channel."""
    job_default_usd: Decimal | None = Decimal(20)
    """Cap for a job launched without ``budget=``."""
    on_exceed: OnExceed = OnExceed.REFUSE


@dataclass(frozen=True, slots=True)
class RolesPolicy:
    """``[roles]``: who may do what. Empty allow-lists allow everyone / every channel."""

    admins: tuple[str, ...] = ()
    allowed_users: tuple[str, ...] = ()
    allowed_channels: tuple[str, ...] = ()
    approval_above_price_per_hour_usd: Decimal | None = None
    """Launches above this $/h need an admin's approval; None = never."""
    approval_above_estimate_usd: Decimal | None = None
    """Launches whose estimate exceeds this need an admin's approval; None = never."""
    per_user_max_live_jobs: int = 4
    per_channel_max_live_jobs: int = 8


@dataclass(frozen=True, slots=True)
class OpsPolicy:
    """``[ops]``: the channel for escalations (failed destroys, orphans); None = the job's."""

    channel: str | None = None


@dataclass(frozen=True, slots=True)
class EnginePolicy:
    """``[engine]``: retry, teardown and sweep policy of the job engine."""

    max_attempts: int = 3
    """Rentals tried per job (outbids and failed boots) before it fails."""
    destroy_deadline_minutes: int = 15
    """Destroy is retried until this deadline, then escalated in Slack."""
    blocked_host_ids: frozenset[str] = frozenset()
    sweep_every_ticks: int = 6
    orphan_grace_minutes: int = 10
    """A labelled instance with no record is destroyed once it is older than this."""
    max_concurrent_children: int = 4
    """Sweep runs / OCR shards running at once per parent job."""
    vast_min_interval_seconds: Mapping[str, float] = field(default_factory=dict)
    """Minimum seconds between vast.ai calls per endpoint, shared by every worker
    (``create``, ``destroy``, ``list``, ``search``, ``other``); missing endpoints keep the
    defaults of ``gpubot.providers.vastai.pace``. vast limits each endpoint by a minimum
    interval between calls and sends no Retry-After (vast docs, rate-limits-and-errors)."""


@dataclass(frozen=True, slots=True)
class BotConfig:
    """The whole validated configuration."""

    templates: Mapping[str, Template]
    budgets: BudgetPolicy = field(default_factory=BudgetPolicy)
    idle: IdlePolicy = field(default_factory=IdlePolicy)
    roles: RolesPolicy = field(default_factory=RolesPolicy)
    ops: OpsPolicy = field(default_factory=OpsPolicy)
    engine: EnginePolicy = field(default_factory=EnginePolicy)
    inputs: Mapping[str, NamedInput] = field(default_factory=dict)
    """``[inputs.<name>]``: the inputs users may name with ``src=<name>``."""
    source: Path | None = None
    """The gpubot.toml merged over the built-ins, or None for built-ins only."""

    def __hash__(self) -> int:
        return id(self)

    def template(self, name: str) -> Template | None:
        return self.templates.get(name)

    def idle_for(self, template_name: str | None) -> IdlePolicy:
        """The idle policy for a template's jobs: its own override, else ``[idle]``."""
        tpl = self.templates.get(template_name) if template_name else None
        return tpl.idle if tpl is not None and tpl.idle is not None else self.idle


# -- loading -------------------------------------------------------------------------------


def load_config(path: Path | None, *, home: Path | None = None) -> BotConfig:
    """Load the built-ins, merge ``path`` (a gpubot.toml) over them, validate everything.

    Args:
        path: the operator's file (``Settings.effective_config_path``), or None.
        home: GPUBOT_HOME, which no local input may be inside or contain; default: the
            ``GPUBOT_HOME`` environment variable, else ``~/.gpubot``.

    Raises:
        ConfigError: the file is missing/unreadable, not TOML, or a key/value is invalid.
            ``.key`` is the dotted key and ``.line`` its line in the file it came from.
    """
    builtin_text = resources.files("gpubot").joinpath(BUILTIN_CONFIG_NAME).read_text("utf-8")
    builtin = TomlSource(BUILTIN_CONFIG_NAME, builtin_text, base_dir=None)
    user: TomlSource | None = None
    if path is not None:
        try:
            text = Path(path).read_text("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read config file {path}: {e.__class__.__name__}") from e
        user = TomlSource(str(path), text, base_dir=Path(path).resolve().parent)
    return _build(builtin, user, home=home)


def load_config_text(
    text: str,
    *,
    name: str = "gpubot.toml",
    base_dir: Path | None = None,
    home: Path | None = None,
) -> BotConfig:
    """Like :func:`load_config` for TOML text (tests, ``gpubot config check`` of stdin)."""
    builtin_text = resources.files("gpubot").joinpath(BUILTIN_CONFIG_NAME).read_text("utf-8")
    return _build(
        TomlSource(BUILTIN_CONFIG_NAME, builtin_text, base_dir=None),
        TomlSource(name, text, base_dir=base_dir or Path.cwd()),
        home=home,
    )


def default_home() -> Path:
    """GPUBOT_HOME as the settings compute it: the environment variable, else ``~/.gpubot``."""
    return Path(os.environ.get("GPUBOT_HOME") or "~/.gpubot").expanduser()


_TOP_KEYS = ("templates", "budgets", "idle", "roles", "ops", "engine", "inputs")
_TEMPLATE_KEYS = (
    "description",
    "image",
    "disk_gb",
    "workdir",
    "repo",
    "ref",
    "exclude",
    "setup",
    "run",
    "params",
    "resources",
    "target_metric",
    "target_mode",
    "shardable",
    "idle",
    "data",
)
_DATA_KEYS = ("inputs",)
_INPUT_KEYS = ("src", "description", "max_files", "max_total_gb")
_DATA_INPUT_KEYS = ("src", "dest")
_PARAM_KEYS = ("type", "default", "min", "max", "choices", "help", "free_text", "max_length")
_RESOURCE_KEYS = (
    "gpu_names",
    "num_gpus",
    "min_gpu_ram_gb",
    "min_cuda",
    "min_compute_cap",
    "min_reliability",
    "max_price_per_hour_usd",
    "interruptible",
    "datacenter_only",
    "expected_hours",
    "checkpoints",
    "ranking",
    "boot_timeout_minutes",
)
_IDLE_KEYS = (
    "gpu_util_threshold_pct",
    "window_minutes",
    "grace_minutes",
    "unused_window_minutes",
    "stuck_window_minutes",
    "stuck_cadence_factor",
    "stuck_grace_fraction",
)
_BUDGET_KEYS = (
    "team_monthly_usd",
    "user_monthly_usd",
    "channel_monthly_usd",
    "job_default_usd",
    "on_exceed",
)
_ROLE_KEYS = (
    "admins",
    "allowed_users",
    "allowed_channels",
    "approval_above_price_per_hour_usd",
    "approval_above_estimate_usd",
    "per_user_max_live_jobs",
    "per_channel_max_live_jobs",
)
_OPS_KEYS = ("channel",)
_ENGINE_KEYS = (
    "max_attempts",
    "destroy_deadline_minutes",
    "blocked_host_ids",
    "sweep_every_ticks",
    "orphan_grace_minutes",
    "max_concurrent_children",
    "vast_min_interval_seconds",
)
_VAST_ENDPOINTS = ("create", "destroy", "list", "search", "other")
_REF_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/-]{0,199}$")
_REPO_RE = re.compile(r"^(?:https://|ssh://|git@)[A-Za-z0-9@._:/~+-]+$")
_SOURCE_KEYS = ("workdir", "repo", "ref")


def _build(builtin: TomlSource, user: TomlSource | None, *, home: Path | None = None) -> BotConfig:
    ctx = Checker(builtin, user)
    merged = dict(builtin.data)
    if user is not None:
        ctx.keys((), user.data, _TOP_KEYS)
        for section, value in user.data.items():
            if section == "templates":
                ctx.table(("templates",), value)
                templates = dict(merged.get("templates", {}))
                for name, tpl in value.items():
                    ctx.table(("templates", name), tpl)
                    base = dict(templates.get(name, {}))
                    if any(k in tpl for k in ("workdir", "repo")):
                        for k in _SOURCE_KEYS:
                            base.pop(k, None)
                    templates[name] = deep_merge(base, tpl)
                merged["templates"] = templates
            else:
                ctx.table((section,), value)
                merged[section] = deep_merge(merged.get(section, {}), value)

    templates_raw = ctx.table(("templates",), merged.get("templates", {}))
    templates = {
        name: _template(ctx, ("templates", name), name, tpl) for name, tpl in templates_raw.items()
    }
    idle = _idle(ctx, ("idle",), ctx.table(("idle",), merged.get("idle", {})), IdlePolicy())
    return BotConfig(
        templates=templates,
        budgets=_budgets(ctx, ctx.table(("budgets",), merged.get("budgets", {}))),
        idle=idle,
        roles=_roles(ctx, ctx.table(("roles",), merged.get("roles", {}))),
        ops=_ops(ctx, ctx.table(("ops",), merged.get("ops", {}))),
        engine=_engine(ctx, ctx.table(("engine",), merged.get("engine", {}))),
        inputs=_inputs(ctx, ctx.table(("inputs",), merged.get("inputs", {})),
                       home or default_home()),
        source=Path(user.name) if user is not None else None,
    )


def _template(ctx: Checker, path: KeyPath, name: str, raw: Any) -> Template:
    t = ctx.table(path, raw)
    ctx.keys(path, t, _TEMPLATE_KEYS)
    if not TEMPLATE_NAME_RE.match(name):
        ctx.fail(path, "template names are 1-32 of a-z, 0-9, '_' or '-', starting with a letter")
    if name in RESERVED_VERBS:
        ctx.fail(path, f"{name!r} is a built-in command and cannot be a template name")
    for required in ("image", "run"):
        if required not in t:
            ctx.fail(path + (required,), f"template {name!r} needs {required!r}")
    image = ctx.string(path + ("image",), t["image"], empty=False)
    if not IMAGE_RE.match(image) or len(image) > 255:
        ctx.fail(path + ("image",), f"not a Docker image reference: {image!r}")

    workdir = repo = ref = None
    if "workdir" in t and "repo" in t:
        ctx.fail(path + ("repo",), "set either workdir or repo, not both")
    if "workdir" in t:
        workdir = _workdir(ctx, path + ("workdir",), t["workdir"])
    elif "repo" in t:
        repo = ctx.string(path + ("repo",), t["repo"], empty=False)
        if not _REPO_RE.match(repo):
            ctx.fail(path + ("repo",), "must be an https://, ssh:// or git@ URL without spaces")
    else:
        ctx.fail(path + ("workdir",), f"template {name!r} needs a workdir or a repo")
    if "ref" in t:
        if repo is None:
            ctx.fail(path + ("ref",), "ref is only valid together with repo")
        ref = ctx.string(path + ("ref",), t["ref"], empty=False)
        if not _REF_RE.match(ref):
            ctx.fail(path + ("ref",), f"not a valid git ref: {ref!r}")

    params: dict[str, ParamSpec] = {}
    params_raw = ctx.table(path + ("params",), t.get("params", {}))
    for pname, praw in params_raw.items():
        params[pname] = _param(ctx, path + ("params", pname), pname, praw)

    tpl_kwargs: dict[str, Any] = {}
    if "disk_gb" in t:
        tpl_kwargs["disk_gb"] = ctx.integer(path + ("disk_gb",), t["disk_gb"], lo=5, hi=4000)
    if "exclude" in t:
        tpl_kwargs["exclude"] = ctx.str_list(path + ("exclude",), t["exclude"])
    else:
        tpl_kwargs["exclude"] = DEFAULT_EXCLUDE
    if "setup" in t:
        tpl_kwargs["setup"] = ctx.str_list(path + ("setup",), t["setup"])
    if "target_metric" in t:
        tpl_kwargs["target_metric"] = ctx.string(
            path + ("target_metric",), t["target_metric"], empty=False
        )
    if "target_mode" in t:
        tpl_kwargs["target_mode"] = ctx.enum(path + ("target_mode",), t["target_mode"], TargetMode)
    if "shardable" in t:
        tpl_kwargs["shardable"] = ctx.boolean(path + ("shardable",), t["shardable"])
    if "idle" in t:
        tpl_kwargs["idle"] = _idle(
            ctx, path + ("idle",), ctx.table(path + ("idle",), t["idle"]), IdlePolicy()
        )
    if "data" in t:
        tpl_kwargs["data"] = _data(ctx, path + ("data",), t["data"])
    resources_raw = ctx.table(path + ("resources",), t.get("resources", {}))
    template = Template(
        name=name,
        description=ctx.string(path + ("description",), t.get("description", "")),
        image=image,
        run=ctx.string(path + ("run",), t["run"], empty=False),
        workdir=workdir,
        repo=repo,
        ref=ref,
        params=params,
        resources=_resources(ctx, path + ("resources",), resources_raw),
        **tpl_kwargs,
    )
    allowed = template.placeholder_names()
    for key, cmd in [("run", template.run)] + [("setup", c) for c in template.setup]:
        try:
            render_command(cmd, allowed)
        except ValueError as e:
            ctx.fail(path + (key,), f"{e}; known: {', '.join(sorted(allowed))}")
    return template


def _workdir(ctx: Checker, path: KeyPath, value: Any) -> str:
    workdir = ctx.string(path, value, empty=False)
    if workdir.startswith(BUILTIN_WORKDIR_PREFIX):
        job = workdir[len(BUILTIN_WORKDIR_PREFIX) :]
        if job not in BUILTIN_JOBS:
            ctx.fail(path, f"unknown built-in job {job!r}; known: {', '.join(BUILTIN_JOBS)}")
        return workdir
    src = ctx.source_of(path)
    if src.base_dir is None:
        ctx.fail(path, "built-in templates may only use builtin: workdirs")
    p = Path(workdir).expanduser()
    return str(p if p.is_absolute() else (src.base_dir / p))


def _data(ctx: Checker, path: KeyPath, raw: Any) -> tuple[DataInput, ...]:
    """``[templates.<t>.data]``: ``inputs = [{src = "s3://b/p/" | "folder", dest = "rel"}]``.

    ``src`` is an ``s3://bucket/prefix/`` or a local folder (relative paths are resolved
    against the config file's directory, like ``workdir``); ``dest`` is a relative path under
    the job's workspace (``.`` for the workspace itself), unique among the inputs.
    """
    table = ctx.table(path, raw)
    ctx.keys(path, table, _DATA_KEYS)
    ipath = path + ("inputs",)
    items = table.get("inputs", [])
    if not isinstance(items, list):
        ctx.fail(
            ipath, f"must be a list of {{src = ..., dest = ...}} tables, not {type_name(items)}"
        )
    out: list[DataInput] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        name = f"{'.'.join(ipath)}[{index}]"
        if not isinstance(item, dict):
            ctx.fail(ipath, "must be a table {src = ..., dest = ...}", key=name)
        for key in item:
            if key not in _DATA_INPUT_KEYS:
                ctx.fail(
                    ipath,
                    f"unknown key {key!r}; known: {', '.join(_DATA_INPUT_KEYS)}",
                    key=f"{name}.{key}",
                )
        for key in _DATA_INPUT_KEYS:
            if key not in item:
                ctx.fail(ipath, f"an input needs {key!r}", key=f"{name}.{key}")
            value = item[key]
            if not isinstance(value, str) or not value.strip():
                ctx.fail(ipath, "must be a non-empty string", key=f"{name}.{key}")
            if any(ord(c) < 32 for c in value):
                ctx.fail(ipath, "must not contain control characters", key=f"{name}.{key}")
        src = item["src"].strip()
        if src.startswith("s3://"):
            try:
                parse_s3_url(src)
            except ValueError as e:
                ctx.fail(ipath, str(e), key=f"{name}.src")
        elif "://" in src:
            ctx.fail(ipath, "must be s3://bucket/prefix/ or a local folder", key=f"{name}.src")
        else:
            base = ctx.source_of(ipath).base_dir
            if base is None:
                ctx.fail(ipath, "built-in templates may only stage s3:// data", key=f"{name}.src")
            p = Path(src).expanduser()
            src = str(p if p.is_absolute() else (base / p))
        dest = item["dest"].strip().rstrip("/") or "."
        if not DATA_DEST_RE.match(dest):
            ctx.fail(
                ipath,
                f"must be a relative path under the workspace (no '..', no leading '/'): "
                f"{dest!r}",
                key=f"{name}.dest",
            )
        if dest in seen:
            ctx.fail(ipath, f"dest {dest!r} is already used by input {seen[dest]}", key=name)
        seen[dest] = index
        out.append(DataInput(src=src, dest=dest))
    return tuple(out)


def _inputs(ctx: Checker, raw: dict[str, Any], home: Path) -> dict[str, NamedInput]:
    """``[inputs.<name>]``: the named inputs users may pick with ``src=<name>``.

    ``src`` is ``s3://bucket/prefix/`` or an absolute local folder that is neither GPUBOT_HOME
    (``home``), inside it, nor above it (symlinks resolved). Names are 1-32 of a-z 0-9 _ -.
    """
    out: dict[str, NamedInput] = {}
    for name, value in raw.items():
        path: KeyPath = ("inputs", name)
        t = ctx.table(path, value)
        ctx.keys(path, t, _INPUT_KEYS)
        if not INPUT_NAME_RE.match(name):
            ctx.fail(path, "input names are 1-32 of a-z, 0-9, '_' or '-'")
        if "src" not in t:
            ctx.fail(path + ("src",), f"input {name!r} needs src (s3://bucket/prefix/ or a "
                     "folder)")
        src = ctx.string(path + ("src",), t["src"], empty=False).strip()
        if src.startswith("s3://"):
            try:
                bucket, prefix = parse_s3_url(src)
            except ValueError as e:
                ctx.fail(path + ("src",), str(e))
            src = f"s3://{bucket}/{prefix}"
        elif "://" in src:
            ctx.fail(path + ("src",), "must be s3://bucket/prefix/ or an absolute local folder")
        else:
            folder = Path(src)
            if not folder.is_absolute():
                ctx.fail(path + ("src",), f"a local input must be an absolute folder: {src!r}")
            if ".." in folder.parts:
                ctx.fail(path + ("src",), f"a local input may not contain '..': {src!r}")
            if local_input_conflict(folder, [home]) is not None:
                ctx.fail(
                    path + ("src",),
                    f"{src!r} is GPUBOT_HOME ({home}), inside it or above it: the bot's keys "
                    "and database live there and are never staged",
                )
            src = str(folder)
        kw: dict[str, Any] = {}
        if "max_files" in t:
            kw["max_files"] = ctx.integer(path + ("max_files",), t["max_files"], lo=1,
                                          hi=1_000_000)
        if "max_total_gb" in t:
            kw["max_total_gb"] = ctx.number(path + ("max_total_gb",), t["max_total_gb"],
                                            lo=0.001, hi=100_000)
        out[name] = NamedInput(
            name=name,
            src=src,
            description=ctx.string(path + ("description",), t.get("description", "")),
            max_files=kw.get("max_files", DEFAULT_INPUT_MAX_FILES),
            max_total_gb=float(kw.get("max_total_gb", DEFAULT_INPUT_MAX_TOTAL_GB)),
        )
    return out


def _param(ctx: Checker, path: KeyPath, name: str, raw: Any) -> ParamSpec:
    p = ctx.table(path, raw)
    ctx.keys(path, p, _PARAM_KEYS)
    if not PARAM_NAME_RE.match(name):
        ctx.fail(path, "parameter names are 1-32 of a-z, 0-9 or '_', starting with a letter")
    if name in RESOURCE_KEYS:
        ctx.fail(path, f"{name!r} is a resource key and cannot be a parameter name")
    if "type" not in p:
        ctx.fail(path + ("type",), "a parameter needs a type (float, int, str, bool or choice)")
    ptype: ParamType = ctx.enum(path + ("type",), p["type"], ParamType)
    numeric = ptype in (ParamType.FLOAT, ParamType.INT)
    for key in ("min", "max"):
        if key in p and not numeric:
            ctx.fail(path + (key,), f"{key} is only valid for int and float parameters")
    if "choices" in p and ptype is not ParamType.CHOICE:
        ctx.fail(path + ("choices",), "choices is only valid for choice parameters")
    for key in ("free_text", "max_length"):
        if key in p and ptype is not ParamType.STR:
            ctx.fail(path + (key,), f"{key} is only valid for str parameters")
    lo = hi = None
    if "min" in p:
        lo = (ctx.integer if ptype is ParamType.INT else ctx.number)(path + ("min",), p["min"])
    if "max" in p:
        hi = (ctx.integer if ptype is ParamType.INT else ctx.number)(path + ("max",), p["max"])
    if lo is not None and hi is not None and lo > hi:
        ctx.fail(path + ("max",), f"max ({hi:g}) is below min ({lo:g})")
    choices: tuple[str, ...] = ()
    if ptype is ParamType.CHOICE:
        if "choices" not in p:
            ctx.fail(path + ("choices",), "a choice parameter needs a list of choices")
        choices = ctx.str_list(path + ("choices",), p["choices"])
        if not choices:
            ctx.fail(path + ("choices",), "must list at least one choice")
        for c in choices:
            if not re.match(r"^[A-Za-z0-9._+-]{1,64}$", c):
                ctx.fail(path + ("choices",), f"choice {c!r} must be 1-64 of A-Z a-z 0-9 . _ + -")
    free_text = ctx.boolean(path + ("free_text",), p["free_text"]) if "free_text" in p else False
    max_length = 1000 if free_text else 256
    if "max_length" in p:
        max_length = ctx.integer(path + ("max_length",), p["max_length"], lo=1, hi=1000)
    default: ParamValue | None = None
    if "default" in p:
        dpath = path + ("default",)
        d = p["default"]
        match ptype:
            case ParamType.FLOAT:
                default = ctx.number(dpath, d, lo=lo, hi=hi)
            case ParamType.INT:
                ilo = None if lo is None else int(lo)
                ihi = None if hi is None else int(hi)
                default = ctx.integer(dpath, d, lo=ilo, hi=ihi)
            case ParamType.BOOL:
                default = ctx.boolean(dpath, d)
            case ParamType.CHOICE:
                default = ctx.string(dpath, d)
                if default not in choices:
                    ctx.fail(dpath, f"{default!r} is not one of {', '.join(choices)}")
            case ParamType.STR:
                default = ctx.string(dpath, d)
                if len(default) > max_length:
                    ctx.fail(dpath, f"longer than max_length {max_length}")
    return ParamSpec(
        name=name,
        type=ptype,
        default=default,
        min=lo,
        max=hi,
        choices=choices,
        help=ctx.string(path + ("help",), p.get("help", "")),
        free_text=free_text,
        max_length=max_length,
    )


def _resources(ctx: Checker, path: KeyPath, r: dict[str, Any]) -> ResourceSpec:
    ctx.keys(path, r, _RESOURCE_KEYS)
    kw: dict[str, Any] = {}
    if "gpu_names" in r:
        kw["gpu_names"] = ctx.str_list(path + ("gpu_names",), r["gpu_names"])
    if "num_gpus" in r:
        kw["num_gpus"] = ctx.integer(path + ("num_gpus",), r["num_gpus"], lo=1, hi=16)
    if "min_gpu_ram_gb" in r:
        kw["min_gpu_ram_gb"] = ctx.number(
            path + ("min_gpu_ram_gb",), r["min_gpu_ram_gb"], lo=0, hi=1024
        )
    if "min_cuda" in r:
        kw["min_cuda"] = ctx.number(path + ("min_cuda",), r["min_cuda"], lo=0, hi=99)
    if "min_compute_cap" in r:
        kw["min_compute_cap"] = ctx.integer(
            path + ("min_compute_cap",), r["min_compute_cap"], lo=0, hi=2000
        )
    if "min_reliability" in r:
        kw["min_reliability"] = ctx.number(
            path + ("min_reliability",), r["min_reliability"], lo=0, hi=1
        )
    if "max_price_per_hour_usd" in r:
        price = ctx.money(
            path + ("max_price_per_hour_usd",), r["max_price_per_hour_usd"], optional=True
        )
        if price is not None and price == 0:
            ctx.fail(path + ("max_price_per_hour_usd",), 'must be above 0 (or "none")')
        kw["max_price_per_hour_usd"] = price
    if "interruptible" in r:
        kw["interruptible"] = ctx.enum(
            path + ("interruptible",), r["interruptible"], InterruptibleMode
        )
    if "datacenter_only" in r:
        kw["datacenter_only"] = ctx.boolean(path + ("datacenter_only",), r["datacenter_only"])
    if "expected_hours" in r:
        kw["expected_hours"] = ctx.number(
            path + ("expected_hours",), r["expected_hours"], lo=0.01, hi=720
        )
    if "checkpoints" in r:
        kw["checkpoints"] = ctx.boolean(path + ("checkpoints",), r["checkpoints"])
    if "ranking" in r:
        kw["ranking"] = ctx.enum(path + ("ranking",), r["ranking"], OfferRanking)
    if "boot_timeout_minutes" in r:
        kw["boot_timeout_minutes"] = ctx.integer(
            path + ("boot_timeout_minutes",), r["boot_timeout_minutes"], lo=1, hi=240
        )
    return ResourceSpec(**kw)


def _idle(ctx: Checker, path: KeyPath, t: dict[str, Any], base: IdlePolicy) -> IdlePolicy:
    ctx.keys(path, t, _IDLE_KEYS)
    return IdlePolicy(
        gpu_util_threshold_pct=ctx.number(
            path + ("gpu_util_threshold_pct",),
            t.get("gpu_util_threshold_pct", base.gpu_util_threshold_pct),
            lo=0,
            hi=100,
        ),
        window_minutes=ctx.integer(
            path + ("window_minutes",), t.get("window_minutes", base.window_minutes), lo=1
        ),
        grace_minutes=ctx.integer(
            path + ("grace_minutes",), t.get("grace_minutes", base.grace_minutes), lo=0
        ),
        unused_window_minutes=ctx.integer(
            path + ("unused_window_minutes",),
            t.get("unused_window_minutes", base.unused_window_minutes),
            lo=1,
        ),
        stuck_window_minutes=ctx.integer(
            path + ("stuck_window_minutes",),
            t.get("stuck_window_minutes", base.stuck_window_minutes),
            lo=1,
        ),
        stuck_cadence_factor=ctx.number(
            path + ("stuck_cadence_factor",),
            t.get("stuck_cadence_factor", base.stuck_cadence_factor),
            lo=1,
            hi=1000,
        ),
        stuck_grace_fraction=ctx.number(
            path + ("stuck_grace_fraction",),
            t.get("stuck_grace_fraction", base.stuck_grace_fraction),
            lo=0,
            hi=10,
        ),
    )


def _budgets(ctx: Checker, t: dict[str, Any]) -> BudgetPolicy:
    path: KeyPath = ("budgets",)
    ctx.keys(path, t, _BUDGET_KEYS)
    base = BudgetPolicy()
    kw: dict[str, Any] = {}
    for key in _BUDGET_KEYS[:-1]:
        if key in t:
            kw[key] = ctx.money(path + (key,), t[key], optional=True)
        else:
            kw[key] = getattr(base, key)
    if "on_exceed" in t:
        kw["on_exceed"] = ctx.enum(path + ("on_exceed",), t["on_exceed"], OnExceed)
    return BudgetPolicy(**kw)


def _roles(ctx: Checker, t: dict[str, Any]) -> RolesPolicy:
    path: KeyPath = ("roles",)
    ctx.keys(path, t, _ROLE_KEYS)
    kw: dict[str, Any] = {}
    for key in ("admins", "allowed_users", "allowed_channels"):
        if key in t:
            kw[key] = ctx.str_list(path + (key,), t[key])
    for key in ("approval_above_price_per_hour_usd", "approval_above_estimate_usd"):
        if key in t:
            kw[key] = ctx.money(path + (key,), t[key], optional=True)
    for key in ("per_user_max_live_jobs", "per_channel_max_live_jobs"):
        if key in t:
            kw[key] = ctx.integer(path + (key,), t[key], lo=1, hi=1000)
    return RolesPolicy(**kw)


def _ops(ctx: Checker, t: dict[str, Any]) -> OpsPolicy:
    path: KeyPath = ("ops",)
    ctx.keys(path, t, _OPS_KEYS)
    channel = ctx.string(path + ("channel",), t.get("channel", "")).strip()
    return OpsPolicy(channel=channel or None)


def _engine(ctx: Checker, t: dict[str, Any]) -> EnginePolicy:
    path: KeyPath = ("engine",)
    ctx.keys(path, t, _ENGINE_KEYS)
    kw: dict[str, Any] = {}
    bounds = {
        "max_attempts": (1, 20),
        "destroy_deadline_minutes": (1, 1440),
        "sweep_every_ticks": (1, 10000),
        "orphan_grace_minutes": (0, 1440),
        "max_concurrent_children": (1, 256),
    }
    for key, (lo, hi) in bounds.items():
        if key in t:
            kw[key] = ctx.integer(path + (key,), t[key], lo=lo, hi=hi)
    if "blocked_host_ids" in t:
        raw = t["blocked_host_ids"]
        if not isinstance(raw, list):
            ctx.fail(path + ("blocked_host_ids",), "must be a list of host ids")
        ids: list[str] = []
        for v in raw:
            if isinstance(v, bool) or not isinstance(v, int | str):
                ctx.fail(path + ("blocked_host_ids",), f"host ids are numbers or strings: {v!r}")
            ids.append(str(v))
        kw["blocked_host_ids"] = frozenset(ids)
    if "vast_min_interval_seconds" in t:
        p = path + ("vast_min_interval_seconds",)
        table = ctx.table(p, t["vast_min_interval_seconds"])
        ctx.keys(p, table, _VAST_ENDPOINTS)
        kw["vast_min_interval_seconds"] = {
            k: ctx.number(p + (k,), v, lo=0, hi=600) for k, v in table.items()
        }
    return EnginePolicy(**kw)
