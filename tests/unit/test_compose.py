"""The distributed deployment's files agree with each other and with the code.

Nothing here needs Docker: docker-compose.yml, the Dockerfile and the Prometheus,
ClickHouse and Grafana files are read as data, and every name one of them gives
(a service, a port, a user, a path, a setting) must be one that another defines.
A typo in any of them would otherwise surface only on a real `docker compose up`.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import tomllib
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import BaseModel, SecretStr

from tillstream.settings import MetricsConfig, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

TILLSTREAM_SERVICES = ("watch", "poll", "worker", "sink")
SCALABLE_SERVICES = ("worker",)
SINGLE_SERVICES = ("watch", "poll", "sink")
"""One process each: a second watcher would read the same files, a second poller pull
the same runs, and several sinks have not been tested."""
RUNTIME_FOLDERS = ("inbox", "archive", "failed")
"""Host folders of `watch` that hold the user's files, not the repository's."""

# Ports the servers listen on inside the network. Neither image's port is changed
# by docker-compose.yml (test_third_party_ports_are_the_defaults checks that).
CLICKHOUSE_HTTP_PORT = 8123
PROMETHEUS_PORT = 9090
CLICKHOUSE_PLUGIN = "grafana-clickhouse-datasource"

ENV_PREFIX = str(Settings.model_config.get("env_prefix"))
ENV_DELIMITER = str(Settings.model_config.get("env_nested_delimiter"))

_VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_]\w*))")


def interpolate(value: str, env: Mapping[str, str], *, strict: bool = False) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR-default}` and `$$`.

    strict: a variable without a default that `env` lacks is an error, as it makes
    the deployment depend on an .env file nobody has.
    """

    def replace(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        expression = match.group("braced") or match.group("named")
        for separator, use_default_if_empty in ((":-", True), ("-", False)):
            if separator in expression:
                name, default = expression.split(separator, 1)
                found = env.get(name)
                if found is None or (use_default_if_empty and not found):
                    return default
                return found
        if not re.fullmatch(r"[A-Za-z_]\w*", expression):
            raise ValueError(f"unsupported interpolation ${{{expression}}}")
        if expression not in env and strict:
            raise KeyError(f"${{{expression}}} has no default")
        return env.get(expression, "")

    return _VARIABLE.sub(replace, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return data


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = compose["services"][name]
    return found


def service_env(compose: dict[str, Any], name: str) -> dict[str, str]:
    """A service's environment as its container sees it, from a shell without .env."""
    environment = service(compose, name).get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {key: interpolate(str(value), {}) for key, value in environment.items()}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, arguments = line.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def image_env() -> dict[str, str]:
    """ENV of the image the services run."""
    env: dict[str, str] = {}
    for keyword, arguments in final_stage():
        if keyword == "ENV":
            for pair in arguments.split():
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def container_env(compose: dict[str, Any], name: str) -> dict[str, str]:
    """What a tillstream container starts with: the image's ENV, then compose's."""
    return {**image_env(), **service_env(compose, name)}


def settings_from(env: Mapping[str, str]) -> Settings:
    """Load settings from exactly these TILLSTREAM_ variables, whatever the shell has."""
    with pytest.MonkeyPatch.context() as patch:
        for key in list(os.environ):
            if key.upper().startswith(ENV_PREFIX):
                patch.delenv(key)
        for key, value in env.items():
            if key.startswith(ENV_PREFIX):
                patch.setenv(key, value)
        return load_settings()


def bind_mounts(compose: dict[str, Any], name: str) -> Iterator[tuple[str, str]]:
    """(host path relative to the repository, container path) of a service's binds."""
    for volume in service(compose, name).get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                yield str(volume["source"]), str(volume["target"])
            continue
        source, target = str(volume).split(":")[:2]
        if source.startswith((".", "/")):
            yield source, target


def named_volumes(compose: dict[str, Any], name: str) -> dict[str, str]:
    """Container path -> named volume."""
    mounts: dict[str, str] = {}
    for volume in service(compose, name).get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "volume":
                mounts[str(volume["target"])] = str(volume["source"])
            continue
        source, target = str(volume).split(":")[:2]
        if not source.startswith((".", "/")):
            mounts[target] = source
    return mounts


def host_path(source: str) -> Path:
    return (ROOT / source).resolve()


def mounted_from(compose: dict[str, Any], name: str, target: str) -> Path:
    """The repository path bind-mounted at `target` in a service."""
    for source, mounted_at in bind_mounts(compose, name):
        if mounted_at.rstrip("/") == target.rstrip("/"):
            return host_path(source)
    raise AssertionError(f"{name} mounts nothing at {target}")


def host_and_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def kafka_listeners(compose: dict[str, Any]) -> tuple[dict[str, int], dict[str, tuple[str, int]]]:
    """Listener name -> bound port, and listener name -> advertised (host, port)."""
    env = service_env(compose, "kafka")

    def parse(spec: str) -> dict[str, tuple[str, int]]:
        listeners = {}
        for entry in spec.split(","):
            name, _, address = entry.partition("://")
            listeners[name] = host_and_port(address)
        return listeners

    bound = {name: port for name, (_, port) in parse(env["KAFKA_LISTENERS"]).items()}
    return bound, parse(env["KAFKA_ADVERTISED_LISTENERS"])


def listening_port(compose: dict[str, Any], name: str) -> int:
    """The port a service answers on inside the network, for what the others name."""
    if name in TILLSTREAM_SERVICES:
        return settings_from(container_env(compose, name)).metrics.port
    if name == "prometheus":
        return PROMETHEUS_PORT
    if name == "clickhouse":
        return CLICKHOUSE_HTTP_PORT
    raise AssertionError(f"no known listening port for service {name}")


def prometheus_config(compose: dict[str, Any]) -> dict[str, Any]:
    flags = dict(
        flag.split("=", 1) for flag in service(compose, "prometheus")["command"] if "=" in flag
    )
    path = mounted_from(compose, "prometheus", flags["--config.file"])
    config: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return config


def grafana_datasources(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    folder = mounted_from(compose, "grafana", "/etc/grafana/provisioning/datasources")
    sources: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.y*ml")):
        for datasource in yaml.safe_load(path.read_text(encoding="utf-8"))["datasources"]:
            sources[datasource["uid"]] = datasource
    return sources


def clickhouse_users(compose: dict[str, Any]) -> ET.Element:
    for source, target in bind_mounts(compose, "clickhouse"):
        if target.startswith("/etc/clickhouse-server/users.d/"):
            return ET.parse(host_path(source)).getroot()  # noqa: S314 - our own file
    raise AssertionError("clickhouse mounts no file into /etc/clickhouse-server/users.d/")


def is_git_ignored(folder: str) -> bool:
    if shutil.which("git") is None:
        pytest.skip("git is not installed: cannot tell whether runtime folders are ignored")
    probe = f"{folder}/probe.csv"
    result = subprocess.run(
        ["git", "check-ignore", "-q", probe], cwd=ROOT, capture_output=True, check=False
    )
    return result.returncode == 0


# --- services and their wiring ---------------------------------------------------


def test_every_service_of_the_design_is_defined(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) >= {
        "kafka",
        "clickhouse",
        "prometheus",
        "grafana",
        *TILLSTREAM_SERVICES,
    }


def test_tillstream_services_are_built_from_the_dockerfile(compose: dict[str, Any]) -> None:
    built = {name for name, spec in compose["services"].items() if "build" in spec}
    assert built == set(TILLSTREAM_SERVICES)
    for name in TILLSTREAM_SERVICES:
        build = service(compose, name)["build"]
        context = build if isinstance(build, str) else build["context"]
        dockerfile = (
            "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        )
        assert host_path(context) / dockerfile == DOCKERFILE
        assert service(compose, name)["command"] == [name]


def test_every_compose_variable_has_a_default(compose: dict[str, Any]) -> None:
    """`docker compose up` must work in a clean checkout, without an .env file."""

    def strings(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for value in node.values():
                yield from strings(value)
        elif isinstance(node, list):
            for value in node:
                yield from strings(value)
        elif isinstance(node, str):
            yield node

    for text in strings(compose):
        interpolate(text, {}, strict=True)


def test_bind_mounted_repository_paths_exist(compose: dict[str, Any]) -> None:
    checked = 0
    for name in compose["services"]:
        for source, _ in bind_mounts(compose, name):
            if host_path(source).relative_to(ROOT).as_posix() in RUNTIME_FOLDERS:
                continue
            assert host_path(source).exists(), f"{name} mounts {source}, which does not exist"
            checked += 1
    assert checked >= 5


@pytest.mark.parametrize("folder", RUNTIME_FOLDERS)
def test_runtime_folders_are_mounted_and_kept_out_of_git(
    compose: dict[str, Any], folder: str
) -> None:
    sources = {host_path(source) for source, _ in bind_mounts(compose, "watch")}
    assert ROOT / folder in sources
    # Not `is_dir()`: a folder made by a local run must not hide a clean clone's state.
    assert is_git_ignored(folder), (
        f"./{folder} is bind-mounted into watch and fills with user files: "
        f"list /{folder}/ in .gitignore"
    )


def test_depends_on_names_services_that_can_become_healthy(compose: dict[str, Any]) -> None:
    image_has_healthcheck = any(keyword == "HEALTHCHECK" for keyword, _ in final_stage())

    def has_healthcheck(name: str) -> bool:
        spec = service(compose, name)
        if "healthcheck" in spec:
            return not spec["healthcheck"].get("disable", False)
        return "build" in spec and image_has_healthcheck

    for name, spec in compose["services"].items():
        depends_on = spec.get("depends_on", {})
        if isinstance(depends_on, list):
            depends_on = {dependency: {} for dependency in depends_on}
        for dependency, condition in depends_on.items():
            assert dependency in compose["services"], f"{name} depends on unknown {dependency}"
            if condition.get("condition") == "service_healthy":
                assert has_healthcheck(dependency), f"{name} waits for {dependency} to be healthy"


def test_tillstream_services_wait_for_what_they_use(compose: dict[str, Any]) -> None:
    for name in TILLSTREAM_SERVICES:
        settings = settings_from(container_env(compose, name))
        needs = {"kafka"} | ({"clickhouse"} if settings.clickhouse.url else set())
        depends_on = service(compose, name)["depends_on"]
        for dependency in needs:
            assert depends_on[dependency]["condition"] == "service_healthy", (name, dependency)


def test_worker_can_be_scaled(compose: dict[str, Any]) -> None:
    for name in SCALABLE_SERVICES:
        spec = service(compose, name)
        for fixed in ("container_name", "hostname", "ports"):
            assert fixed not in spec, f"{name} has {fixed}, which `--scale {name}=N` breaks"
        partitions = settings_from(container_env(compose, name)).kafka.partitions
        assert 1 <= spec.get("deploy", {}).get("replicas", 1) <= partitions


def test_single_process_services_are_not_replicated(compose: dict[str, Any]) -> None:
    for name in SINGLE_SERVICES:
        assert service(compose, name).get("deploy", {}).get("replicas", 1) == 1, name


def test_poller_state_survives_a_new_container(compose: dict[str, Any]) -> None:
    """Cursors live in <data_dir>/pollers/: without a volume, a recreated container
    would pull everything again from `cursor.initial`."""
    data_dir = settings_from(container_env(compose, "poll")).data_dir
    volume = named_volumes(compose, "poll").get(str(data_dir))
    assert volume is not None, f"poll keeps its data_dir {data_dir} in no named volume"
    assert volume in set(compose.get("volumes") or {})


def test_data_of_each_server_lives_in_a_named_volume(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    kafka_dir = service_env(compose, "kafka")["KAFKA_LOG_DIRS"]
    prometheus_flags = dict(
        flag.split("=", 1) for flag in service(compose, "prometheus")["command"] if "=" in flag
    )
    data_dirs = {
        "kafka": kafka_dir,
        "clickhouse": "/var/lib/clickhouse",
        "prometheus": prometheus_flags["--storage.tsdb.path"],
        "grafana": "/var/lib/grafana",
    }
    for name, path in data_dirs.items():
        volume = named_volumes(compose, name).get(path)
        assert volume is not None, f"{name} keeps {path} in no named volume"
        assert volume in declared


def test_third_party_ports_are_the_defaults(compose: dict[str, Any]) -> None:
    """The constants this file compares against hold because nothing changes them."""
    assert not any(
        flag.startswith("--web.listen-address")
        for flag in service(compose, "prometheus")["command"]
    )
    assert "command" not in service(compose, "clickhouse")
    assert "entrypoint" not in service(compose, "clickhouse")
    assert str(service(compose, "clickhouse")["image"]).startswith("clickhouse/clickhouse-server:")


# --- addresses named by one service and served by another --------------------------


def test_bootstrap_servers_are_the_in_network_kafka_listener(compose: dict[str, Any]) -> None:
    bound, advertised = kafka_listeners(compose)
    for name in TILLSTREAM_SERVICES:
        servers = settings_from(container_env(compose, name)).kafka.bootstrap_servers
        assert servers, f"{name} has no bootstrap servers: it would need the embedded broker"
        for address in servers.split(","):
            host, port = host_and_port(address)
            assert host in compose["services"], f"{name} names unknown Kafka host {host}"
            listener = next(
                (listener for listener, where in advertised.items() if where == (host, port)),
                None,
            )
            assert listener is not None, f"kafka advertises no listener at {address}"
            assert bound[listener] == port
    assert advertised["PLAINTEXT"] == ("kafka", 9092)


def test_clickhouse_url_is_the_clickhouse_service(compose: dict[str, Any]) -> None:
    users = 0
    for name in TILLSTREAM_SERVICES:
        url = settings_from(container_env(compose, name)).clickhouse.url
        if not url:
            continue
        parts = urlsplit(url)
        assert parts.scheme == "http"
        assert parts.hostname in compose["services"]
        assert parts.port == listening_port(compose, str(parts.hostname))
        assert parts.hostname == "clickhouse"
        users += 1
    assert users == 3, "watch, poll and sink use ClickHouse"


def test_prometheus_scrapes_every_component_where_it_listens(compose: dict[str, Any]) -> None:
    config = prometheus_config(compose)
    static: dict[str, int] = {}
    discovered: dict[str, int] = {}
    for job in config["scrape_configs"]:
        for group in job.get("static_configs", []):
            for target in group["targets"]:
                host, port = host_and_port(target)
                static[host] = port
        for dns in job.get("dns_sd_configs", []):
            assert dns["type"] == "A", "Compose's DNS answers A records, not SRV"
            for name in dns["names"]:
                discovered[name] = int(dns["port"])
    for host, port in {**static, **discovered}.items():
        assert host in compose["services"], f"prometheus scrapes unknown host {host}"
        assert port == listening_port(compose, host), f"{host} does not listen on {port}"
    assert set(static) | set(discovered) >= set(TILLSTREAM_SERVICES)
    for name in SCALABLE_SERVICES:
        assert name in discovered and name not in static, f"replicas of {name} need DNS discovery"


def test_prometheus_rule_files_exist(compose: dict[str, Any]) -> None:
    config = prometheus_config(compose)
    for rule_file in config.get("rule_files") or []:
        assert (ROOT / "infra" / "prometheus" / rule_file).is_file()


def test_grafana_datasources_point_at_the_services(compose: dict[str, Any]) -> None:
    sources = grafana_datasources(compose)
    assert set(sources) >= {"prometheus", "clickhouse"}

    prometheus = urlsplit(sources["prometheus"]["url"])
    assert sources["prometheus"]["type"] == "prometheus"
    assert prometheus.hostname == "prometheus"
    assert prometheus.port == listening_port(compose, "prometheus")

    clickhouse = sources["clickhouse"]
    settings = clickhouse["jsonData"]
    assert clickhouse["type"] == CLICKHOUSE_PLUGIN
    assert settings["host"] in compose["services"]
    assert settings["port"] == listening_port(compose, settings["host"])
    assert settings["protocol"] == "http"
    assert CLICKHOUSE_PLUGIN in service_env(compose, "grafana")["GF_INSTALL_PLUGINS"].split(",")


def test_grafana_loads_dashboards_where_they_are_mounted(compose: dict[str, Any]) -> None:
    folder = mounted_from(compose, "grafana", "/etc/grafana/provisioning/dashboards")
    paths = [
        provider["options"]["path"]
        for path in sorted(folder.glob("*.y*ml"))
        for provider in yaml.safe_load(path.read_text(encoding="utf-8"))["providers"]
    ]
    assert paths, "no dashboard provider"
    for path in paths:
        assert mounted_from(compose, "grafana", path) == ROOT / "dashboards" / "json"


# --- users and secrets ----------------------------------------------------------------


def _user(users: ET.Element, name: str) -> ET.Element:
    user = users.find(f"users/{name}")
    assert user is not None, f"ClickHouse user {name} is not defined"
    return user


def _password_variable(user: ET.Element) -> str:
    password = user.find("password")
    assert password is not None and password.get("from_env"), "password must come from_env"
    return str(password.get("from_env"))


def test_pipeline_user_exists_and_shares_its_password(compose: dict[str, Any]) -> None:
    users = clickhouse_users(compose)
    clickhouse_env = service_env(compose, "clickhouse")
    for name in ("watch", "poll", "sink"):
        settings = settings_from(container_env(compose, name))
        user = _user(users, settings.clickhouse.username)
        variable = _password_variable(user)
        assert clickhouse_env[variable] == settings.clickhouse.password.get_secret_value()
        databases = [element.text for element in user.findall("allow_databases/database")]
        assert settings.clickhouse.database in databases
        profile = users.find(f"profiles/{user.findtext('profile')}")
        readonly = "0" if profile is None else (profile.findtext("readonly") or "0")
        assert readonly == "0", "the pipeline creates tables and inserts"


def test_grafana_user_exists_reads_only_and_shares_its_password(compose: dict[str, Any]) -> None:
    users = clickhouse_users(compose)
    datasource = grafana_datasources(compose)["clickhouse"]
    user = _user(users, datasource["jsonData"]["username"])

    profile = users.find(f"profiles/{user.findtext('profile')}")
    assert profile is not None
    assert profile.findtext("readonly") in {"1", "2"}
    if profile.findtext("readonly") == "1":
        # The plugin sets max_execution_time on every query.
        assert profile.find("constraints/max_execution_time/changeable_in_readonly") is not None
    databases = [element.text for element in user.findall("allow_databases/database")]
    assert databases == [datasource["jsonData"]["defaultDatabase"]]
    assert databases == [settings_from(container_env(compose, "sink")).clickhouse.database]

    variable = _password_variable(user)
    reference = datasource["secureJsonData"]["password"]
    assert reference in {f"${variable}", f"${{{variable}}}"}
    assert service_env(compose, "grafana")[variable] == service_env(compose, "clickhouse")[variable]


# --- settings --------------------------------------------------------------------------


def _field_value(settings: Settings, variable: str) -> Any:
    node: Any = settings
    for part in variable[len(ENV_PREFIX) :].lower().split(ENV_DELIMITER):
        assert isinstance(node, BaseModel) and part in type(node).model_fields, (
            f"{variable} names no setting ({part!r} is not a field of {type(node).__name__})"
        )
        node = getattr(node, part)
    return node


@pytest.mark.parametrize("name", TILLSTREAM_SERVICES)
def test_every_tillstream_variable_is_a_setting_that_arrives(
    compose: dict[str, Any], name: str
) -> None:
    env = container_env(compose, name)
    variables = {key: value for key, value in env.items() if key.startswith(ENV_PREFIX)}
    assert variables, f"{name} sets no {ENV_PREFIX} variables"
    settings = settings_from(env)
    for variable, expected in variables.items():
        value = _field_value(settings, variable)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        assert str(value) == expected, f"{variable}={expected!r} arrived as {value!r}"
    assert not settings.embedded_broker
    assert settings.metrics.host == "0.0.0.0"  # noqa: S104 - Prometheus scrapes it from outside


# --- the image --------------------------------------------------------------------------


def test_entrypoint_is_the_console_script() -> None:
    stage = final_stage()
    entrypoint = [json.loads(arguments) for keyword, arguments in stage if keyword == "ENTRYPOINT"]
    command = [json.loads(arguments) for keyword, arguments in stage if keyword == "CMD"]
    assert entrypoint == [["tillstream"]]
    assert command == [["up"]]

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    target = pyproject["project"]["scripts"]["tillstream"]
    module, _, function = target.partition(":")
    assert callable(getattr(importlib.import_module(module), function))


def test_image_is_slim_python_311_and_not_root() -> None:
    stage = final_stage()
    assert stage[0] == ("FROM", "python:3.11-slim")
    users = [arguments for keyword, arguments in stage if keyword == "USER"]
    assert users and users[-1] not in {"root", "0"}


def test_healthcheck_asks_health_on_the_metrics_port() -> None:
    checks = [arguments for keyword, arguments in final_stage() if keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    assert "/health" in checks[0]
    assert f"'{MetricsConfig().port}'" in checks[0]
    assert image_env()["TILLSTREAM_METRICS__PORT"] == str(MetricsConfig().port)
    exposed = [arguments for keyword, arguments in final_stage() if keyword == "EXPOSE"]
    assert exposed == [str(MetricsConfig().port)]


def test_image_copies_every_package_pip_installs() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = [
        pattern.rstrip("*")
        for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    ]
    copied = {
        arguments.split()[0]
        for keyword, arguments in dockerfile_instructions()
        if keyword == "COPY" and not arguments.startswith("--from")
    } | {
        source
        for keyword, arguments in dockerfile_instructions()
        if keyword == "COPY" and not arguments.startswith("--from")
        for source in arguments.split()[:-1]
    }
    for package in packages:
        assert package in copied, f"pip install . in the image would miss {package}/"
    assert pyproject["project"]["readme"] in copied
    assert "pyproject.toml" in copied
    assert any(
        keyword == "RUN" and "pip install ." in arguments
        for keyword, arguments in dockerfile_instructions()
    )


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert ignored >= {".git", ".venv", "data", *RUNTIME_FOLDERS}
    for needed in ("pyproject.toml", "README.md", "tillstream", "producers", "processors", "sinks"):
        assert needed not in ignored


def test_kafka_image_is_the_version_the_tests_run(compose: dict[str, Any]) -> None:
    pom = (ROOT / "infra" / "kafka" / "pom.xml").read_text(encoding="utf-8")
    version = re.search(r"<kafka.version>(.+?)</kafka.version>", pom)
    assert version is not None
    assert service(compose, "kafka")["image"] == f"apache/kafka:{version.group(1)}"


# --- the real parser, where there is one ---------------------------------------------


def _compose_command() -> list[str] | None:
    if shutil.which("docker") is not None:
        probe = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, check=False, timeout=30
        )
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose") is not None:
        return ["docker-compose"]
    return None


def test_docker_compose_accepts_the_file() -> None:
    command = _compose_command()
    if command is None:
        reason = (
            "NOT VALIDATED BY DOCKER COMPOSE: neither the `docker compose` plugin nor "
            "`docker-compose` is installed, so docker-compose.yml was only checked by the "
            "consistency tests above"
        )
        warnings.warn(reason, stacklevel=1)
        pytest.skip(reason)
    result = subprocess.run(
        [*command, "--file", str(COMPOSE_FILE), "config", "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={key: value for key, value in os.environ.items() if not key.startswith("COMPOSE_")},
    )
    assert result.returncode == 0, result.stderr
