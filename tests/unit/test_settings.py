from __future__ import annotations

import os
from pathlib import Path

import pytest

from tillstream.cli import main
from tillstream.settings import ConfigError, load_settings


@pytest.fixture(autouse=True)
def no_tillstream_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("TILLSTREAM_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tillstream.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_run_embedded_under_the_data_directory(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    assert settings.embedded_broker
    assert settings.clickhouse_url == f"chdb://{(tmp_path / 'clickhouse').resolve()}"
    assert settings.watch.inbox == Path("inbox") and settings.watch.archive == Path("archive")


def test_environment_beats_the_file_which_beats_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write(tmp_path, "kafka:\n  partitions: 8\n  client_id: from-file\n")
    monkeypatch.setenv("TILLSTREAM_KAFKA__CLIENT_ID", "from-env")
    settings = load_settings(config)
    assert settings.kafka.partitions == 8
    assert settings.kafka.client_id == "from-env"
    assert settings.sink.batch_rows == 100_000


def test_rule_tables_in_the_file_extend_the_defaults(tmp_path: Path) -> None:
    config = write(tmp_path, "cleaning:\n  region_aliases:\n    nrth: North\n")
    rules = load_settings(config).cleaning
    assert rules.region_aliases["nrth"] == "North"
    assert rules.region_aliases["sout"] == "South"


def test_secrets_never_print(tmp_path: Path) -> None:
    config = write(tmp_path, "clickhouse:\n  password: hunter2\n")
    settings = load_settings(config)
    assert settings.clickhouse.password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kafka:\n  partitions: 0\n", "invalid setting kafka.partitions:"),
        ("clickhouse:\n  url: ftp://x\n", "invalid setting clickhouse.url:"),
        ("kafak:\n  partitions: 2\n", "invalid setting kafak:"),
        ("watch:\n  stable_seconds: -1\n", "invalid setting watch.stable_seconds:"),
        ("cleaning:\n  date_formats: ['%Q']\n", "invalid setting cleaning.date_formats:"),
        ("- just\n- a list\n", "must be a mapping of settings"),
        ("kafka: [unclosed\n", "is not valid YAML"),
    ],
)
def test_bad_configuration_is_one_line_naming_the_setting(
    tmp_path: Path, text: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text))
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")


def test_the_command_reports_bad_configuration_in_one_line_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path, "metrics:\n  port: 70000\n")
    assert main(["--config", str(config), "up"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("tillstream: error: invalid setting metrics.port:")
    assert error.count("\n") == 1


def test_separate_components_need_an_external_broker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path, f"data_dir: {tmp_path / 'data'}\n")
    assert main(["--config", str(config), "worker"]) == 2
    assert "kafka.bootstrap_servers" in capsys.readouterr().err


def test_secrets_come_from_files_and_print_masked(tmp_path: Path) -> None:
    (tmp_path / "kafka").write_text("k-9f2e71\n", encoding="utf-8")
    (tmp_path / "clickhouse").write_text("c-41ab0d", encoding="utf-8")
    settings = load_settings(
        kafka={
            "security_protocol": "SASL_SSL",
            "sasl_username": "app",
            "sasl_password_file": str(tmp_path / "kafka"),
        },
        clickhouse={"password_file": str(tmp_path / "clickhouse")},
    )
    assert settings.kafka.sasl_password.get_secret_value() == "k-9f2e71"
    assert settings.clickhouse.password.get_secret_value() == "c-41ab0d"
    shown = repr(settings) + str(settings)
    assert "k-9f2e71" not in shown and "c-41ab0d" not in shown


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"kafka": {"security_protocol": "SASL_PLAINTEXT"}},
            "invalid setting kafka: Value error, sasl_username is required with SASL_PLAINTEXT",
        ),
        (
            {"kafka": {"sasl_mechanism": "GSSAPI"}},
            "invalid setting kafka.sasl_mechanism: Input should be 'PLAIN', 'SCRAM-SHA-256' or "
            "'SCRAM-SHA-512'",
        ),
        (
            {"clickhouse": {"password_file": "/no/such/file"}},
            "invalid setting clickhouse: Value error, cannot read /no/such/file: No such file "
            "or directory",
        ),
    ],
)
def test_a_bad_security_setting_is_one_line(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(**overrides)
    assert str(caught.value) == message


def test_the_embedded_broker_refuses_sasl_in_one_line(tmp_path: Path) -> None:
    from tillstream.runtime import ALL_COMPONENTS, Runtime

    settings = load_settings(
        data_dir=tmp_path,
        kafka={"security_protocol": "SASL_SSL", "sasl_username": "app"},
    )
    with pytest.raises(ConfigError, match="the embedded broker speaks PLAINTEXT only"):
        Runtime(settings, ALL_COMPONENTS)
