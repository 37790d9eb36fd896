"""The command grammar: ``[/gpu] verb [positional ...] key=value ...`` -> a typed Command.

Pure: standard library only. :func:`parse_command` either returns a fully validated command
or raises :class:`gpubot.errors.CommandSyntaxError` whose message names the bad token and whose
``usage`` is the usage text of the verb. Nothing else escapes (a property test holds it to that).

Rules:

* At most :data:`MAX_INPUT_CHARS` characters; no line breaks, control or invisible characters.
* Tokens are separated by spaces; ``"a b"`` and ``'a b'`` quote (no escapes inside quotes).
  Slack's typographic quotes are treated as plain quotes.
* Keys are plain ASCII (``[a-z][a-z0-9_]*``, case-insensitive); a lookalike such as a Cyrillic
  ``а`` is named in the error. A key may appear once.
* Values never contain shell metacharacters (``; | & < > ` $`` and line breaks) except a
  leading ``$`` on amounts, and the values of ``free_text`` string parameters. Either way
  values are data: they reach a job only as environment variables.
* Comma lists: ``gpu=`` everywhere, parameters only in ``sweep``.

Why one module over 500 lines: it is one recursive-descent parser whose parts share a single
error path (``_Parser.fail`` builds the usage-carrying ``CommandSyntaxError``) and a single
set of value readers (money, GB, hours, GPU names, job ids) that every verb uses. Splitting
lexing, values and verbs apart would move those private helpers into a public API for no
second user; the property test that nothing but ``CommandSyntaxError`` escapes covers the
module as a whole. The command types and usage texts already live in ``types.py`` and
``usage.py``.
"""

from __future__ import annotations

import difflib
import math
import re
import unicodedata
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import NoReturn, TypeVar

from gpubot.commands.types import (
    AuditCommand,
    BudgetAction,
    BudgetCommand,
    BudgetScope,
    CancelCommand,
    Command,
    CostCommand,
    CostGroup,
    HelpCommand,
    JobsCommand,
    KeepCommand,
    LaunchCommand,
    LogsCommand,
    OffersCommand,
    Period,
    RentCommand,
    ResourceOverrides,
    StatusCommand,
    SweepCommand,
)
from gpubot.commands.usage import usage
from gpubot.config import BotConfig
from gpubot.errors import CommandSyntaxError
from gpubot.models import InterruptibleMode
from gpubot.templates import (
    IMAGE_RE,
    RESERVED_VERBS,
    RESOURCE_KEYS,
    ParamSpec,
    ParamType,
    ParamValue,
    Template,
)

MAX_INPUT_CHARS = 2000
MAX_SWEEP_RUNS = 32
"""A sweep launches one rental per run; more than this is almost surely a typo."""
MAX_HOURS = 168.0
MAX_KEEP_HOURS = 24.0
MAX_LOG_LINES = 1000
MAX_AUDIT_LIMIT = 200
MAX_OFFERS_LIMIT = 50

JOB_ID_RE = re.compile(r"^[jg]-[0-9a-z]{8}$")
"""A job id (``j-…``) or a job group id (``g-…``: a sweep or sharded run)."""
"""Job ids: ``j-`` and 8 lowercase base32/hex characters (e.g. ``j-3f9a1c2e``)."""

SHELL_METACHARACTERS = frozenset(";|&<>`$\n\r")

_KEY_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_VERB_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_FLOAT_RE = re.compile(r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?$")
_INT_RE = re.compile(r"^[+-]?[0-9]{1,18}$")
_MONEY_RE = re.compile(r"^\$?([0-9]{1,7}(?:\.[0-9]{1,6})?|\.[0-9]{1,6})(?:/h|/hr)?$", re.I)
_GB_RE = re.compile(r"^([0-9]{1,7}(?:\.[0-9]{1,3})?)\s*(gb|g|gib|tb|t)?$", re.I)
_HOURS_RE = re.compile(
    r"^(?:(?P<h>[0-9]{1,4}(?:\.[0-9]{1,3})?)\s*(?:h|hr|hrs|hour|hours))?\s*"
    r"(?:(?P<m>[0-9]{1,5})\s*(?:m|min|mins|minutes))?$",
    re.I,
)
_BARE_HOURS_RE = re.compile(r"^[0-9]{1,4}(?:\.[0-9]{1,3})?$")
_SLACK_USER_RE = re.compile(
    r"^(?:<@([UW][A-Z0-9]{2,20})(?:\|[^<>]{0,80})?>|@?([UW][A-Z0-9]{2,20}))$"
)
_SLACK_CHANNEL_RE = re.compile(
    r"^(?:<#([CGD][A-Z0-9]{2,20})(?:\|[^<>]{0,80})?>|#?([CGD][A-Z0-9]{2,20}))$"
)

_QUOTE_MAP = str.maketrans(
    {"\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2018": "'", "\u2019": "'", "\u201a": "'"}
)

# normalized name (lowercase, no spaces/_/-, without "rtx"/"geforce"/"tesla") -> vast names
_GPU_ALIASES: dict[str, tuple[str, ...]] = {
    "3060": ("RTX 3060",),
    "3070": ("RTX 3070",),
    "3080": ("RTX 3080",),
    "3080ti": ("RTX 3080 Ti",),
    "3090": ("RTX 3090",),
    "3090ti": ("RTX 3090 Ti",),
    "4060ti": ("RTX 4060 Ti",),
    "4070": ("RTX 4070",),
    "4070ti": ("RTX 4070 Ti",),
    "4080": ("RTX 4080",),
    "4090": ("RTX 4090",),
    "5090": ("RTX 5090",),
    "a100": ("A100 PCIE", "A100 SXM4"),
    "a100pcie": ("A100 PCIE",),
    "a100sxm4": ("A100 SXM4",),
    "a100sxm": ("A100 SXM4",),
    "a100x": ("A100X",),
    "h100": ("H100 SXM", "H100 PCIE", "H100 NVL"),
    "h100sxm": ("H100 SXM",),
    "h100pcie": ("H100 PCIE",),
    "h100nvl": ("H100 NVL",),
    "h200": ("H200",),
    "l40s": ("L40S",),
    "l40": ("L40",),
    "l4": ("L4",),
    "a40": ("A40",),
    "a10": ("A10",),
    "a4000": ("RTX A4000",),
    "a5000": ("RTX A5000",),
    "a6000": ("RTX A6000",),
    "6000ada": ("RTX 6000Ada",),
    "v100": ("Tesla V100",),
    "t4": ("Tesla T4",),
}


def canonical_gpu_names(text: str) -> tuple[str, ...]:
    """Vast.ai GPU names for one user spelling (``4090``, ``rtx4090``, ``"RTX 4090"``, ``a100``).

    Raises:
        ValueError: the name is not known.
    """
    key = re.sub(r"[\s_-]+", "", text.lower())
    for prefix in ("nvidia", "geforce", "tesla", "rtx"):
        key = key.removeprefix(prefix)
    if key in _GPU_ALIASES:
        return _GPU_ALIASES[key]
    raise ValueError(text)


def known_gpu_spellings() -> list[str]:
    return sorted(_GPU_ALIASES)


# -- errors --------------------------------------------------------------------------------


def _short(token: str, limit: int = 40) -> str:
    return token if len(token) <= limit else token[: limit - 1] + "…"


class _Parser:
    def __init__(self, config: BotConfig, verb: str | None) -> None:
        self.config = config
        self.verb = verb

    def fail(self, message: str, token: str | None = None) -> NoReturn:
        raise CommandSyntaxError(
            message,
            token=None if token is None else _short(token),
            usage=usage(self.verb, self.config),
        )


# -- lexing --------------------------------------------------------------------------------


def _char_name(ch: str) -> str:
    return f"U+{ord(ch):04X} {unicodedata.name(ch, 'unnamed character')}"


def _check_characters(p: _Parser, text: str) -> str:
    out: list[str] = []
    for ch in text:
        if ch in "\n\r":
            p.fail("line breaks are not allowed: put the whole command on one line")
        if ch == "\t":
            out.append(" ")
            continue
        category = unicodedata.category(ch)
        if category == "Zs":
            out.append(" ")
            continue
        if category in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            p.fail(f"control or invisible character {_char_name(ch)} is not allowed")
        out.append(ch)
    return "".join(out)


def _split_tokens(p: _Parser, text: str) -> list[str]:
    """Split on spaces outside quotes; quotes stay in the tokens (removed by _unquote)."""
    tokens: list[str] = []
    cur: list[str] = []
    quote: str | None = None
    start = 0
    for i, ch in enumerate(text):
        if quote is not None:
            cur.append(ch)
            if ch == quote:
                quote = None
            continue
        if ch in "\"'":
            if not cur:
                start = i
            quote = ch
            cur.append(ch)
        elif ch == " ":
            if cur:
                tokens.append("".join(cur))
                cur = []
        else:
            if not cur:
                start = i
            cur.append(ch)
    if quote is not None:
        p.fail(f"unclosed {quote} quote in {text[start:]!r}", text[start:])
    if cur:
        tokens.append("".join(cur))
    return tokens


def _unquote(token: str) -> str:
    out: list[str] = []
    quote: str | None = None
    for ch in token:
        if quote is not None:
            if ch == quote:
                quote = None
            else:
                out.append(ch)
        elif ch in "\"'":
            quote = ch
        else:
            out.append(ch)
    return "".join(out)


def _split_kv(p: _Parser, token: str) -> tuple[str, str] | None:
    """``key=value`` -> (key, unquoted value); None for a positional token."""
    eq = token.find("=")
    first_quote = min((i for i in (token.find('"'), token.find("'")) if i >= 0), default=-1)
    if eq < 0 or (0 <= first_quote < eq):
        return None
    raw_key, raw_value = token[:eq], token[eq + 1 :]
    if not raw_key:
        p.fail(f"{token!r} has a value but no key", token)
    non_ascii = [ch for ch in raw_key if not ch.isascii()]
    if non_ascii:
        p.fail(
            f"key {raw_key!r} contains the non-ASCII character {_char_name(non_ascii[0])}; "
            "type keys in plain ASCII",
            token,
        )
    key = raw_key.lower()
    if not _KEY_RE.match(key):
        p.fail(f"{raw_key!r} is not a valid key (letters, digits and _)", token)
    value = _unquote(raw_value)
    if not value.strip():
        p.fail(f"{key}= needs a value", token)
    return key, value.strip()


def _check_safe(p: _Parser, key: str, value: str, *, allow_dollar: bool = False) -> None:
    for ch in value:
        if ch in SHELL_METACHARACTERS and not (allow_dollar and ch == "$"):
            shown = {"\n": "a line break", "\r": "a line break"}.get(ch, repr(ch))
            p.fail(
                f"the value of {key}= contains {shown}; shell metacharacters "
                "(; | & < > ` $) are not allowed",
                f"{key}={value}",
            )


# -- values --------------------------------------------------------------------------------


def _parse_float(p: _Parser, key: str, value: str) -> float:
    if not _FLOAT_RE.match(value):
        p.fail(f"{key}={value!r} is not a number", f"{key}={value}")
    x = float(value)
    if not math.isfinite(x):
        p.fail(f"{key}={value!r} is out of range", f"{key}={value}")
    return x


def _parse_int(p: _Parser, key: str, value: str) -> int:
    if not _INT_RE.match(value):
        p.fail(f"{key}={value!r} is not a whole number", f"{key}={value}")
    return int(value)


def _bounded(p: _Parser, key: str, x: float, lo: float | None, hi: float | None, raw: str) -> None:
    if (lo is not None and x < lo) or (hi is not None and x > hi):
        lo_s = "" if lo is None else f"{lo:g}"
        hi_s = "" if hi is None else f"{hi:g}"
        p.fail(f"{key}={raw} is out of range (allowed {lo_s}..{hi_s})", f"{key}={raw}")


_TRUE = {"yes", "true", "on", "1", "y"}
_FALSE = {"no", "false", "off", "0", "n"}


def _parse_bool(p: _Parser, key: str, value: str) -> bool:
    v = value.lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    p.fail(f"{key}={value!r} must be yes or no", f"{key}={value}")


def _parse_param(p: _Parser, spec: ParamSpec, value: str) -> ParamValue:
    key = spec.name
    if spec.type is ParamType.STR and spec.free_text:
        if len(value) > spec.max_length:
            p.fail(f"{key}= is longer than {spec.max_length} characters", f"{key}=")
        return value
    _check_safe(p, key, value)
    match spec.type:
        case ParamType.FLOAT:
            x = _parse_float(p, key, value)
            _bounded(p, key, x, spec.min, spec.max, value)
            return x
        case ParamType.INT:
            n = _parse_int(p, key, value)
            _bounded(p, key, n, spec.min, spec.max, value)
            return n
        case ParamType.BOOL:
            return _parse_bool(p, key, value)
        case ParamType.CHOICE:
            for choice in spec.choices:
                if value.lower() == choice.lower():
                    return choice
            p.fail(f"{key}={value!r} must be one of {', '.join(spec.choices)}", f"{key}={value}")
        case ParamType.STR:
            if len(value) > spec.max_length:
                p.fail(f"{key}= is longer than {spec.max_length} characters", f"{key}=")
            if "," in value:
                p.fail(f"{key}={value!r}: comma lists are only allowed in sweep", f"{key}={value}")
            return value
    raise AssertionError(spec.type)  # pragma: no cover


def _parse_money(p: _Parser, key: str, value: str, *, hi: Decimal) -> Decimal:
    _check_safe(p, key, value, allow_dollar=True)
    m = _MONEY_RE.match(value)
    if not m or value.count("$") > 1 or ("$" in value and not value.startswith("$")):
        p.fail(f"{key}={value!r} is not an amount in USD (e.g. $0.40 or 5)", f"{key}={value}")
    try:
        amount = Decimal(m.group(1))
    except InvalidOperation:  # pragma: no cover - the regex only admits decimals
        p.fail(f"{key}={value!r} is not an amount in USD", f"{key}={value}")
    if amount <= 0 or amount > hi:
        p.fail(f"{key}={value} is out of range (above $0, at most ${hi})", f"{key}={value}")
    return amount


def _parse_gb(p: _Parser, key: str, value: str, *, lo: float, hi: float) -> float:
    _check_safe(p, key, value)
    m = _GB_RE.match(value)
    if not m:
        p.fail(f"{key}={value!r} is not a size in GB (e.g. 50GB or 50)", f"{key}={value}")
    gb = float(m.group(1)) * (1000 if (m.group(2) or "").lower() in ("tb", "t") else 1)
    _bounded(p, key, gb, lo, hi, value)
    return gb


def _parse_hours(p: _Parser, key: str, value: str, *, hi: float = MAX_HOURS) -> float:
    _check_safe(p, key, value)
    if _BARE_HOURS_RE.match(value):
        hours = float(value)
    else:
        m = _HOURS_RE.match(value)
        if not m or not (m.group("h") or m.group("m")):
            p.fail(f"{key}={value!r} is not a duration (e.g. 2h, 90m, 1h30m)", f"{key}={value}")
        hours = float(m.group("h") or 0) + int(m.group("m") or 0) / 60
    if hours <= 0 or hours > hi:
        p.fail(f"{key}={value} is out of range (above 0, at most {hi:g}h)", f"{key}={value}")
    return hours


def _parse_job_id(p: _Parser, token: str) -> str:
    value = _unquote(token).strip().lower()
    if not JOB_ID_RE.match(value):
        p.fail(
            f"{_short(token)!r} is not a job id (job ids look like j-3f9a1c2e, groups g-3f9a1c2e)",
            token,
        )
    return value


def _parse_gpu(p: _Parser, value: str) -> tuple[str, ...]:
    _check_safe(p, "gpu", value)
    names: list[str] = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            p.fail(f"gpu={value!r} has an empty item", f"gpu={value}")
        try:
            for name in canonical_gpu_names(part):
                if name not in names:
                    names.append(name)
        except ValueError:
            hint = difflib.get_close_matches(part.lower(), known_gpu_spellings(), n=1)
            extra = f" (did you mean {hint[0]}?)" if hint else ""
            p.fail(
                f"unknown GPU {part!r}{extra}; e.g. 3090, 4090, a100, h100, l40s",
                f"gpu={value}",
            )
    return tuple(names)


_RESOURCE_FIELDS = {
    "gpu": "gpu_names",
    "gpus": "num_gpus",
    "gpu_ram": "min_gpu_ram_gb",
    "max_price": "max_price_per_hour_usd",
    "budget": "budget_usd",
    "interruptible": "interruptible",
    "disk": "disk_gb",
    "image": "image",
    "hours": "hours",
}


def _parse_resource(p: _Parser, key: str, value: str) -> object:
    if "," in value and key != "gpu":
        p.fail(f"{key}={value!r}: only gpu= takes a comma list", f"{key}={value}")
    match key:
        case "gpu":
            return _parse_gpu(p, value)
        case "gpus":
            _check_safe(p, key, value)
            n = _parse_int(p, key, value)
            _bounded(p, key, n, 1, 16, value)
            return n
        case "gpu_ram":
            return _parse_gb(p, key, value, lo=1, hi=1024)
        case "max_price":
            return _parse_money(p, key, value, hi=Decimal(100))
        case "budget":
            return _parse_money(p, key, value, hi=Decimal(100000))
        case "interruptible":
            _check_safe(p, key, value)
            v = value.lower()
            if v in ("auto",):
                return InterruptibleMode.AUTO
            if v in _TRUE:
                return InterruptibleMode.YES
            if v in _FALSE:
                return InterruptibleMode.NO
            p.fail(f"interruptible={value!r} must be yes, no or auto", f"{key}={value}")
        case "disk":
            return math.ceil(_parse_gb(p, key, value, lo=5, hi=4000))
        case "image":
            _check_safe(p, key, value)
            if len(value) > 255 or not IMAGE_RE.match(value):
                p.fail(f"image={value!r} is not a Docker image (e.g. repo/name:tag)", f"{key}=")
            return value
        case "hours":
            return _parse_hours(p, key, value)
    raise AssertionError(key)  # pragma: no cover


def _unknown_key(p: _Parser, key: str, value: str, known: list[str], where: str) -> NoReturn:
    hint = difflib.get_close_matches(key, known, n=1)
    extra = f" (did you mean {hint[0]}?)" if hint else ""
    p.fail(f"unknown key {key!r} for {where}{extra}", f"{key}={value}")


# -- verbs ---------------------------------------------------------------------------------


class _Args:
    """The tokens after the verb: positionals in order and key=value pairs (no duplicates)."""

    def __init__(self, p: _Parser, tokens: list[str]) -> None:
        self.positionals: list[str] = []
        self.pairs: dict[str, str] = {}
        for token in tokens:
            kv = _split_kv(p, token)
            if kv is None:
                self.positionals.append(token)
                continue
            key, value = kv
            if key in self.pairs:
                p.fail(f"{key}= is given twice", f"{key}={value}")
            self.pairs[key] = value


def _resources(p: _Parser, pairs: dict[str, str], allowed: tuple[str, ...]) -> ResourceOverrides:
    kwargs = {
        _RESOURCE_FIELDS[k]: _parse_resource(p, k, v) for k, v in pairs.items() if k in allowed
    }
    return ResourceOverrides(**kwargs)  # type: ignore[arg-type]


def _no_positionals(p: _Parser, positionals: list[str], hint: str) -> None:
    if positionals:
        tok = positionals[0]
        p.fail(f"unexpected {_short(_unquote(tok))!r}: {hint}", tok)


def _parse_launch(p: _Parser, template: Template, args: _Args) -> LaunchCommand:
    _no_positionals(p, args.positionals, "options are written key=value, e.g. lr=2e-5")
    params: dict[str, ParamValue] = {}
    for key, value in args.pairs.items():
        if key in RESOURCE_KEYS:
            continue
        spec = template.params.get(key)
        if spec is None:
            _unknown_key(p, key, value, list(template.params) + list(RESOURCE_KEYS), template.name)
        if "," in value and not spec.free_text:
            p.fail(
                f"{key}={value!r}: lists of values are only allowed in sweep "
                f"(/gpu sweep {template.name} {key}={value})",
                f"{key}={value}",
            )
        params[key] = _parse_param(p, spec, value)
    return LaunchCommand(
        template=template.name,
        params=params,
        resources=_resources(p, args.pairs, RESOURCE_KEYS),
    )


def _parse_sweep(p: _Parser, args: _Args) -> SweepCommand:
    if not args.positionals:
        p.fail("sweep needs a template name, e.g. sweep train lr=1e-5,2e-5")
    name_tok = args.positionals[0]
    name = _unquote(name_tok).lower()
    template = p.config.templates.get(name)
    if template is None:
        hint = difflib.get_close_matches(name, list(p.config.templates), n=1)
        extra = f" (did you mean {hint[0]}?)" if hint else ""
        p.fail(f"unknown template {_short(name)!r}{extra}", name_tok)
    _no_positionals(p, args.positionals[1:], "sweep values are written key=v1,v2")
    axes: dict[str, list[ParamValue]] = {}
    fixed: dict[str, ParamValue] = {}
    for key, value in args.pairs.items():
        if key in RESOURCE_KEYS:
            continue
        spec = template.params.get(key)
        if spec is None:
            _unknown_key(p, key, value, list(template.params) + list(RESOURCE_KEYS), name)
        if spec.free_text or "," not in value:
            fixed[key] = _parse_param(p, spec, value)
            continue
        values: list[ParamValue] = []
        for item in value.split(","):
            item = item.strip()
            if not item:
                p.fail(f"{key}={value!r} has an empty item", f"{key}={value}")
            parsed = _parse_param(p, spec, item)
            if parsed in values:
                p.fail(f"{key}={value!r} lists {item} twice", f"{key}={value}")
            values.append(parsed)
        axes[key] = values
    if not axes:
        p.fail(
            f"sweep needs at least one parameter with several values, "
            f"e.g. sweep {name} {next(iter(template.params), 'lr')}=a,b"
        )
    runs = math.prod(len(v) for v in axes.values())
    if runs > MAX_SWEEP_RUNS:
        p.fail(f"this sweep would start {runs} runs; the limit is {MAX_SWEEP_RUNS}")
    return SweepCommand(
        template=name,
        axes=axes,
        params=fixed,
        resources=_resources(p, args.pairs, RESOURCE_KEYS),
    )


def _only_keys(p: _Parser, args: _Args, allowed: tuple[str, ...], where: str) -> None:
    for key, value in args.pairs.items():
        if key not in allowed:
            _unknown_key(p, key, value, list(allowed), where)


def _parse_rent(p: _Parser, args: _Args) -> RentCommand:
    _no_positionals(
        p, args.positionals, "rent takes key=value options, e.g. rent gpu=4090 hours=2h"
    )
    _only_keys(p, args, RESOURCE_KEYS, "rent")
    resources = _resources(p, args.pairs, RESOURCE_KEYS)
    return RentCommand(resources=resources, hours=resources.hours or 1.0)


_OFFER_FILTERS = ("gpu", "gpus", "gpu_ram", "max_price", "interruptible", "disk")


def _parse_offers(p: _Parser, args: _Args) -> OffersCommand:
    _no_positionals(p, args.positionals, "filters are written key=value, e.g. offers gpu=4090")
    _only_keys(p, args, _OFFER_FILTERS + ("limit", "template"), "offers")
    limit = 10
    if "limit" in args.pairs:
        limit = _int_opt(p, "limit", args.pairs["limit"], 1, MAX_OFFERS_LIMIT)
    template = None
    if "template" in args.pairs:
        template = args.pairs["template"].lower()
        if template not in p.config.templates:
            p.fail(f"unknown template {_short(template)!r}", f"template={template}")
    return OffersCommand(
        filters=_resources(p, args.pairs, _OFFER_FILTERS), limit=limit, template=template
    )


def _int_opt(p: _Parser, key: str, value: str, lo: int, hi: int) -> int:
    _check_safe(p, key, value)
    n = _parse_int(p, key, value)
    _bounded(p, key, n, lo, hi, value)
    return n


def _job_arg(p: _Parser, args: _Args, verb: str, *, required: bool) -> str | None:
    if not args.positionals:
        if required:
            p.fail(f"{verb} needs a job id, e.g. {verb} j-3f9a1c2e")
        return None
    return _parse_job_id(p, args.positionals[0])


def _parse_status(p: _Parser, args: _Args) -> StatusCommand:
    _only_keys(p, args, (), "status")
    if len(args.positionals) > 1:
        p.fail(f"unexpected {_short(args.positionals[1])!r}", args.positionals[1])
    return StatusCommand(job_id=_job_arg(p, args, "status", required=False))


def _parse_jobs(p: _Parser, args: _Args) -> JobsCommand:
    _only_keys(p, args, (), "jobs")
    if not args.positionals:
        return JobsCommand()
    if len(args.positionals) == 1 and _unquote(args.positionals[0]).lower() == "all":
        return JobsCommand(include_finished=True)
    p.fail(
        f"unexpected {_short(args.positionals[0])!r}: jobs takes only 'all'", args.positionals[0]
    )


def _parse_logs(p: _Parser, args: _Args) -> LogsCommand:
    _only_keys(p, args, ("lines",), "logs")
    job = _job_arg(p, args, "logs", required=True)
    assert job is not None
    extra = args.positionals[1:]
    lines = 50
    if "lines" in args.pairs:
        lines = _int_opt(p, "lines", args.pairs["lines"], 1, MAX_LOG_LINES)
        if extra:
            p.fail(f"unexpected {_short(extra[0])!r}", extra[0])
    elif extra:
        if len(extra) > 1:
            p.fail(f"unexpected {_short(extra[1])!r}", extra[1])
        lines = _int_opt(p, "lines", _unquote(extra[0]), 1, MAX_LOG_LINES)
    return LogsCommand(job_id=job, lines=lines)


def _parse_cancel(p: _Parser, args: _Args) -> CancelCommand:
    _only_keys(p, args, (), "cancel")
    job = _job_arg(p, args, "cancel", required=True)
    assert job is not None
    if len(args.positionals) > 1:
        p.fail(f"unexpected {_short(args.positionals[1])!r}", args.positionals[1])
    return CancelCommand(job_id=job)


def _parse_keep(p: _Parser, args: _Args) -> KeepCommand:
    _only_keys(p, args, ("hours",), "keep")
    job = _job_arg(p, args, "keep", required=True)
    assert job is not None
    extra = args.positionals[1:]
    hours = 1.0
    if "hours" in args.pairs:
        hours = _parse_hours(p, "hours", args.pairs["hours"], hi=MAX_KEEP_HOURS)
        if extra:
            p.fail(f"unexpected {_short(extra[0])!r}", extra[0])
    elif extra:
        if len(extra) > 1:
            p.fail(f"unexpected {_short(extra[1])!r}", extra[1])
        hours = _parse_hours(p, "hours", _unquote(extra[0]), hi=MAX_KEEP_HOURS)
    return KeepCommand(job_id=job, hours=hours)


def _slack_id(p: _Parser, key: str, value: str, pattern: re.Pattern[str]) -> str:
    m = pattern.match(value)
    if not m:
        p.fail(f"{key}={_short(value)!r} is not a Slack {key} (mention it: {key}=@name)", key)
    return m.group(1) or m.group(2)


def _parse_budget(p: _Parser, args: _Args) -> BudgetCommand:
    _only_keys(p, args, ("user", "channel", "job", "amount", "period"), "budget")
    action = BudgetAction.SHOW
    scope: BudgetScope | None = None
    target: str | None = None
    amount: Decimal | None = None
    positionals = list(args.positionals)
    if positionals and _unquote(positionals[0]).lower() in ("show", "set"):
        action = BudgetAction(_unquote(positionals.pop(0)).lower())
    for tok in positionals:
        word = _unquote(tok).lower()
        if word in ("team", "user", "channel") and scope is None:
            scope = BudgetScope(word)
        elif _MONEY_RE.match(word) and amount is None:
            amount = _parse_money(p, "amount", word, hi=Decimal(1_000_000))
        else:
            p.fail(f"unexpected {_short(tok)!r}", tok)
    scoped = [k for k in ("user", "channel", "job") if k in args.pairs]
    if len(scoped) > 1 or (scoped and scope is not None):
        p.fail("give only one of team, user=, channel= or job=")
    if scoped:
        key = scoped[0]
        raw = args.pairs[key]
        scope = BudgetScope(key)
        if key == "user":
            target = _slack_id(p, key, raw, _SLACK_USER_RE)
        elif key == "channel":
            target = _slack_id(p, key, raw, _SLACK_CHANNEL_RE)
        else:
            target = _parse_job_id(p, raw)
    if "amount" in args.pairs:
        if amount is not None:
            p.fail("the amount is given twice", "amount=")
        amount = _parse_money(p, "amount", args.pairs["amount"], hi=Decimal(1_000_000))
    period = Period.MONTH
    if "period" in args.pairs:
        period = _enum_opt(p, "period", args.pairs["period"], Period)
    if action is BudgetAction.SET:
        if scope is None:
            p.fail("budget set needs a scope: team, user=@someone, channel=#chan or job=<job>")
        if amount is None:
            p.fail("budget set needs an amount, e.g. amount=$50")
    elif amount is not None:
        p.fail("an amount only makes sense with budget set", "amount=")
    return BudgetCommand(
        action=action, scope=scope, target=target, amount_usd=amount, period=period
    )


_E = TypeVar("_E", Period, CostGroup)


def _enum_opt(p: _Parser, key: str, value: str, kind: type[_E]) -> _E:
    _check_safe(p, key, value)
    v = value.lower()
    for member in kind:
        if member.value == v:
            return member
    p.fail(f"{key}={value!r} must be one of {', '.join(m.value for m in kind)}", f"{key}={value}")


def _parse_cost(p: _Parser, args: _Args) -> CostCommand:
    _only_keys(p, args, ("period", "by", "group_by"), "cost")
    period: Period | None = None
    positionals = [_unquote(x) for x in args.positionals]
    # "cost week by user" (as in the docs) is the same as "cost week by=user".
    by_words: str | None = None
    if len(positionals) >= 2 and positionals[-2].lower() == "by":
        by_words = positionals[-1]
        positionals = positionals[:-2]
        if "by" in args.pairs or "group_by" in args.pairs:
            p.fail("the grouping is given twice", "by")
    if len(positionals) > 1:
        p.fail(f"unexpected {_short(positionals[1])!r}", positionals[1])
    if positionals:
        period = _enum_opt(p, "period", positionals[0], Period)
    if by_words is not None:
        return CostCommand(
            period=period or Period.MONTH, group_by=_enum_opt(p, "by", by_words, CostGroup)
        )
    if "period" in args.pairs:
        if period is not None:
            p.fail("the period is given twice", "period=")
        period = _enum_opt(p, "period", args.pairs["period"], Period)
    if "by" in args.pairs and "group_by" in args.pairs:
        p.fail("give by= or group_by=, not both", "group_by=")
    group_raw = args.pairs.get("by", args.pairs.get("group_by"))
    group = None if group_raw is None else _enum_opt(p, "by", group_raw, CostGroup)
    return CostCommand(period=period or Period.MONTH, group_by=group)


def _parse_audit(p: _Parser, args: _Args) -> AuditCommand:
    _only_keys(p, args, ("limit",), "audit")
    if len(args.positionals) > 1 or (args.positionals and "limit" in args.pairs):
        p.fail(f"unexpected {_short(args.positionals[-1])!r}", args.positionals[-1])
    raw = args.pairs.get("limit") or (_unquote(args.positionals[0]) if args.positionals else None)
    limit = 20 if raw is None else _int_opt(p, "limit", raw, 1, MAX_AUDIT_LIMIT)
    return AuditCommand(limit=limit)


def _parse_help(p: _Parser, args: _Args) -> HelpCommand:
    _only_keys(p, args, (), "help")
    if not args.positionals:
        return HelpCommand()
    if len(args.positionals) > 1:
        p.fail(f"unexpected {_short(args.positionals[1])!r}", args.positionals[1])
    topic = _unquote(args.positionals[0]).lower()
    if topic not in RESERVED_VERBS and topic not in p.config.templates:
        p.fail(f"no help for {_short(topic)!r}: it is not a command or template", topic)
    return HelpCommand(topic=topic)


_VERB_PARSERS: dict[str, Callable[[_Parser, _Args], Command]] = {
    "sweep": _parse_sweep,
    "rent": _parse_rent,
    "offers": _parse_offers,
    "status": _parse_status,
    "jobs": _parse_jobs,
    "logs": _parse_logs,
    "cancel": _parse_cancel,
    "keep": _parse_keep,
    "budget": _parse_budget,
    "cost": _parse_cost,
    "audit": _parse_audit,
    "help": _parse_help,
}


def parse_command(text: str, config: BotConfig) -> Command:
    """Parse one command typed in Slack or the console (with or without a leading ``/gpu``).

    An empty command is ``HelpCommand()``. Launch parameters are typed and checked against
    the template (type, bounds, choices); template defaults are not filled in.

    Raises:
        CommandSyntaxError: anything malformed; ``.token`` is the offending token and
            ``.usage`` the usage text of the verb (or the general usage).
    """
    p = _Parser(config, None)
    if not isinstance(text, str):
        p.fail("a command must be text")
    if len(text) > MAX_INPUT_CHARS:
        p.fail(f"the command is {len(text)} characters long; the limit is {MAX_INPUT_CHARS}")
    text = _check_characters(p, text.translate(_QUOTE_MAP))
    tokens = _split_tokens(p, text.strip())
    if tokens and tokens[0].lower() == "/gpu":
        tokens = tokens[1:]
    if not tokens:
        return HelpCommand()
    verb_tok = tokens[0]
    if "=" in verb_tok:
        p.fail(
            f"start with a command, then options, e.g. train lr=2e-5 (not {_short(verb_tok)!r})",
            verb_tok,
        )
    verb = _unquote(verb_tok)
    if not verb.isascii() or not _VERB_RE.match(verb.lower()):
        bad = next((ch for ch in verb if not ch.isascii()), None)
        extra = f" (it contains {_char_name(bad)})" if bad else ""
        p.fail(f"unknown command {_short(verb)!r}{extra}", verb_tok)
    verb = verb.lower()
    parser = _VERB_PARSERS.get(verb)
    if parser is None and verb not in config.templates:
        hint = difflib.get_close_matches(verb, list(_VERB_PARSERS) + list(config.templates), n=1)
        extra = f" (did you mean {hint[0]}?)" if hint else ""
        p.fail(f"unknown command {_short(verb)!r}{extra}", verb_tok)
    p.verb = verb
    args = _Args(p, tokens[1:])
    if parser is not None:
        return parser(p, args)
    return _parse_launch(p, config.templates[verb], args)
