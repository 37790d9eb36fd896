"""The command grammar: text -> typed Command, or CommandSyntaxError naming the problem."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpubot.commands import (
    AuditCommand,
    BudgetAction,
    BudgetCommand,
    BudgetScope,
    CancelCommand,
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
    StatusCommand,
    SweepCommand,
    help_text,
    parse_command,
    usage,
)
from gpubot.config import BotConfig, load_config, load_config_text
from gpubot.errors import CommandError, CommandSyntaxError
from gpubot.models import InterruptibleMode

CONFIG = load_config(None)


class TestLaunch:
    def test_train_with_one_param(self) -> None:
        cmd = parse_command("train lr=2e-5", CONFIG)
        assert cmd == LaunchCommand(template="train", params={"lr": 2e-5})
        assert cmd.resources.is_empty()

    def test_gpu_prefix_and_case_are_accepted(self) -> None:
        cmd = parse_command("/gpu TRAIN LR=2e-5 Steps=500", CONFIG)
        assert isinstance(cmd, LaunchCommand)
        assert cmd.params == {"lr": 2e-5, "steps": 500}
        assert isinstance(cmd.params["steps"], int)

    def test_quoted_values(self) -> None:
        cmd = parse_command(
            """ocr src="s3://bucket/my pdfs/" lang='deu' gpu="RTX 4090" """, CONFIG
        )
        assert isinstance(cmd, LaunchCommand)
        assert cmd.params == {"src": "s3://bucket/my pdfs/", "lang": "deu"}
        assert cmd.resources.gpu_names == ("RTX 4090",)

    def test_slack_smart_quotes_work_like_plain_quotes(self) -> None:
        cmd = parse_command("ocr src=\u201cmy folder\u201d", CONFIG)
        assert isinstance(cmd, LaunchCommand)
        assert cmd.params["src"] == "my folder"

    def test_units(self) -> None:
        cmd = parse_command(
            "train disk=50GB max_price=$0.40 budget=$5 hours=90m gpu_ram=24GB gpus=2 "
            "interruptible=no image=pytorch/pytorch:2.6.0-cuda12.4-cudnn9-devel",
            CONFIG,
        )
        assert isinstance(cmd, LaunchCommand)
        r = cmd.resources
        assert r.disk_gb == 50
        assert r.max_price_per_hour_usd == Decimal("0.40")
        assert r.budget_usd == Decimal("5")
        assert r.hours == pytest.approx(1.5)
        assert r.min_gpu_ram_gb == 24.0
        assert r.num_gpus == 2
        assert r.interruptible is InterruptibleMode.NO
        assert r.image == "pytorch/pytorch:2.6.0-cuda12.4-cudnn9-devel"

    @pytest.mark.parametrize(
        ("text", "field", "expected"),
        [
            ("train budget=5", "budget_usd", Decimal("5")),
            ("train max_price=0.4/h", "max_price_per_hour_usd", Decimal("0.4")),
            ("train hours=2h", "hours", 2.0),
            ("train hours=1h30m", "hours", 1.5),
            ("train hours=1.5", "hours", 1.5),
            ("train gpu_ram=24", "min_gpu_ram_gb", 24.0),
            ("train disk=1TB", "disk_gb", 1000),
            ("train disk=20.5", "disk_gb", 21),
            ("train gpu=4090", "gpu_names", ("RTX 4090",)),
            ("train gpu=rtx4090,rtx_3090", "gpu_names", ("RTX 4090", "RTX 3090")),
            ("train gpu=a100", "gpu_names", ("A100 PCIE", "A100 SXM4")),
            ("train gpu=h100", "gpu_names", ("H100 SXM", "H100 PCIE", "H100 NVL")),
            ("train interruptible=yes", "interruptible", InterruptibleMode.YES),
            ("train interruptible=AUTO", "interruptible", InterruptibleMode.AUTO),
        ],
    )
    def test_resource_units(self, text: str, field: str, expected: object) -> None:
        cmd = parse_command(text, CONFIG)
        assert isinstance(cmd, LaunchCommand)
        assert getattr(cmd.resources, field) == expected

    def test_user_template_is_a_verb(self, tmp_path: object) -> None:
        config = load_config_text(
            """
            [templates.finetune]
            image = "pytorch/pytorch:2.6.0-cuda12.4-cudnn9-devel"
            repo = "https://github.com/example/ft.git"
            run = "python3 ft.py --model {GPUBOT_PARAM_MODEL}"
            [templates.finetune.params.model]
            type = "choice"
            choices = ["bert-base", "roberta-large"]
            default = "bert-base"
            [templates.finetune.params.notes]
            type = "str"
            free_text = true
            """
        )
        cmd = parse_command('finetune model=ROBERTA-LARGE notes="a; b | c"', config)
        assert cmd == LaunchCommand(
            template="finetune", params={"model": "roberta-large", "notes": "a; b | c"}
        )


class TestSweep:
    def test_sweep_axes_and_fixed_params(self) -> None:
        cmd = parse_command("sweep train lr=1e-5,2e-5,5e-5 steps=200 gpu=4090", CONFIG)
        assert isinstance(cmd, SweepCommand)
        assert cmd.template == "train"
        assert cmd.axes == {"lr": [1e-5, 2e-5, 5e-5]}
        assert cmd.params == {"steps": 200}
        assert cmd.resources.gpu_names == ("RTX 4090",)

    def test_combinations_are_the_product(self) -> None:
        cmd = parse_command("sweep train lr=1e-5,2e-5 batch_size=16,32,64", CONFIG)
        assert isinstance(cmd, SweepCommand)
        runs = cmd.combinations()
        assert len(runs) == 6
        assert {"lr": 1e-5, "batch_size": 64} in runs


class TestOtherVerbs:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("", HelpCommand()),
            ("/gpu", HelpCommand()),
            ("help", HelpCommand()),
            ("help train", HelpCommand(topic="train")),
            ("help sweep", HelpCommand(topic="sweep")),
            ("rent gpu=4090 hours=2h", None),
            ("offers gpu=3090 max_price=$0.2 limit=5", None),
            ("status", StatusCommand()),
            ("status j-3f9a1c2e", StatusCommand(job_id="j-3f9a1c2e")),
            ("status J-3F9A1C2E", StatusCommand(job_id="j-3f9a1c2e")),
            ("jobs", JobsCommand()),
            ("jobs all", JobsCommand(include_finished=True)),
            ("logs j-3f9a1c2e", LogsCommand(job_id="j-3f9a1c2e", lines=50)),
            ("logs j-3f9a1c2e lines=200", LogsCommand(job_id="j-3f9a1c2e", lines=200)),
            ("logs j-3f9a1c2e 10", LogsCommand(job_id="j-3f9a1c2e", lines=10)),
            ("cancel j-abcdefgh", CancelCommand(job_id="j-abcdefgh")),
            ("keep j-3f9a1c2e", KeepCommand(job_id="j-3f9a1c2e", hours=1.0)),
            ("keep j-3f9a1c2e 2h", KeepCommand(job_id="j-3f9a1c2e", hours=2.0)),
            ("keep j-3f9a1c2e hours=30m", KeepCommand(job_id="j-3f9a1c2e", hours=0.5)),
            ("budget", BudgetCommand()),
            ("budget show team", BudgetCommand(scope=BudgetScope.TEAM)),
            (
                "budget set user=<@U012ABCDEF|ana> amount=$50",
                BudgetCommand(
                    action=BudgetAction.SET,
                    scope=BudgetScope.USER,
                    target="U012ABCDEF",
                    amount_usd=Decimal(50),
                ),
            ),
            (
                "budget set channel=<#C0123ABC|ml> 200",
                BudgetCommand(
                    action=BudgetAction.SET,
                    scope=BudgetScope.CHANNEL,
                    target="C0123ABC",
                    amount_usd=Decimal(200),
                ),
            ),
            ("cost", CostCommand()),
            ("cost today", CostCommand(period=Period.TODAY)),
            ("cost week by=user", CostCommand(period=Period.WEEK, group_by=CostGroup.USER)),
            ("audit", AuditCommand()),
            ("audit 5", AuditCommand(limit=5)),
            ("audit limit=50", AuditCommand(limit=50)),
        ],
    )
    def test_parses(self, text: str, expected: object) -> None:
        cmd = parse_command(text, CONFIG)
        if expected is not None:
            assert cmd == expected
        else:
            assert isinstance(cmd, RentCommand | OffersCommand)

    def test_rent_hours(self) -> None:
        cmd = parse_command("rent gpu=4090 hours=2h", CONFIG)
        assert isinstance(cmd, RentCommand)
        assert cmd.hours == 2.0
        assert cmd.resources.gpu_names == ("RTX 4090",)

    def test_offers_filters(self) -> None:
        cmd = parse_command("offers gpu=3090 max_price=$0.2 limit=5", CONFIG)
        assert isinstance(cmd, OffersCommand)
        assert cmd.limit == 5
        assert cmd.filters.max_price_per_hour_usd == Decimal("0.2")


MALFORMED: list[tuple[str, str]] = [
    # (input, a fragment the message must contain)
    ("trian lr=2e-5", "unknown command 'trian'"),
    ("train lrr=2e-5", "unknown key 'lrr'"),
    ("train lr=abc", "'abc' is not a number"),
    ("train lr=5", "out of range"),
    ("train steps=5", "out of range"),
    ("train steps=1.5", "not a whole number"),
    ("train lr=1e-5 lr=2e-5", "lr= is given twice"),
    ("train lr=1e-5,2e-5", "only allowed in sweep"),
    ("train lr=$(reboot)", "shell metacharacters"),
    ("train lr=1e-5;rm", "contains ';'"),
    ("ocr src=`id`", "contains '`'"),
    ("ocr src=a|b", "contains '|'"),
    ("ocr src=a&b", "contains '&'"),
    ("ocr src=a>b", "contains '>'"),
    ("ocr src=a<b", "contains '<'"),
    ("train lr=1e-5\nrm -rf /", "line breaks"),
    ("train lr=1e-5\x00", "U+0000"),
    ("train lr=2e-5\u200b", "U+200B"),
    ("tr\u0430in lr=2e-5", "CYRILLIC"),
    ("train \u0430lr=2e-5", "non-ASCII character U+0430"),
    ('train lr="2e-5', "unclosed"),
    ("train lr=", "lr= needs a value"),
    ("train =5", "no key"),
    ("train 2e-5", "key=value"),
    ("train gpu=rtx9999", "unknown GPU 'rtx9999'"),
    ("train gpus=0", "out of range"),
    ("train disk=5PB", "not a size in GB"),
    ("train max_price=-1", "not an amount"),
    ("train max_price=$0", "out of range"),
    ("train budget=$$5", "not an amount"),
    ("train hours=0", "out of range"),
    ("train hours=forever", "not a duration"),
    ("train interruptible=maybe", "yes, no or auto"),
    ("train image=Bad Image", "unexpected"),
    ("train image=UPPER/case", "not a Docker image"),
    ("train lr=nan", "not a number"),
    ("train lr=1e999", "out of range"),
    ("sweep train lr=1e-5", "at least one parameter with several values"),
    ("sweep trian lr=1e-5,2e-5", "unknown template 'trian'"),
    ("sweep train lr=1e-5,1e-5", "twice"),
    ("sweep train lr=1e-5,,2e-5", "empty item"),
    ("sweep", "needs a template"),
    ("logs j-xyz", "'j-xyz' is not a job id"),
    ("logs", "needs a job id"),
    ("cancel 12345", "not a job id"),
    ("keep j-3f9a1c2e 48h", "out of range"),
    ("status j-3f9a1c2e j-3f9a1c2f", "unexpected"),
    ("budget set amount=5", "needs a scope"),
    ("budget set team", "needs an amount"),
    ("budget show amount=5", "only makes sense with budget set"),
    ("budget set user=ana amount=5", "is not a Slack user"),
    ("cost yearly", "must be one of today, week, month"),
    ("audit limit=100000", "out of range"),
    ("help nosuch", "no help for 'nosuch'"),
    ("offers budget=5", "unknown key 'budget' for offers"),
    ("lr=2e-5", "start with a command"),
    ("train " + "x" * 2000, "the limit is 2000"),
    ("ocr src=" + "a" * 300, "longer than 256"),
]


class TestMalformed:
    @pytest.mark.parametrize(("text", "fragment"), MALFORMED)
    def test_rejected_with_a_clear_message(self, text: str, fragment: str) -> None:
        with pytest.raises(CommandSyntaxError) as info:
            parse_command(text, CONFIG)
        assert fragment in str(info.value)
        assert info.value.usage, "every error carries a usage text"

    def test_error_names_the_token_and_verb_usage(self) -> None:
        with pytest.raises(CommandSyntaxError) as info:
            parse_command("train lrr=2e-5", CONFIG)
        assert info.value.token == "lrr=2e-5"
        assert "did you mean lr" in info.value.user_message
        assert info.value.usage.startswith("Usage: /gpu train")
        assert "lr float" in info.value.usage

    def test_unknown_verb_gets_general_usage(self) -> None:
        with pytest.raises(CommandSyntaxError) as info:
            parse_command("frobnicate", CONFIG)
        assert "Other commands:" in info.value.usage


class TestUsage:
    def test_help_lists_every_command_with_an_example(self) -> None:
        text = help_text(CONFIG)
        for verb in (
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
        ):
            assert f"/gpu {verb}" in text
        assert "/gpu train lr=" in text
        assert "/gpu ocr" in text
        assert "max_price=" in text

    @pytest.mark.parametrize("verb", [None, "train", "ocr", "sweep", "logs", "nosuch"])
    def test_usage_is_non_empty(self, verb: str | None) -> None:
        assert usage(verb, CONFIG).startswith("Usage: /gpu")


_TEXT = st.one_of(
    st.text(max_size=120),
    st.lists(
        st.sampled_from(
            [
                "train",
                "sweep",
                "ocr",
                "rent",
                "offers",
                "logs",
                "keep",
                "budget",
                "set",
                "cost",
                "audit",
                "help",
                "status",
                "j-3f9a1c2e",
                "lr=",
                "=",
                ",",
                '"',
                "'",
                "gpu=",
                "4090",
                "$",
                "1e-5",
                "hours=",
                "2h",
                "disk=",
                "GB",
                " ",
                "\u0430",
                "user=",
                "<@U123>",
                "amount=",
                "1e999",
                "-",
                "\u200b",
                "\t",
                "\u00a0",
            ]
        ),
        max_size=12,
    ).map("".join),
)


@settings(max_examples=400, deadline=None)
@given(_TEXT)
def test_random_text_only_raises_command_errors(text: str) -> None:
    try:
        parse_command(text, CONFIG)
    except CommandError:
        pass


def test_config_type_is_used() -> None:
    assert isinstance(CONFIG, BotConfig)
