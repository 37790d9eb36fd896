"""Usage and help texts for every command (plain text; Slack mrkdwn-safe, no markup).

Pure: standard library only.
"""

from __future__ import annotations

from gpubot.config import BotConfig
from gpubot.templates import RESERVED_VERBS, Template, format_param

PREFIX = "/gpu"

RESOURCE_LINES: tuple[tuple[str, str], ...] = (
    ("gpu=4090,a100", 'GPU types: 3090, 4090, "RTX 4090", a100, h100, l40s ... (comma list)'),
    ("gpus=1", "number of GPUs on the machine (1-16)"),
    ("gpu_ram=24GB", "minimum memory per GPU, GB"),
    ("max_price=$0.40", "highest $/h for the machine"),
    ("budget=$5", "stop the job when it has cost this much"),
    ("interruptible=auto", "yes | no | auto (the bot decides; see help)"),
    ("disk=50GB", "disk size, GB"),
    ("image=repo/name:tag", "Docker image to run instead of the template's"),
    ("hours=2h", "expected run time: 2h, 90m, 1h30m or 1.5"),
)

_VERBS: dict[str, tuple[str, str, str]] = {
    # verb: (synopsis, example, one-line description)
    "sweep": (
        "sweep <template> <param>=v1,v2,... [<param>=v ...] [resource keys]",
        "sweep train lr=1e-5,2e-5,5e-5",
        "one job per combination of the listed values; the best run is reported",
    ),
    "rent": (
        "rent [gpu=...] [gpus=N] [gpu_ram=..] [max_price=$..] [disk=..] [image=..] [hours=2h]",
        "rent gpu=4090 hours=2h",
        "an interactive machine; the reply is the ssh command",
    ),
    "offers": (
        "offers [template=<t>] [gpu=...] [gpus=N] [gpu_ram=..] [max_price=$..] "
        "[interruptible=..] [disk=..] [limit=10]",
        "offers gpu=4090 max_price=$0.40",
        "the cheapest matching offers on the market right now",
    ),
    "status": ("status [<job>]", "status j-3f9a1c2e", "a job's card, or your live jobs"),
    "jobs": (
        "jobs [all]",
        "jobs all",
        "your own live jobs, in every channel (all: also your 10 newest finished ones)",
    ),
    "logs": ("logs <job> [lines=50]", "logs j-3f9a1c2e lines=100", "the end of a job's log"),
    "cancel": ("cancel <job>", "cancel j-3f9a1c2e", "checkpoint, stop and destroy the machine"),
    "keep": (
        "keep <job> [hours]",
        "keep j-3f9a1c2e 2h",
        "keep an idle machine alive (default 1h, at most 24h)",
    ),
    "budget": (
        "budget [show|set] [team | user=@someone | channel=#chan | job=<job>] [amount=$N]",
        "budget set user=@ana amount=$50",
        "show or set monthly budgets (set: admins)",
    ),
    "cost": (
        "cost [today|week|month] [by=user|channel|job]",
        "cost week by=user",
        "what was spent",
    ),
    "audit": ("audit [limit=20]", "audit limit=50", "recent actions (admins)"),
    "help": ("help [<command or template>]", "help sweep", "this text, or help on one command"),
}

_BUILTIN_ORDER = RESERVED_VERBS
"""Built-in verbs in the order help lists them (the same order as templates.RESERVED_VERBS)."""


def template_example(template: Template) -> str:
    """A launch example using the template's first parameter with its default.

    A shardable template with a ``src`` parameter shows a sharded run over a declared input
    (``ocr src=<input name> shards=2``): ``src`` names an input, never a path.
    """
    if template.shardable and "src" in template.params:
        shards = " shards=2" if "shards" in template.params else ""
        return f"{template.name} src=<input name>{shards}"
    for spec in template.params.values():
        if spec.default is not None and not spec.free_text:
            return f"{template.name} {spec.name}={format_param(spec.default)}"
    return template.name


def inputs_line(config: BotConfig | None) -> str:
    """``Inputs: scans (Scanned invoices), ...``: the names ``src=`` takes, or how an operator
    declares one when there is none."""
    inputs = config.inputs if config is not None else {}
    if not inputs:
        return ("Inputs: none declared yet (an operator adds [inputs.<name>] with "
                'src = "s3://bucket/prefix/" or a folder to gpubot.toml)')
    return "Inputs: " + ", ".join(
        name + (f" ({i.description})" if i.description else "")
        for name, i in sorted(inputs.items())
    )


def _template_usage(template: Template, config: BotConfig | None = None) -> str:
    lines = [f"Usage: {PREFIX} {template.name} [<param>=<value> ...] [resource keys]"]
    if template.description:
        lines.append(template.description)
    if template.params:
        lines.append("Parameters:")
        for spec in template.params.values():
            help_ = f" - {spec.help}" if spec.help else ""
            lines.append(f"  {spec.describe()}{help_}")
    if template.shardable and "src" in template.params:
        lines.append(
            f"Sharded runs: {PREFIX} {template.name} src=<input name> shards=N "
            "(src names an input declared by the operator, never a path or a bucket)"
        )
        lines.append(inputs_line(config))
    lines.append("Resource keys:")
    lines.extend(f"  {key:<22} {desc}" for key, desc in RESOURCE_LINES)
    lines.append(f"Example: {PREFIX} {template_example(template)}")
    return "\n".join(lines)


def usage(verb: str | None, config: BotConfig) -> str:
    """The usage text for one verb (a built-in verb or a template name).

    ``None`` or an unknown verb gives the short list of every command.
    """
    if verb is not None and verb in config.templates:
        return _template_usage(config.templates[verb], config)
    if verb is not None and verb in _VERBS:
        synopsis, example, desc = _VERBS[verb]
        sentence = desc[0].upper() + desc[1:]
        text = f"Usage: {PREFIX} {synopsis}\n{sentence}.\nExample: {PREFIX} {example}"
        if verb in ("sweep", "rent"):
            text += "\nResource keys: " + " ".join(k for k, _ in RESOURCE_LINES)
        return text
    names = sorted(config.templates)
    return (
        f"Usage: {PREFIX} <command> [key=value ...]\n"
        f"Launch a template: {', '.join(names)}\n"
        f"Other commands: {', '.join(_BUILTIN_ORDER)}\n"
        f"Example: {PREFIX} train lr=2e-5   More: {PREFIX} help"
    )


def help_text(config: BotConfig) -> str:
    """The full help: every template and command with an example, and the resource keys."""
    lines = ["gpubot rents GPUs on vast.ai for you. Commands:", "", "Launch a job:"]
    for name in sorted(config.templates):
        tpl = config.templates[name]
        desc = f" - {tpl.description}" if tpl.description else ""
        lines.append(f"  {PREFIX} {template_example(tpl)}{desc}")
    lines.append("")
    for verb in _BUILTIN_ORDER:
        synopsis, example, desc = _VERBS[verb]
        lines.append(f"  {PREFIX} {synopsis}")
        lines.append(f"      {desc}; e.g. {PREFIX} {example}")
    if any(t.shardable and "src" in t.params for t in config.templates.values()):
        lines.append("")
        lines.append("Sharded runs read an input the operator declared (src=<input name>, "
                     "never a path or a bucket):")
        lines.append("  " + inputs_line(config))
    lines.append("")
    lines.append("Resource keys (any launch, sweep or rent):")
    lines.extend(f"  {key:<22} {desc}" for key, desc in RESOURCE_LINES)
    lines.append("")
    lines.append(
        "interruptible=auto rents interruptible (a bid, far cheaper) when the job is short or "
        "checkpoints, and on-demand for long jobs that cannot resume."
    )
    lines.append('Values with spaces go in quotes: gpu="RTX 4090".')
    lines.append(f"More: {PREFIX} help <command>")
    return "\n".join(lines)
