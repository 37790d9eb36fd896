"""Job templates: what a launch verb runs, with typed parameters and resource defaults.

Pure: standard library only. Templates are built by :mod:`gpubot.config` from gpubot.toml and
the packaged ``builtin.toml``; everything here is a frozen value.

The run command and setup commands are written by the operator with ``{PLACEHOLDER}`` fields
(the job contract, fixed for users' scripts: ``GPUBOT_JOB_ID``, ``GPUBOT_WORKSPACE``, ...,
``GPUBOT_PARAM_<NAME>``). :func:`render_command` turns each field into a quoted shell
reference ``"${NAME}"``; user values are never inlined: they reach the job as exported
environment variables (:func:`param_env`).
"""

from __future__ import annotations

import enum
import re
import string
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import resources
from pathlib import Path

from gpubot.models import InterruptibleMode, OfferRanking

CONTRACT_VARS: tuple[str, ...] = (
    "GPUBOT_JOB_ID",
    "GPUBOT_WORKSPACE",
    "GPUBOT_CHECKPOINT_DIR",
    "GPUBOT_RESULTS_DIR",
    "GPUBOT_PROGRESS_FILE",
    "GPUBOT_RESUME_FROM",
)
"""The job contract's variables (fixed: users' scripts rely on them), usable as placeholders in
every template."""

PARAM_ENV_PREFIX = "GPUBOT_PARAM_"

DEFAULT_EXCLUDE: tuple[str, ...] = (
    ".venv",
    "__pycache__",
    "*.pyc",
    ".git",
    "results",
    "*.tar.gz",
    "*.tgz",
    "*.zip",
    "*.pt",
    "*.pth",
    "*.safetensors",
    "*.bin",
    "*.ckpt",
)
"""What is never packed from a workdir (the usual rsync excludes: envs, caches, VCS,
results, archives and model weights)."""

BUILTIN_WORKDIR_PREFIX = "builtin:"
BUILTIN_JOBS: tuple[str, ...] = ("train", "ocr")
"""Example jobs packaged at ``gpubot/jobs/<name>``; a workdir ``builtin:<name>`` refers to one."""

PARAM_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
TEMPLATE_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")

IMAGE_RE = re.compile(
    r"^(?:[a-z0-9][a-z0-9.-]*(?::[0-9]{1,5})?/)?"  # optional registry host[:port]/
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)
"""A Docker image reference (registry/name:tag@digest), as accepted by ``docker pull``."""

RESOURCE_KEYS: tuple[str, ...] = (
    "gpu",
    "gpus",
    "gpu_ram",
    "max_price",
    "budget",
    "interruptible",
    "disk",
    "image",
    "hours",
)
"""Keys valid on every launch (a fixed contract); no template parameter may use these names."""

RESERVED_VERBS: tuple[str, ...] = (
    "sweep",
    "rent",
    "offers",
    "status",
    "jobs",
    "logs",
    "cancel",
    "keep",
    "budget",
    "cost",
    "audit",
    "help",
)
"""Built-in verbs; no template may take one of these names."""


class ParamType(enum.StrEnum):
    """The type of a template parameter."""

    FLOAT = "float"
    INT = "int"
    STR = "str"
    BOOL = "bool"
    CHOICE = "choice"


ParamValue = float | int | str | bool
"""A typed parameter value after parsing."""


@dataclass(frozen=True, slots=True)
class ParamSpec:
    """One typed template parameter (``[templates.<t>.params.<name>]``)."""

    name: str
    type: ParamType
    default: ParamValue | None = None
    """None means the user must give it."""
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()
    """The allowed values of a ``choice`` parameter."""
    help: str = ""
    free_text: bool = False
    """Only for ``str``: allows shell metacharacters (the value still only travels as env)."""
    max_length: int = 256
    """Only for ``str``: the longest value accepted."""

    @property
    def env_name(self) -> str:
        """``GPUBOT_PARAM_<NAME>``: the variable the job reads this parameter from."""
        return PARAM_ENV_PREFIX + self.name.upper()

    def describe(self) -> str:
        """A short human description: ``lr float (1e-07..1, default 2e-05)``."""
        bits: list[str] = []
        if self.type is ParamType.CHOICE:
            bits.append("|".join(self.choices))
        if self.min is not None or self.max is not None:
            lo = "" if self.min is None else _fmt_num(self.min)
            hi = "" if self.max is None else _fmt_num(self.max)
            bits.append(f"{lo}..{hi}")
        if self.default is None:
            bits.append("required")
        else:
            bits.append(f"default {format_param(self.default)}")
        return f"{self.name} {self.type.value} ({', '.join(bits)})"


@dataclass(frozen=True, slots=True)
class ResourceSpec:
    """A template's machine requirements and rental policy (``[templates.<t>.resources]``)."""

    gpu_names: tuple[str, ...] = ()
    """Exact vast.ai GPU names; empty means any."""
    num_gpus: int = 1
    min_gpu_ram_gb: float = 0.0
    min_cuda: float = 0.0
    min_compute_cap: int = 0
    """Compute capability x100 (860 = 8.6)."""
    min_reliability: float = 0.95
    max_price_per_hour_usd: Decimal | None = None
    interruptible: InterruptibleMode = InterruptibleMode.AUTO
    datacenter_only: bool = False
    expected_hours: float = 1.0
    checkpoints: bool = False
    """The job writes checkpoints and can resume from GPUBOT_RESUME_FROM."""
    ranking: OfferRanking = OfferRanking.PRICE
    boot_timeout_minutes: int | None = None
    """Minutes a rental may take to be running with SSH before it is given up (large image
    pulls take minutes on real hosts); None: the engine's default, lifecycle.BOOT_DEADLINE."""


@dataclass(frozen=True, slots=True)
class IdlePolicy:
    """When an instance counts as idle or stuck (``[idle]``, or a template's ``idle`` table)."""

    gpu_util_threshold_pct: float = 5.0
    """GPU utilisation at or below this counts as idle."""
    window_minutes: int = 15
    """Idle for this long -> warning with a "Keep alive" button."""
    grace_minutes: int = 10
    """After the warning, destroyed unless kept."""
    unused_window_minutes: int = 5
    """The window instead of ``window_minutes`` (when shorter) for an interactive rental whose
    GPU has not had one busy sample since it became ready: nobody has used it yet."""
    stuck_window_minutes: int = 5
    """A running job whose process is alive, whose GPU samples are all idle and whose progress
    has not advanced for this long (at least; see ``stuck_cadence_factor``) is stuck."""
    stuck_cadence_factor: float = 5.0
    """The stuck window grows to this many times the job's own observed seconds per progress
    step when that is longer than ``stuck_window_minutes`` (a job that reports every 10 min
    is stuck after 50 min of silence with an idle GPU, not after 5)."""
    stuck_grace_fraction: float = 0.2
    """Keep-alive chance after a stuck warning, as a fraction of the job's stuck window (at
    least one minute): 1 min for the 5 min window."""


S3_SCHEME = "s3://"
_SEGMENT = r"[A-Za-z0-9_][A-Za-z0-9._-]*"
DATA_DEST_RE = re.compile(rf"^(?:\.|{_SEGMENT}(?:/{_SEGMENT})*)$")
"""A staging destination: ``.`` (the workspace itself) or a relative path of safe segments."""
S3_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
INTERNAL_PARAM_PREFIX = "_"
"""Job parameters starting with ``_`` are the bot's own bookkeeping (e.g. ``_inputs``, the
per-child staging list of a sharded run): never exported to the job, never typed by users."""


@dataclass(frozen=True, slots=True)
class DataInput:
    """One input to stage under the job's workspace before setup (``[templates.<t>.data]``).

    ``src`` is ``s3://bucket/prefix/`` (listed with the bot's own credentials; the instance
    only gets presigned URLs) or an absolute local folder on the bot's machine (packed and
    uploaded through the bot's object store). ``dest`` is relative to ``GPUBOT_WORKSPACE``.
    """

    src: str
    dest: str

    @property
    def is_s3(self) -> bool:
        return self.src.startswith(S3_SCHEME)

    def s3_location(self) -> tuple[str, str]:
        """``(bucket, prefix)`` of an ``s3://`` source; the prefix ends with ``/`` (or is empty).

        Raises:
            ValueError: not an ``s3://bucket/...`` source.
        """
        return parse_s3_url(self.src)


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix/")`` (folder semantics).

    Raises:
        ValueError: not ``s3://``, a bad bucket name, or a ``..`` segment in the prefix.
    """
    if not url.startswith(S3_SCHEME):
        raise ValueError(f"not an s3:// URL: {url!r}")
    bucket, _, prefix = url[len(S3_SCHEME) :].partition("/")
    if not S3_BUCKET_RE.match(bucket):
        raise ValueError(f"not a valid S3 bucket name: {bucket!r}")
    parts = [p for p in prefix.split("/") if p]
    if any(p in {".", ".."} for p in parts):
        raise ValueError("an s3:// prefix may not contain '.' or '..' segments")
    return bucket, ("/".join(parts) + "/") if parts else ""


INPUT_NAME_RE = re.compile(r"^[a-z0-9_-]{1,32}$")
"""The name of an operator-declared input (``[inputs.<name>]``): what a user types as ``src=``."""
DEFAULT_INPUT_MAX_FILES = 10_000
DEFAULT_INPUT_MAX_TOTAL_GB = 50.0


@dataclass(frozen=True, slots=True)
class NamedInput:
    """An input the operator declared in ``[inputs.<name>]``; users refer to it by ``name``.

    ``src`` is ``s3://bucket/prefix/`` (the operator's allow-list of readable prefixes) or an
    absolute local folder on the bot's machine (never GPUBOT_HOME, inside it or above it).
    A listing stops with an error as soon as it sees more than ``max_files`` files or more
    than ``max_total_gb`` GB in total.
    """

    name: str
    src: str
    description: str = ""
    max_files: int = DEFAULT_INPUT_MAX_FILES
    max_total_gb: float = DEFAULT_INPUT_MAX_TOTAL_GB

    @property
    def is_s3(self) -> bool:
        return self.src.startswith(S3_SCHEME)

    @property
    def max_total_bytes(self) -> int:
        return int(self.max_total_gb * 1024**3)


def local_input_conflict(folder: Path, protected: list[Path]) -> Path | None:
    """The first ``protected`` path that ``folder`` equals, lies inside, or contains.

    Both sides are resolved (symlinks followed) first. Returns None when there is none.
    Reads the file system only to resolve the paths.
    """
    real = folder.expanduser().resolve()
    for item in protected:
        guard = item.expanduser().resolve()
        if real == guard or real.is_relative_to(guard) or guard.is_relative_to(real):
            return item
    return None


class TargetMode(enum.StrEnum):
    """Whether the target metric should be minimised or maximised (sweep winner, charts)."""

    MIN = "min"
    MAX = "max"


@dataclass(frozen=True, slots=True)
class Template:
    """A launchable job. Either ``workdir`` (a folder packed and sent) or ``repo`` (+ ``ref``)."""

    name: str
    description: str
    image: str
    run: str
    """Shell command with ``{PLACEHOLDER}`` fields; see :func:`render_command`."""
    disk_gb: int = 30
    workdir: str | None = None
    """``builtin:<job>``, or an absolute local path (relative paths are resolved at load)."""
    repo: str | None = None
    ref: str | None = None
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    setup: tuple[str, ...] = ()
    params: dict[str, ParamSpec] = field(default_factory=dict)
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    target_metric: str | None = None
    target_mode: TargetMode = TargetMode.MIN
    shardable: bool = False
    idle: IdlePolicy | None = None
    """Overrides the global ``[idle]`` policy for this template's jobs when set."""
    data: tuple[DataInput, ...] = ()
    """Inputs staged under the workspace before setup (see :mod:`gpubot.engine.staging`)."""

    def __hash__(self) -> int:  # params is a dict; templates are identified by name
        return hash(self.name)

    def resolve_workdir(self) -> Path | None:
        """The local folder to pack, or None for a ``repo`` template.

        ``builtin:<job>`` resolves to the packaged ``gpubot/jobs/<job>`` folder.
        """
        if self.workdir is None:
            return None
        if self.workdir.startswith(BUILTIN_WORKDIR_PREFIX):
            job = self.workdir[len(BUILTIN_WORKDIR_PREFIX) :]
            return Path(str(resources.files("gpubot").joinpath("jobs", job)))
        return Path(self.workdir)

    def default_params(self) -> dict[str, ParamValue]:
        """Every parameter that has a default, by name."""
        return {n: p.default for n, p in self.params.items() if p.default is not None}

    def rendered_run(self) -> str:
        """The run command with placeholders turned into quoted env references."""
        return render_command(self.run, self.placeholder_names())

    def rendered_setup(self) -> tuple[str, ...]:
        """The setup commands with placeholders turned into quoted env references."""
        names = self.placeholder_names()
        return tuple(render_command(c, names) for c in self.setup)

    def placeholder_names(self) -> frozenset[str]:
        """Every placeholder this template may use: the contract's and its parameters'."""
        return frozenset(CONTRACT_VARS) | {p.env_name for p in self.params.values()}


def placeholders_in(command: str) -> list[str]:
    """The ``{NAME}`` fields of a command, in order. ``{{`` and ``}}`` are literal braces.

    Raises:
        ValueError: unbalanced braces, or a field with a conversion/format spec.
    """
    names: list[str] = []
    for _literal, name, spec, conv in string.Formatter().parse(command):
        if name is None:
            continue
        if spec or conv:
            raise ValueError(f"placeholder {{{name}}} may not have a format spec or conversion")
        names.append(name)
    return names


def render_command(command: str, allowed: frozenset[str] | set[str]) -> str:
    """Replace every ``{NAME}`` with ``"${NAME}"`` (a quoted reference to an exported variable).

    The output contains no user value, only references; ``{{``/``}}`` become literal braces.

    Raises:
        ValueError: a placeholder is not in ``allowed`` or the braces are malformed.
    """
    out: list[str] = []
    for literal, name, spec, conv in string.Formatter().parse(command):
        out.append(literal)
        if name is None:
            continue
        if spec or conv:
            raise ValueError(f"placeholder {{{name}}} may not have a format spec or conversion")
        if name not in allowed:
            raise ValueError(f"unknown placeholder {{{name}}}")
        out.append(f'"${{{name}}}"')
    return "".join(out)


def format_param(value: ParamValue) -> str:
    """The string a job sees for a parameter value (bools as ``true``/``false``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def param_env(template: Template, params: dict[str, ParamValue]) -> dict[str, str]:
    """``GPUBOT_PARAM_<NAME>`` -> value for every parameter: defaults overlaid with ``params``.

    Parameters without a default and not given are left out. Keys starting with ``_``
    (:data:`INTERNAL_PARAM_PREFIX`, the bot's bookkeeping) are never exported. Other keys of
    ``params`` that the template does not declare raise ``KeyError`` (the grammar rejects
    them earlier).
    """
    merged = template.default_params()
    for name, value in params.items():
        if name.startswith(INTERNAL_PARAM_PREFIX):
            continue
        if name not in template.params:
            raise KeyError(name)
        merged[name] = value
    return {template.params[n].env_name: format_param(v) for n, v in merged.items()}


def _fmt_num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"
