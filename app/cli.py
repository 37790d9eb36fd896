"""The ``gpubot`` command line: demo, sim, serve, worker, beat, chat, db upgrade, config check.

Console script ``gpubot = "app.cli:main"``. Each subcommand imports its wiring only when it
runs, so ``gpubot --help`` and ``gpubot config check`` load neither Slack nor Celery.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gpubot import __version__
from gpubot.errors import ConfigError, GpubotError
from gpubot.sim.settings import PROFILES as SIM_PROFILES


def _cmd_config_check(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from gpubot.config import load_config
    from gpubot.settings import Settings, describe_settings

    try:
        settings = Settings()
    except ValidationError as exc:
        for err in exc.errors():
            loc = ".".join(str(part) for part in err["loc"])
            print(f"error: setting {loc}: {err['msg']}", file=sys.stderr)
        return 1
    print("Settings (value, source):")
    for name, shown, source in describe_settings(settings):
        print(f"  {name:<24} {shown}  [{source}]")
    path = settings.effective_config_path
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"error: {path}: {exc}", file=sys.stderr)
        return 1
    print(f"\nConfig: {path if path else '(built-in templates only)'}")
    print(f"  templates: {', '.join(sorted(config.templates))}")
    budgets = config.budgets
    print(
        f"  budgets: team {budgets.team_monthly_usd}/month, user {budgets.user_monthly_usd}, "
        f"channel {budgets.channel_monthly_usd}, job default {budgets.job_default_usd}, "
        f"on exceed: {budgets.on_exceed.value}"
    )
    idle = config.idle
    print(
        f"  idle: GPU <= {idle.gpu_util_threshold_pct}% for {idle.window_minutes} min, "
        f"grace {idle.grace_minutes} min, stuck after {idle.stuck_window_minutes} min"
    )
    print(f"  admins: {', '.join(config.roles.admins) or '(none)'}")
    print(f"  ops channel: {config.ops.channel or '(none: escalations are logged only)'}")
    return 0


def _cmd_db_upgrade(args: argparse.Namespace) -> int:
    from gpubot.db.engine import upgrade_to_head
    from gpubot.redact import redact
    from gpubot.settings import Settings

    settings = Settings()
    if settings.database_url is None:
        settings.ensure_home()
    upgrade_to_head(settings.effective_database_url)
    print(f"database at head: {redact(_hide_password(settings.effective_database_url))}")
    return 0


def _hide_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - display only
        return "(database url)"


def _cmd_sim(args: argparse.Namespace) -> int:
    from gpubot.sim.server import main as sim_main

    argv: list[str] = ["--port", str(args.port), "--seed", str(args.seed)]
    argv += ["--speed", str(args.speed)]
    if args.profile:
        argv += ["--profile", args.profile]
    if args.home:
        argv += ["--home", args.home]
    if args.api_key:
        argv += ["--api-key", args.api_key]
    return sim_main(argv)


def _cmd_serve(args: argparse.Namespace) -> int:
    from app.serve import main as serve_main

    return serve_main()


def _cmd_worker(args: argparse.Namespace) -> int:
    from app.worker import run_worker

    if args.queues is None:
        return run_worker(loglevel=args.loglevel, concurrency=args.concurrency)
    queues = tuple(q.strip() for q in args.queues.split(",") if q.strip())
    try:
        return run_worker(loglevel=args.loglevel, concurrency=args.concurrency, queues=queues)
    except ValueError as e:
        print(f"gpubot worker: {e}", file=sys.stderr)
        return 2


def _cmd_beat(args: argparse.Namespace) -> int:
    from app.worker import run_beat

    return run_beat(loglevel=args.loglevel)


def _cmd_chat(args: argparse.Namespace) -> int:
    from app.chat import main as chat_main

    return chat_main(
        " ".join(args.text), user=args.user, channel=args.channel, follow=not args.no_follow
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    from app.demo import run_demo

    return run_demo(interactive=args.interactive, keep_home=args.home)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpubot",
        description="Rent vast.ai GPUs from Slack without wasting money.",
    )
    parser.add_argument("--version", action="version", version=f"gpubot {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo", help="the whole flow on embedded defaults (simulator, worker, beat, chat)"
    )
    demo.add_argument("--interactive", action="store_true", help="keep a prompt open afterwards")
    demo.add_argument("--home", default=None, help="state dir to use (default: a temp dir)")
    demo.set_defaults(func=_cmd_demo)

    sim = sub.add_parser("sim", help="the vast.ai-compatible simulator server")
    sim.add_argument("--port", type=int, default=8642)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--speed", type=float, default=1.0)
    sim.add_argument("--home", default=None)
    sim.add_argument("--api-key", default=None)
    sim.add_argument(
        "--profile",
        choices=sorted(SIM_PROFILES),
        default=None,
        help="fidelity profile: default, or realistic (every vast.ai quirk on)",
    )
    sim.set_defaults(func=_cmd_sim)

    serve = sub.add_parser(
        "serve", help="the Slack app (Socket Mode with SLACK_APP_TOKEN, else HTTP on $PORT)"
    )
    serve.set_defaults(func=_cmd_serve)

    worker = sub.add_parser("worker", help="a Celery worker with the project's app")
    worker.add_argument("--loglevel", default="INFO")
    worker.add_argument("--concurrency", type=int, default=4)
    worker.add_argument(
        "--queues",
        default=None,
        help="comma-separated queues to consume (default: all: celery = ticks and steps, "
        "answers = replies to Slack commands and clicks)",
    )
    worker.set_defaults(func=_cmd_worker)

    beat = sub.add_parser("beat", help="Celery beat (run exactly one)")
    beat.add_argument("--loglevel", default="INFO")
    beat.set_defaults(func=_cmd_beat)

    chat = sub.add_parser("chat", help='run a command from the terminal: gpubot chat "/gpu jobs"')
    chat.add_argument("text", nargs="+", help='the command, e.g. "/gpu train lr=2e-5"')
    chat.add_argument("--no-follow", action="store_true", help="do not follow the job's thread")
    chat.add_argument(
        "--user",
        default="console",
        help="act as this Slack user id (any id, admins' too: an operator's tool; see "
        "docs/security.md)",
    )
    chat.add_argument("--channel", default="console")
    chat.set_defaults(func=_cmd_chat)

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION")
    upgrade = db_sub.add_parser("upgrade", help="Alembic migrations to head")
    upgrade.set_defaults(func=_cmd_db_upgrade)

    config = sub.add_parser("config", help="configuration")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION")
    check = config_sub.add_parser(
        "check", help="validate gpubot.toml and settings; print what is used and from where"
    )
    check.set_defaults(func=_cmd_config_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args))
    except GpubotError as exc:
        from gpubot.redact import redact

        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
