"""gpubot.toml loading: built-ins, merging, and errors that name the key and the line."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from gpubot.config import OnExceed, load_config, load_config_text
from gpubot.errors import ConfigError
from gpubot.models import InterruptibleMode, OfferRanking
from gpubot.templates import DEFAULT_EXCLUDE, ParamType, param_env, render_command
from gpubot.tomlcheck import key_lines


class TestBuiltins:
    def test_train_and_ocr_are_built_in(self) -> None:
        config = load_config(None)
        assert config.source is None
        train = config.templates["train"]
        assert train.params["lr"].type is ParamType.FLOAT
        assert train.params["lr"].default == 2e-5
        assert (train.params["steps"].min, train.params["steps"].max) == (10, 100000)
        assert train.resources.checkpoints is True
        assert train.resources.interruptible is InterruptibleMode.AUTO
        assert train.resources.min_cuda == 12.1
        assert train.target_metric == "eval_loss"
        assert train.workdir == "builtin:train"
        assert train.exclude == DEFAULT_EXCLUDE
        ocr = config.templates["ocr"]
        assert ocr.shardable is True
        assert ocr.resources.checkpoints is False
        assert ocr.resources.expected_hours == 0.5
        assert (ocr.params["shards"].min, ocr.params["shards"].max) == (1, 64)

    def test_policies_have_defaults(self) -> None:
        config = load_config(None)
        assert config.budgets.on_exceed is OnExceed.REFUSE
        assert isinstance(config.budgets.team_monthly_usd, Decimal)
        assert config.idle.window_minutes > 0
        assert config.engine.max_attempts >= 1
        assert config.roles.allowed_channels == ()

    def test_builtin_setup_is_offline(self) -> None:
        for tpl in load_config(None).templates.values():
            for cmd in tpl.setup:
                assert "pip install" not in cmd and "curl" not in cmd


class TestRendering:
    def test_placeholders_become_quoted_env_references(self) -> None:
        out = render_command(
            "python3 x.py --lr {GPUBOT_PARAM_LR} --out {GPUBOT_RESULTS_DIR} {{literal}}",
            {"GPUBOT_PARAM_LR", "GPUBOT_RESULTS_DIR"},
        )
        assert (
            out == 'python3 x.py --lr "${GPUBOT_PARAM_LR}" --out "${GPUBOT_RESULTS_DIR}" {literal}'
        )

    def test_unknown_placeholder_is_an_error(self) -> None:
        with pytest.raises(ValueError, match="unknown placeholder"):
            render_command("run {NOPE}", {"GPUBOT_JOB_ID"})

    def test_param_env_uses_defaults_and_never_the_command(self) -> None:
        train = load_config(None).templates["train"]
        env = param_env(train, {"lr": 1e-4, "steps": 20})
        assert env["GPUBOT_PARAM_LR"] == "0.0001"
        assert env["GPUBOT_PARAM_STEPS"] == "20"
        assert env["GPUBOT_PARAM_BATCH_SIZE"] == "32"


class TestUserConfig:
    def test_user_file_merges_over_builtins(self, tmp_path: Path) -> None:
        path = tmp_path / "gpubot.toml"
        path.write_text(
            """
[templates.train.params.steps]
default = 500

[templates.train.resources]
max_price_per_hour_usd = 0.5
ranking = "dlperf_per_usd"

[templates.mine]
description = "my job"
image = "nvidia/cuda:12.4.0-cudnn9-runtime-ubuntu22.04"
workdir = "jobs/mine"
setup = ["uv sync"]
run = "uv run main.py --seed {GPUBOT_PARAM_SEED} --ckpt {GPUBOT_CHECKPOINT_DIR}"

[templates.mine.params.seed]
type = "int"
default = 1

[budgets]
team_monthly_usd = "none"
on_exceed = "approval"

[engine]
blocked_host_ids = [1234, "99"]
"""
        )
        config = load_config(path)
        train = config.templates["train"]
        assert train.params["steps"].default == 500
        assert train.params["steps"].max == 100000  # kept from the built-in
        assert train.resources.max_price_per_hour_usd == Decimal("0.5")
        assert train.resources.ranking is OfferRanking.DLPERF_PER_USD
        mine = config.templates["mine"]
        assert mine.workdir == str(tmp_path.resolve() / "jobs" / "mine")
        assert mine.rendered_run() == (
            'uv run main.py --seed "${GPUBOT_PARAM_SEED}" --ckpt "${GPUBOT_CHECKPOINT_DIR}"'
        )
        assert config.budgets.team_monthly_usd is None
        assert config.budgets.on_exceed is OnExceed.APPROVAL
        assert config.engine.blocked_host_ids == frozenset({"1234", "99"})
        assert config.source == path

    def test_repo_replaces_builtin_workdir(self) -> None:
        config = load_config_text(
            '[templates.train]\nrepo = "https://github.com/x/y.git"\nref = "main"\n'
        )
        assert config.templates["train"].workdir is None
        assert config.templates["train"].repo == "https://github.com/x/y.git"

    def test_missing_file_is_a_config_error(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="cannot read"):
            load_config(tmp_path / "nope.toml")


BAD_CONFIGS: list[tuple[str, str, int, str]] = [
    # (toml, dotted key, line, message fragment)
    ("[budgets]\nteam_monthly_usd = 5\nbogus = 1\n", "budgets.bogus", 3, "unknown key"),
    ("[idle]\nwindow_minutes = -5\n", "idle.window_minutes", 2, ">= 1"),
    ('[roles]\nper_user_max_live_jobs = "four"\n', "roles.per_user_max_live_jobs", 2, "integer"),
    (
        "\n[templates.train.params.lr]\ndefault = 5.0\n",
        "templates.train.params.lr.default",
        3,
        "<= 1",
    ),
    (
        '[templates.train.resources]\ninterruptible = "sometimes"\n',
        "templates.train.resources.interruptible",
        2,
        "yes, no, auto",
    ),
    (
        "[templates.train.resources]\ngpus = 2\n",
        "templates.train.resources.gpus",
        2,
        "did you mean 'num_gpus'",
    ),
    (
        '[templates.x]\nimage = "a/b:1"\nworkdir = "d"\nrun = "go {NOPE}"\n',
        "templates.x.run",
        4,
        "unknown placeholder {NOPE}",
    ),
    (
        '[templates.x]\nimage = "a/b:1"\nrun = "go"\n',
        "templates.x.workdir",
        1,
        "needs a workdir or a repo",
    ),
    (
        '[templates.x]\nimage = "a/b:1"\nworkdir = "d"\nrepo = "https://h/r"\nrun = "go"\n',
        "templates.x.repo",
        4,
        "not both",
    ),
    (
        '[templates.sweep]\nimage = "a/b:1"\nworkdir = "d"\nrun = "go"\n',
        "templates.sweep",
        1,
        "built-in command",
    ),
    (
        '[templates.x]\nimage = "Bad Image"\nworkdir = "d"\nrun = "go"\n',
        "templates.x.image",
        2,
        "not a Docker image",
    ),
    (
        '[templates.x]\nimage = "a/b:1"\nworkdir = "d"\nrun = "go"\n'
        '[templates.x.params.gpu]\ntype = "int"\n',
        "templates.x.params.gpu",
        5,
        "resource key",
    ),
    (
        '[templates.x]\nimage = "a/b:1"\nworkdir = "d"\nrun = "go"\n'
        '[templates.x.params.mode]\ntype = "choice"\ndefault = "c"\nchoices = ["a", "b"]\n',
        "templates.x.params.mode.default",
        7,
        "not one of a, b",
    ),
    (
        '[templates.x]\nimage = "a/b:1"\nworkdir = "builtin:nope"\nrun = "go"\n',
        "templates.x.workdir",
        3,
        "unknown built-in job",
    ),
    ("[engine]\nmax_attempts = 0\n", "engine.max_attempts", 2, ">= 1"),
    ("[surprise]\nx = 1\n", "surprise", 1, "unknown key"),
    ('[budgets]\non_exceed = "shrug"\n', "budgets.on_exceed", 2, "refuse, approval"),
    (
        '[templates.train.resources]\nmax_price_per_hour_usd = "cheap"\n',
        "templates.train.resources.max_price_per_hour_usd",
        2,
        "amount in USD",
    ),
]


class TestErrors:
    @pytest.mark.parametrize(("text", "key", "line", "fragment"), BAD_CONFIGS)
    def test_error_names_key_and_line(self, text: str, key: str, line: int, fragment: str) -> None:
        with pytest.raises(ConfigError) as info:
            load_config_text(text)
        assert info.value.key == key
        assert info.value.line == line
        assert fragment in str(info.value)
        assert f"line {line}: {key}:" in str(info.value)

    def test_toml_syntax_error_keeps_line(self) -> None:
        with pytest.raises(ConfigError) as info:
            load_config_text("[budgets]\nteam_monthly_usd = = 5\n")
        assert info.value.line == 2


def test_key_lines_handles_dotted_keys_and_multiline_strings() -> None:
    text = '[a]\nx = """\ny = 1\n"""\nb.c = 2\n[d."e f"]\ng = 3\n'
    lines = key_lines(text)
    assert lines[("a", "x")] == 2
    assert ("a", "y") not in lines
    assert lines[("a", "b", "c")] == 5
    assert lines[("d", "e f", "g")] == 7


_DATA_TEMPLATE = (
    '[templates.d]\nimage = "python:3.11"\nworkdir = "builtin:train"\nrun = "true"\n'
    "[templates.d.data]\n"
)


class TestDataInputs:
    def test_s3_and_local_inputs_are_parsed_and_local_paths_resolved(
        self, tmp_path: Path
    ) -> None:
        text = _DATA_TEMPLATE + (
            'inputs = [\n  {src = "s3://my-bucket/x/y", dest = "data/"},\n'
            '  {src = "local/pdfs", dest = "."},\n]\n'
        )
        config = load_config_text(text, base_dir=tmp_path)
        data = config.templates["d"].data
        assert data[0].src == "s3://my-bucket/x/y" and data[0].dest == "data"
        assert data[0].is_s3 and data[0].s3_location() == ("my-bucket", "x/y/")
        assert data[1].src == str(tmp_path / "local/pdfs") and data[1].dest == "."
        assert not data[1].is_s3
        assert load_config(None).templates["train"].data == ()

    def test_array_of_tables_form_works_too(self) -> None:
        text = _DATA_TEMPLATE.replace("[templates.d.data]\n", "") + (
            '[[templates.d.data.inputs]]\nsrc = "s3://bkt-1/p/"\ndest = "in"\n'
        )
        assert load_config_text(text).templates["d"].data[0].dest == "in"

    @pytest.mark.parametrize(
        ("inputs", "key", "fragment"),
        [
            ('[{src = "s3://b/x", dest = "d"}]', "templates.d.data.inputs[0].src", "bucket"),
            ('[{src = "s3://bkt/../x", dest = "d"}]', "templates.d.data.inputs[0].src", ".."),
            ('[{src = "https://x/y", dest = "d"}]', "templates.d.data.inputs[0].src", "s3://"),
            ('[{src = "s3://bkt/x", dest = "../up"}]', "templates.d.data.inputs[0].dest", "'..'"),
            ('[{src = "s3://bkt/x", dest = "/abs"}]', "templates.d.data.inputs[0].dest",
             "relative"),
            ('[{src = "s3://bkt/x"}]', "templates.d.data.inputs[0].dest", "needs 'dest'"),
            ('[{src = "s3://bkt/x", dest = "d", size = 3}]', "templates.d.data.inputs[0].size",
             "unknown key"),
            ('[{src = "s3://bkt/x", dest = "d"}, {src = "s3://bkt/y", dest = "d"}]',
             "templates.d.data.inputs[1]", "already used"),
            ('"s3://bkt/x"', "templates.d.data.inputs", "must be a list"),
            ('["s3://bkt/x"]', "templates.d.data.inputs[0]", "must be a table"),
        ],
    )
    def test_bad_inputs_name_the_key_and_line(self, inputs: str, key: str, fragment: str) -> None:
        with pytest.raises(ConfigError) as info:
            load_config_text(_DATA_TEMPLATE + f"inputs = {inputs}\n")
        assert info.value.key == key
        assert info.value.line == 6
        assert fragment in str(info.value)

    def test_unknown_data_key_is_rejected(self) -> None:
        with pytest.raises(ConfigError) as info:
            load_config_text(_DATA_TEMPLATE + 'input = []\n')
        assert info.value.key == "templates.d.data.input"
        assert "did you mean 'inputs'" in str(info.value)

    def test_relative_local_folders_resolve_against_the_config_directory(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "gpubot.toml"
        path.write_text(_DATA_TEMPLATE + 'inputs = [{src = "x", dest = "d"}]\n')
        assert load_config(path).templates["d"].data[0].src == str(tmp_path / "x")


def test_internal_params_are_never_exported() -> None:
    train = load_config(None).templates["train"]
    env = param_env(train, {"lr": 1e-4, "_inputs": [{"src": "s3://b/p/"}]})  # type: ignore[dict-item]
    assert not any("INPUTS" in k for k in env)
    with pytest.raises(KeyError):
        param_env(train, {"nope": 1})


class TestNamedInputs:
    """``[inputs.<name>]``: the only data a user may name (``src=<name>``)."""

    def test_s3_and_local_inputs_are_declared_with_limits(self, tmp_path: Path) -> None:
        folder = tmp_path / "scans"
        config = load_config_text(
            '[inputs.scans]\nsrc = "s3://bkt-1/scans"\ndescription = "Scanned invoices"\n'
            "max_files = 500\nmax_total_gb = 2.5\n\n"
            f'[inputs.local-pdfs_2]\nsrc = "{folder}"\n',
            home=tmp_path / "home",
        )
        scans = config.inputs["scans"]
        assert (scans.src, scans.description, scans.max_files, scans.max_total_gb) == (
            "s3://bkt-1/scans/", "Scanned invoices", 500, 2.5
        )
        assert scans.is_s3 and scans.max_total_bytes == int(2.5 * 1024**3)
        local = config.inputs["local-pdfs_2"]
        assert local.src == str(folder) and not local.is_s3
        assert local.max_files > 0 and local.max_total_gb > 0
        assert load_config(None).inputs == {}

    @pytest.mark.parametrize(
        ("body", "key", "fragment"),
        [
            ('src = "relative/dir"', "inputs.x.src", "absolute"),
            ('src = "/data/../etc"', "inputs.x.src", "'..'"),
            ('src = "@HOME@"', "inputs.x.src", "GPUBOT_HOME"),
            ('src = "@HOME@/inbox"', "inputs.x.src", "GPUBOT_HOME"),
            ('src = "@PARENT@"', "inputs.x.src", "GPUBOT_HOME"),
            ('src = "/"', "inputs.x.src", "GPUBOT_HOME"),
            ('src = "https://example.com/x"', "inputs.x.src", "s3://"),
            ('src = "s3://B/x"', "inputs.x.src", "bucket"),
            ('src = "s3://bkt/../x"', "inputs.x.src", ".."),
            ('description = "no src"', "inputs.x.src", "needs src"),
            ('src = "s3://bkt/x"\nmax_files = 0', "inputs.x.max_files", ">= 1"),
            ('src = "s3://bkt/x"\nmax_total_gb = -1', "inputs.x.max_total_gb", ">="),
            ('src = "s3://bkt/x"\npath = "/etc"', "inputs.x.path", "unknown key"),
        ],
    )
    def test_bad_inputs_name_the_key_and_line(
        self, tmp_path: Path, body: str, key: str, fragment: str
    ) -> None:
        home = tmp_path / "home"
        text = "# inputs\n[inputs.x]\n" + body.replace("@HOME@", str(home)).replace(
            "@PARENT@", str(tmp_path)
        ) + "\n"
        with pytest.raises(ConfigError) as info:
            load_config_text(text, home=home)
        assert info.value.key == key
        assert info.value.line in (2, 3, 4)
        assert fragment in str(info.value)

    @pytest.mark.parametrize("name", ["Scans", "a/b", "a" * 33, "x.y"])
    def test_input_names_are_short_lowercase_words(self, name: str) -> None:
        with pytest.raises(ConfigError, match="input names"):
            load_config_text(f'[inputs."{name}"]\nsrc = "s3://bkt/x"\n')

    def test_home_defaults_to_the_environment(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("GPUBOT_HOME", str(tmp_path / "h"))
        with pytest.raises(ConfigError, match="GPUBOT_HOME"):
            load_config_text(f'[inputs.x]\nsrc = "{tmp_path / "h" / "sub"}"\n')
