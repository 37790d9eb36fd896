"""Shell injection through every launch parameter and resource key.

Every hostile value typed into every parameter of every template (built-in and a test
template with a ``free_text`` string) and into every resource key is either

* refused by the grammar with a :class:`CommandSyntaxError` that carries a usage text, or
* (string parameters only) accepted, and then delivered to the job only as data: the env
  built by :func:`gpubot.remote.control.env_exports` plus the template's rendered run command
  are started by :func:`start_detached_script` under ``/bin/sh`` in a temporary root; the job
  writes the variable to a file, which must hold the literal value, and no marker file may
  appear (nothing of the value was executed).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from gpubot.commands.grammar import parse_command
from gpubot.commands.types import LaunchCommand
from gpubot.config import BotConfig, load_config_text
from gpubot.errors import CommandSyntaxError
from gpubot.remote import control
from gpubot.templates import RESOURCE_KEYS, ParamType, Template, param_env, render_command
from tests.security.conftest import SECURITY_CONFIG

CONFIG: BotConfig = load_config_text(SECURITY_CONFIG, name="security.toml")

HOSTILE: tuple[str, ...] = (
    "$(touch {marker})",
    "`touch {marker}`",
    "; touch {marker}",
    ";touch {marker}",
    "| touch {marker}",
    "| nc 127.0.0.1 9",
    "&& touch {marker}",
    "x & touch {marker}",
    "; rm -rf {canary}",
    "> {marker}",
    "< /etc/passwd",
    "../../etc/passwd",
    "a\ntouch {marker}",
    "a\rtouch {marker}",
    "a\x00touch {marker}",
    "${IFS}touch${IFS}{marker}",
    "$IFS",
    "$HOME",
    "'; touch {marker}; '",
    '"; touch {marker}; "',
    "\\$(touch {marker})",
    "{marker}'$(touch {marker})'",
    "t\u043euch {marker}",  # Cyrillic o
    "\uff54\uff4f\uff55\uff43\uff48 {marker}",  # fullwidth "touch"
    "\u2010\u2010help",  # hyphens that look like "--"
    "\u202etouch",  # right-to-left override
    "a\u200btouch",  # zero-width space
    "--help",
    "-rf",
    "*",
    "~root",
    "%s%n%x",
    "{GPUBOT_JOB_ID}",
    "x" * 300,
)


def _token(key: str, value: str) -> str:
    """``key=value`` as a user would type it (quoted when the value has a space)."""
    if " " not in value:
        return f"{key}={value}"
    quote = '"' if '"' not in value else "'"
    return f"{key}={quote}{value}{quote}"


def _cases() -> list[tuple[str, str]]:
    """(template, key) for every template parameter and every resource key."""
    cases = [(t.name, p) for t in CONFIG.templates.values() for p in t.params]
    cases += [("train", key) for key in RESOURCE_KEYS]
    return cases


def test_the_matrix_covers_a_free_text_param_and_every_resource_key() -> None:
    keys = set(_cases())
    assert ("notes", "note") in keys and CONFIG.templates["notes"].params["note"].free_text
    assert {k for _, k in keys} >= set(RESOURCE_KEYS)
    assert len({t for t, _ in keys}) >= 3


def _run_as_the_job(
    root: Path, template: Template, params: dict[str, object], probe_var: str
) -> tuple[Path, Path]:
    """Start the job the way the bot does (detached, under sh) and wait for it to end.

    Returns (the file the job wrote ``$probe_var`` to, the workspace).
    """
    layout = control.remote_layout(str(root), "j-1nject10")
    env_values = param_env(template, params)  # type: ignore[arg-type]
    env = control.env_exports(
        layout,
        {k.removeprefix("GPUBOT_PARAM_").lower(): v for k, v in env_values.items()},
        None,
    )
    out = Path(layout.workspace) / "value.out"
    # The template's own run command, then a probe written like an operator would write it.
    probe = render_command(
        f'printf "%s" {{{probe_var}}} > value.out', template.placeholder_names()
    )
    run = template.rendered_run() + "\n" + probe
    subprocess.run(["/bin/sh", "-c", control.prepare_dirs_script(layout)], check=True)
    script = control.start_detached_script(layout, run, env)
    clean_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root)}
    started = subprocess.run(
        ["/bin/sh", "-c", script], env=clean_env, cwd=root, capture_output=True, text=True,
        timeout=10, check=True,
    )
    assert started.stdout.startswith("started"), started.stdout + started.stderr
    exit_file = Path(layout.exit_code_file())
    deadline = time.monotonic() + 10
    while not exit_file.exists():
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.01)  # polling interval, bounded by the deadline
    return out, Path(layout.workspace)


@pytest.mark.parametrize("template_name, key", _cases())
def test_hostile_value_is_refused_or_delivered_only_as_data(
    tmp_path: Path, template_name: str, key: str
) -> None:
    template = CONFIG.templates[template_name]
    spec = template.params.get(key)
    marker = tmp_path / "pwned"
    canary = tmp_path / "canary"
    canary.write_text("still here")
    accepted = 0
    for pattern in HOSTILE:
        value = pattern.replace("{marker}", str(marker)).replace("{canary}", str(canary))
        text = f"{template_name} {_token(key, value)}"
        try:
            command = parse_command(text, CONFIG)
        except CommandSyntaxError as e:
            assert e.user_message and e.usage, text
            assert len(e.user_message) < 400
            continue
        # Only string parameters may take such values; numbers, bools, choices and every
        # resource key must refuse them.
        assert isinstance(command, LaunchCommand), text
        assert spec is not None and spec.type is ParamType.STR, (text, command)
        parsed = command.params[key]
        assert isinstance(parsed, str)
        if not spec.free_text:
            assert not set(parsed) & set(";|&<>`$\n\r"), parsed
        root = tmp_path / f"root{accepted}"
        root.mkdir()
        out, workspace = _run_as_the_job(root, template, command.params, spec.env_name)
        accepted += 1
        assert out.read_bytes() == parsed.encode(), (text, out.read_bytes())
        assert not marker.exists(), f"{text!r} executed code"
        assert canary.read_text() == "still here"
        assert {p.name for p in workspace.iterdir()} == {"value.out", *_outputs(template)}
    if spec is not None and spec.free_text:
        # the free-text parameter takes the metacharacter payloads (as data)
        assert accepted >= 15, accepted


def _outputs(template: Template) -> set[str]:
    """Files the template's own run command writes in the workspace."""
    return {"note.out", "tag.out"} if template.name == "notes" else set()


def test_free_text_value_reaches_the_templates_own_run_command_literally(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "pwned"
    value = f"$(touch {marker}) `touch {marker}`; touch {marker} | cat ${{IFS}} && echo '"
    command = parse_command(f'notes note="{value}"', CONFIG)
    assert isinstance(command, LaunchCommand) and command.params == {"note": value}
    template = CONFIG.templates["notes"]
    _out, workspace = _run_as_the_job(tmp_path, template, command.params, "GPUBOT_PARAM_TAG")
    assert (workspace / "note.out").read_text() == value
    assert (workspace / "tag.out").read_text() == "t"  # the default, untouched
    assert not marker.exists()


@pytest.mark.parametrize("template_name, key", _cases())
def test_rm_rf_root_is_refused_or_only_ever_quoted(template_name: str, key: str) -> None:
    """Never executed (not even in a sandbox): refused, or exported shlex-quoted."""
    text = f"{template_name} {_token(key, '; rm -rf /')}"
    try:
        command = parse_command(text, CONFIG)
    except CommandSyntaxError as e:
        assert "metacharacter" in e.user_message or "unexpected" in e.user_message, e
        return
    spec = CONFIG.templates[template_name].params[key]
    assert isinstance(command, LaunchCommand) and spec.free_text
    layout = control.remote_layout("/workspace", "j-1nject10")
    exports = control.env_exports(layout, {key: str(command.params[key])}, None)
    assert f"export {spec.env_name}='; rm -rf /'\n" in exports
