"""Removing secrets from anything the bot records or shows. Pure."""

from __future__ import annotations

import re
import threading

_lock = threading.Lock()
_known_secrets: set[str] = set()

# Presigned URL signatures and credentials in query strings, bearer tokens, Slack tokens,
# AWS secret-looking values.
_PRESIGNED_PATTERNS = [
    (re.compile(r"(X-Amz-(?:Signature|Credential|Security-Token)=)[^&\s\"'>|]+", re.I), r"\1***"),
    (re.compile(r"((?:Signature|AWSAccessKeyId|x-amz-security-token)=)[^&\s\"'>|]+"), r"\1***"),
]
_PATTERNS = [
    (re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]{8,}", re.I), r"\1***"),
    (re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{8,}"), "xox?-***"),
    (re.compile(r"\bxapp-[A-Za-z0-9-]{8,}"), "xapp-***"),
    (re.compile(r"(aws_secret_access_key\s*[=:]\s*)\S+", re.I), r"\1***"),
]


def register_secret(value: str | None) -> None:
    """Remember a secret value so :func:`redact` removes it wherever it appears."""
    if value and len(value) >= 6:
        with _lock:
            _known_secrets.add(value)


def redact(text: str) -> str:
    """``text`` with every registered secret and every secret-shaped token replaced,
    including presigned-URL signatures. For logs, exceptions and the audit log."""
    return _redact(text, _PRESIGNED_PATTERNS + _PATTERNS)


def redact_for_chat(text: str) -> str:
    """Like :func:`redact`, but keeps presigned URLs working: a results link posted in a
    job's thread is meant to be followed (it expires; it carries no secret key)."""
    return _redact(text, _PATTERNS)


def _redact(text: str, patterns: list[tuple[re.Pattern[str], str]]) -> str:
    if not text:
        return text
    with _lock:
        secrets = sorted(_known_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "***")
    for pattern, replacement in patterns:
        text = pattern.sub(replacement, text)
    return text
