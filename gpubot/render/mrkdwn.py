"""THE text layer for everything that reaches Slack as mrkdwn. Pure (stdlib only).

Rule: every value that comes from a user, a job (logs, file names, metric keys, failure
reasons) or the provider goes through :func:`escape` (or a helper built on it) before it becomes
part of a mrkdwn string. Markup (links, mentions, code fences) is built here only, from trusted
or validated parts.

Facts restated from Slack's documentation (sources named per item):

* "Formatting text for app surfaces" (https://api.slack.com/reference/surfaces/formatting,
  section "Escaping text"): ``&``, ``<`` and ``>`` are control characters of mrkdwn and must be
  sent as ``&amp;``, ``&lt;`` and ``&gt;``; Slack shows them as typed. Unescaped, ``<!channel>``
  pings a channel, ``<@U123>`` mentions a user and ``<https://x|label>`` shows a link whose
  target is hidden behind ``label``. There is no escape for backticks; a code block runs from
  one `````` to the next.
* "Section block" (https://api.slack.com/reference/block-kit/blocks#section): ``text`` at most
  3000 characters; ``fields`` at most 10 items of at most 2000 characters each.
* "Context block": at most 10 elements. "Header block": plain text of at most 150 characters.
* "chat.postMessage" (https://api.slack.com/methods/chat.postMessage): at most 50 blocks per
  message; ``text`` is truncated beyond 40,000 characters (``msg_too_long`` when far above);
  "Views" (https://api.slack.com/reference/surfaces/views): at most 100 blocks.
* "Button element": ``text`` at most 75 characters, ``action_id`` at most 255, ``value`` at most
  2000, ``url`` at most 3000.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

SECTION_TEXT_MAX = 3000
"""Slack: a section's text may hold at most 3000 characters."""
FIELD_TEXT_MAX = 2000
FIELDS_MAX = 10
CONTEXT_ELEMENTS_MAX = 10
HEADER_TEXT_MAX = 150
BUTTON_TEXT_MAX = 75
ACTION_ID_MAX = 255
BUTTON_VALUE_MAX = 2000
URL_MAX = 3000
MESSAGE_BLOCKS_MAX = 50
VIEW_BLOCKS_MAX = 100
MESSAGE_TEXT_MAX = 40_000
"""Slack truncates a message's top-level ``text`` above 40,000 characters."""
TEXT_SOFT_MAX = 4000
"""chat.postMessage: "we recommend keeping messages to 4,000 characters" (text-only messages
such as group cards are clamped to this)."""

ELLIPSIS = "…"
FENCE = "```"

_CONTROL = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff]"
)
"""C0/C1 control characters (tab and newline kept) and bidirectional overrides/isolates, which
can make a line read differently from what it is."""
_USER_ID = re.compile(r"^[UW][A-Z0-9]{1,30}$")
_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{1,30}$")
_ENTITY_AT_END = re.compile(r"&[a-z]{0,3}$")
_ZWSP = "\u200b"


def strip_control(text: object) -> str:
    """``text`` as a string without control characters (``\\n`` and ``\\t`` kept; ``\\r\\n``
    becomes ``\\n``)."""
    return _CONTROL.sub("", str(text).replace("\r\n", "\n").replace("\r", "\n"))


def escape(text: object) -> str:
    """``text`` made inert for mrkdwn: control characters removed, then ``&`` ``<`` ``>``
    replaced by ``&amp;`` ``&lt;`` ``&gt;`` (Slack shows them as typed). ``None`` gives ``""``.
    Escaping twice is visible (``&amp;lt;``): escape raw values once, at the point they
    become mrkdwn."""
    if text is None:
        return ""
    return (
        strip_control(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    )


def unescape(text: str) -> str:
    """The inverse of :func:`escape` (for fronts that print mrkdwn as plain text)."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def inline(text: object, limit: int = 200) -> str:
    """A value for one line of mrkdwn: escaped, whitespace runs (newlines too) folded to one
    space, at most ``limit`` characters of the escaped result (cut with ``…``, never inside an
    ``&…;`` entity)."""
    flat = " ".join(strip_control(text if text is not None else "").split())
    out = escape(flat)
    if len(out) <= limit:
        return out
    cut = _ENTITY_AT_END.sub("", out[: max(0, limit - 1)])
    return cut + ELLIPSIS


def _fence_safe(line: str) -> str:
    """A line that cannot close a code fence early (a zero-width space between backticks)."""
    return line.replace(FENCE, f"`{_ZWSP}`{_ZWSP}`")


def _tail_chars(escaped_line: str, budget: int) -> str:
    """The newest (rightmost) part of one escaped line in at most ``budget`` characters,
    prefixed with ``…`` and never starting inside an entity."""
    if len(escaped_line) <= budget:
        return escaped_line
    if budget <= 1:
        return ELLIPSIS[:budget]
    tail = escaped_line[len(escaped_line) - (budget - 1):]
    amp = tail.find("&")
    semi = tail.find(";")
    if semi != -1 and (amp == -1 or semi < amp) and semi < 5:
        tail = tail[semi + 1:]  # the cut fell inside "&lt;" / "&gt;" / "&amp;"
    return ELLIPSIS + tail


def code_block(
    lines: Iterable[str] | str,
    limit_chars: int = SECTION_TEXT_MAX,
    *,
    empty: str = "(empty)",
    keep: str = "tail",
) -> str:
    """Raw ``lines`` (a log tail, a table) as one closed code block of at most ``limit_chars``.

    Contract: every line is escaped (:func:`escape`) and cannot close the fence early. With
    ``keep="tail"`` (logs) the NEWEST (last) lines are kept and older ones dropped whole, with a
    first line ``… N earlier lines not shown``; with ``keep="head"`` (tables) the first lines
    are kept and a last line says how many more there are. A single line longer than the room
    is cut (a log line keeps its end). The result always starts and ends with a fence.
    ``limit_chars`` should be at least 64.
    """
    if isinstance(lines, str):
        lines = lines.split("\n")
    raw = [strip_control(line).rstrip("\n") for line in lines]
    while raw and not raw[-1].strip():
        raw.pop()
    escaped = [_fence_safe(escape(line)) for line in raw] or [escape(empty)]
    room = max(8, limit_chars - 2 * len(FENCE) - 2)  # fences and their two newlines
    marker_of = _dropped_marker if keep == "tail" else _more_marker
    order = list(reversed(escaped)) if keep == "tail" else escaped
    kept: list[str] = []
    used = 0
    for line in order:
        cost = len(line) + (1 if kept else 0)
        dropped = len(escaped) - len(kept) - 1
        marker_cost = len(marker_of(dropped)) + 1 if dropped else 0
        if used + cost + marker_cost > room:
            break
        kept.append(line)
        used += cost
    if not kept:  # the first line kept is alone too long: cut it
        dropped = len(escaped) - 1
        marker = marker_of(dropped) + "\n" if dropped else ""
        if keep == "tail":
            kept = [_tail_chars(order[0], room - len(marker))]
        else:
            cut = _ENTITY_AT_END.sub("", order[0][: max(0, room - len(marker) - 1)])
            kept = [cut + ELLIPSIS]
    dropped = len(escaped) - len(kept)
    if keep == "tail":
        kept.reverse()
        body_lines = ([marker_of(dropped)] if dropped else []) + kept
    else:
        body_lines = kept + ([marker_of(dropped)] if dropped else [])
    return f"{FENCE}\n" + "\n".join(body_lines) + f"\n{FENCE}"


def _dropped_marker(count: int) -> str:
    return f"{ELLIPSIS} {count} earlier line{'s' if count != 1 else ''} not shown"


def clamp(text: str, limit: int = SECTION_TEXT_MAX, *, keep: str = "head") -> str:
    """Already-built mrkdwn ``text`` in at most ``limit`` characters, cut at line boundaries.

    ``keep="head"`` keeps the first lines and ends with ``…`` (N more lines);
    ``keep="tail"`` keeps the last lines and starts with ``…``. An odd number of code fences in
    the kept part gets a closing fence, so a fence is never left open. A single line longer
    than the room is cut (never inside an entity).
    """
    if len(text) <= limit:
        return text
    lines = text.split("\n")
    room = max(8, limit - len(FENCE) - 1)  # room for a closing fence if needed
    order = lines if keep == "head" else list(reversed(lines))
    kept: list[str] = []
    used = 0
    for line in order:
        left = len(lines) - len(kept) - 1
        marker = len(_more_marker(left)) + 1
        cost = len(line) + (1 if kept else 0)
        if used + cost + marker > room:
            break
        kept.append(line)
        used += cost
    left = len(lines) - len(kept)
    if not kept:
        first = order[0]
        budget = room - len(_more_marker(left - 1)) - 1
        if keep == "head":
            kept = [_ENTITY_AT_END.sub("", first[: max(0, budget - 1)]) + ELLIPSIS]
        else:
            kept = [_tail_chars(first, budget)]
        left -= 1
    if keep != "head":
        kept.reverse()
    fences = sum(line.count(FENCE) for line in kept)
    if keep == "head":
        out = kept + ([_more_marker(left)] if left else [])
        if fences % 2:
            out.insert(len(kept), FENCE)
    else:
        out = ([_more_marker(left)] if left else []) + kept
        if fences % 2:
            out.insert(1 if left else 0, FENCE)
    return "\n".join(out)[:limit]


def _more_marker(count: int) -> str:
    return f"{ELLIPSIS} ({count} more line{'s' if count != 1 else ''} not shown)"


def link(url: str | None, label: object) -> str:
    """``<url|label>`` when ``url`` is a plain http(s) URL, else just the escaped label.

    The label is escaped (and folded to one line); in the URL, characters that would end or
    split the link (``|``, ``<``, ``>``, spaces) are percent-encoded and ``&`` is escaped as
    Slack's docs ask. A URL longer than 3000 characters is not linked.
    """
    text = inline(label) or inline(url or "")
    if not url or not isinstance(url, str):
        return text
    clean = strip_control(url).strip()
    scheme = clean.split(":", 1)[0].lower()
    if scheme not in {"http", "https"} or not clean.lower().startswith(f"{scheme}://"):
        return text
    if len(clean) > URL_MAX or any(ch.isspace() for ch in clean[: len(scheme) + 4]):
        return text
    for ch, enc in (("|", "%7C"), ("<", "%3C"), (">", "%3E"), (" ", "%20"), ("\n", "%0A")):
        clean = clean.replace(ch, enc)
    return f"<{clean.replace('&', '&amp;')}|{text}>"


def mention(user_id: object) -> str:
    """``<@U…>`` for a valid Slack user id (``U``/``W`` + upper-case letters and digits);
    anything else is shown as escaped text, never as markup."""
    value = str(user_id or "")
    if _USER_ID.match(value):
        return f"<@{value}>"
    return inline(value, 60)


def channel_ref(channel_id: object) -> str:
    """``<#C…>`` for a valid Slack channel id; anything else as escaped text."""
    value = str(channel_id or "")
    if _CHANNEL_ID.match(value):
        return f"<#{value}>"
    return inline(value, 80)


def plain(text: object, limit: int) -> str:
    """Text for a ``plain_text`` object (no mrkdwn parsing there): control characters removed,
    at most ``limit`` characters (cut with ``…``)."""
    value = strip_control(text if text is not None else "")
    return value if len(value) <= limit else value[: limit - 1] + ELLIPSIS
