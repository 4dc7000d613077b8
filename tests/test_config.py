"""Settings: defaults < TOML < environment < flags, validation messages, provenance, secrets."""

from __future__ import annotations

import copy
import ipaddress
import pickle
from pathlib import Path

import pytest

from confguard import config as config_module
from confguard.config import (
    ConfigError,
    Secret,
    default_journal_path,
    default_socket_path,
    load_config,
    render_config,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def no_system_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Never read a real /etc/confguard/confguard.toml from the test host."""
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", str(tmp_path / "absent.toml"))


def write(tmp_path: Path, text: str, name: str = "confguard.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults_are_freeswitch_defaults_on_loopback() -> None:
    config = load_config(env={}, euid=1000)
    assert config.esl.host == "127.0.0.1"
    assert config.esl.port == 8021
    assert config.esl.password.reveal() == "ClueCon"
    assert config.invite.timeout == 30 and config.invite.key == "1"
    assert config.invite.join_mode == "inline"
    assert config.metrics.listen is None
    assert config.api.mode == 0o660
    assert config.path is None
    assert set(config.sources.values()) == {"default"}
    assert "esl.host" in config.sources and "journal.retention_days" in config.sources


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[esl]\nhost = "127.0.0.2"\nport = 8022\n[invite]\ntimeout = 40\nkey = "5"\n',
    )
    env = {"CONFGUARD_ESL_PORT": "8023", "CONFGUARD_INVITE_TIMEOUT": "50"}
    config = load_config(path, env=env, overrides={"invite.timeout": 60}, euid=1000)
    assert config.esl.host == "127.0.0.2"
    assert config.sources["esl.host"] == f"file:{path}"
    assert config.esl.port == 8023
    assert config.sources["esl.port"] == "env:CONFGUARD_ESL_PORT"
    assert config.invite.timeout == 60
    assert config.sources["invite.timeout"] == "flag:--invite-timeout"
    assert config.invite.key == "5"
    assert config.sources["invite.key"] == f"file:{path}"
    assert config.sources["invite.prompt"] == "default"


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "[log]\nlevel = \"debug\"\n")
    config = load_config(env={"CONFGUARD_CONFIG": path}, euid=1000)
    assert config.log.level == "debug"
    assert config.path == path


def test_default_system_path_is_read_when_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "[invite]\ntimeout = 12\n", name="system.toml")
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", path)
    assert load_config(env={}, euid=1000).invite.timeout == 12


def test_named_file_must_exist(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError) as caught:
        load_config(missing, env={})
    assert missing in str(caught.value)


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[esl\nhost = 1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert path in str(caught.value) and "TOML" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "key", "allowed"),
    [
        ("[esl]\nhots = \"127.0.0.1\"\n", "esl.hots", "host"),
        ("[eslx]\nhost = \"127.0.0.1\"\n", "eslx", "esl"),
        ("[esl]\nport = 70000\n", "esl.port", "1 to 65535"),
        ("[esl]\nport = \"8021\"\n", "esl.port", "without quotes"),
        ("[esl]\nconnect_timeout = 0\n", "esl.connect_timeout", "seconds"),
        ("[invite]\nkey = \"12\"\n", "invite.key", "DTMF"),
        ("[invite]\nkey = \"x\"\n", "invite.key", "DTMF"),
        ("[invite]\njoin_mode = \"bridge\"\n", "invite.join_mode", "inline | dialplan"),
        ("[invite]\nhangup_cause = \"NOT_A_CAUSE\"\n", "invite.hangup_cause", "hangup cause"),
        ("[invite]\nprompt = \"/x.wav park\"\n", "invite.prompt", "no spaces"),
        ("[invite]\nprompt = \"${evil}\"\n", "invite.prompt", "${"),
        ("[invite]\njoin_extension = \"7001 XML\"\n", "invite.join_extension", "0-9"),
        ("[invite]\ncaller_id_number = \"12,3\"\n", "invite.caller_id_number", "0-9"),
        ("[log]\nformat = \"xml\"\n", "log.format", "auto | console | json"),
        ("[log]\nlevel = \"loud\"\n", "log.level", "debug"),
        ("[metrics]\nlisten = \"9464\"\n", "metrics.listen", "host:port"),
        ("[metrics]\nlisten = \"::1:9464\"\n", "metrics.listen", "brackets"),
        ("[api]\nsocket = \"relative.sock\"\n", "api.socket", "absolute"),
        ("[api]\nmode = 0o1777\n", "api.mode", "octal"),
        ("[journal]\nretention_days = 0\n", "journal.retention_days", "days"),
        ("esl = 1\n", "esl", "[esl]"),
    ],
)
def test_bad_file_values_name_file_key_and_allowed(
    tmp_path: Path, text: str, key: str, allowed: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    message = str(caught.value)
    assert path in message
    assert key in message
    assert allowed in message
    assert caught.value.key == key


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env={"CONFGUARD_ESL_PORT": "eighty"})
    assert "CONFGUARD_ESL_PORT" in str(caught.value) and "esl.port" in str(caught.value)


def test_unknown_key_in_known_section_from_env_is_an_error() -> None:
    with pytest.raises(ConfigError, match="CONFGUARD_INVITE_TIMEOUTS"):
        load_config(env={"CONFGUARD_INVITE_TIMEOUTS": "5"})


def test_unrelated_confguard_variables_are_ignored() -> None:
    config = load_config(env={"CONFGUARD_TRANSCRIPTS": "/x", "CONFGUARD_SOMETHING": "y"})
    assert config.esl.host == "127.0.0.1"


def test_bad_flag_names_the_flag() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env={}, overrides={"invite.ring_timeout": "-3"})
    assert "--invite-ring-timeout" in str(caught.value)


def test_flag_names_name_the_real_flag() -> None:
    config = load_config(env={}, overrides={"api.socket": "/tmp/x.sock"},
                         flag_names={"api.socket": "--socket"})
    assert config.sources["api.socket"] == "flag:--socket"
    with pytest.raises(ConfigError, match="flag --socket"):
        load_config(
            env={}, overrides={"api.socket": "x.sock"}, flag_names={"api.socket": "--socket"}
        )


def test_string_values_from_env_are_parsed() -> None:
    env = {
        "CONFGUARD_INVITE_RING_TIMEOUT": "20",
        "CONFGUARD_INVITE_DECLINE_KEY": "9",
        "CONFGUARD_INVITE_JOIN_MODE": "DIALPLAN",
        "CONFGUARD_API_MODE": "0600",
        "CONFGUARD_METRICS_LISTEN": "127.0.0.1:9464",
        "CONFGUARD_ESL_HEARTBEAT_INTERVAL": "2.5",
        "CONFGUARD_INVITE_PROMPT": "",
    }
    config = load_config(env=env)
    assert config.invite.ring_timeout == 20
    assert config.invite.decline_key == "9"
    assert config.invite.join_mode == "dialplan"
    assert config.api.mode == 0o600
    assert config.metrics.listen == "127.0.0.1:9464"
    assert config.metrics.host_port == ("127.0.0.1", 9464)
    assert config.esl.heartbeat_interval == 2.5
    assert config.invite.prompt is None


def test_ipv6_metrics_listen_keeps_brackets() -> None:
    config = load_config(env={}, overrides={"metrics.listen": "[::1]:9464"})
    assert config.metrics.listen == "[::1]:9464"
    assert config.metrics.host_port == ("::1", 9464)


def test_decline_key_must_differ_from_key() -> None:
    with pytest.raises(ConfigError, match=r"invite\.decline_key"):
        load_config(env={"CONFGUARD_INVITE_DECLINE_KEY": "1"})


@pytest.mark.parametrize(
    "how",
    ["file", "env", "flag"],
)
def test_password_value_is_never_accepted(tmp_path: Path, how: str) -> None:
    path = write(tmp_path, '[esl]\npassword = "hunter2"\n') if how == "file" else None
    env = {"CONFGUARD_ESL_PASSWORD": "hunter2"} if how == "env" else {}
    overrides = {"esl.password": "hunter2"} if how == "flag" else None
    with pytest.raises(ConfigError) as caught:
        load_config(path, env=env, overrides=overrides)
    assert "password_file" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_password_from_password_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "esl-password"
    secret_file.write_text("s3cret-pw\n")
    path = write(tmp_path, f'[esl]\npassword_file = "{secret_file}"\n')
    config = load_config(path, env={})
    assert config.esl.password.reveal() == "s3cret-pw"
    assert config.sources["esl.password"] == f"password_file:{secret_file}"
    assert "s3cret-pw" not in repr(config)
    assert "s3cret-pw" not in render_config(config)
    assert config.esl.settings_kwargs()["password"] == "s3cret-pw"


def test_password_file_from_env(tmp_path: Path) -> None:
    secret_file = tmp_path / "pw"
    secret_file.write_text("from-env")
    config = load_config(env={"CONFGUARD_ESL_PASSWORD_FILE": str(secret_file)})
    assert config.esl.password.reveal() == "from-env"


def test_password_from_systemd_credential(tmp_path: Path) -> None:
    (tmp_path / "esl-password").write_text("cred-pw\n")
    config = load_config(env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert config.esl.password.reveal() == "cred-pw"
    assert config.sources["esl.password"].startswith("credential:")


def test_unreadable_or_empty_password_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"esl\.password_file"):
        load_config(env={"CONFGUARD_ESL_PASSWORD_FILE": str(tmp_path / "missing")})
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        load_config(env={"CONFGUARD_ESL_PASSWORD_FILE": str(empty)})
    two_lines = tmp_path / "two"
    two_lines.write_text("a\nb\n")
    with pytest.raises(ConfigError, match="more than one line"):
        load_config(env={"CONFGUARD_ESL_PASSWORD_FILE": str(two_lines)})


def test_secret_never_shows_itself() -> None:
    secret = Secret("ClueCon")
    assert "ClueCon" not in repr(secret)
    assert "ClueCon" not in str(secret)
    assert "ClueCon" not in f"{secret}"
    assert secret == Secret("ClueCon") and secret != Secret("other")
    assert copy.deepcopy(secret).reveal() == "ClueCon"
    with pytest.raises(TypeError):
        pickle.dumps(secret)


@pytest.fixture
def no_service(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """As on a host where the confguard service is not installed."""
    import confguard.config as config_module

    monkeypatch.setattr(config_module, "SERVICE_RUNTIME_DIR", tmp_path / "run-confguard")
    monkeypatch.setattr(config_module, "SERVICE_STATE_DIR", tmp_path / "state-confguard")
    return tmp_path


def test_socket_path_defaults(no_service: Path) -> None:
    assert default_socket_path({"RUNTIME_DIRECTORY": "/run/confguard"}, 999) == (
        "/run/confguard/confguard.sock"
    )
    assert default_socket_path({"RUNTIME_DIRECTORY": "/run/a:/run/b"}, 999) == (
        "/run/a/confguard.sock"
    )
    assert default_socket_path({}, 0) == str(no_service / "run-confguard" / "confguard.sock")
    assert default_socket_path({"XDG_RUNTIME_DIR": "/run/user/1000"}, 1000) == (
        "/run/user/1000/confguard/confguard.sock"
    )
    assert default_socket_path({}, 1000) == "/tmp/confguard-1000/confguard.sock"
    config = load_config(env={"RUNTIME_DIRECTORY": "/run/confguard"}, euid=1000)
    assert config.api.socket == "/run/confguard/confguard.sock"


def test_journal_path_defaults(no_service: Path) -> None:
    assert default_journal_path({"STATE_DIRECTORY": "/var/lib/confguard"}, 1000) == (
        "/var/lib/confguard/journal.sqlite3"
    )
    assert default_journal_path({}, 0) == str(no_service / "state-confguard" / "journal.sqlite3")
    assert default_journal_path({"XDG_STATE_HOME": "/s"}, 1000) == (
        "/s/confguard/journal.sqlite3"
    )
    assert default_journal_path({"HOME": "/home/op"}, 1000) == (
        "/home/op/.local/state/confguard/journal.sqlite3"
    )


def test_an_installed_service_is_what_every_user_talks_to(no_service: Path) -> None:
    # An operator (not root, no RUNTIME_DIRECTORY) on a host where the service runs must reach the
    # service's socket and journal, not private ones under $XDG_RUNTIME_DIR / $HOME.
    (no_service / "run-confguard").mkdir()
    (no_service / "state-confguard").mkdir()
    env = {"XDG_RUNTIME_DIR": "/run/user/1000", "HOME": "/home/op"}
    assert default_socket_path(env, 1000) == str(no_service / "run-confguard" / "confguard.sock")
    assert default_journal_path(env, 1000) == str(
        no_service / "state-confguard" / "journal.sqlite3"
    )


def test_render_shows_values_and_sources(tmp_path: Path) -> None:
    path = write(tmp_path, '[esl]\nhost = "127.0.0.3"\n')
    config = load_config(
        path,
        env={"CONFGUARD_INVITE_TIMEOUT": "45"},
        overrides={"log.level": "debug"},
    )
    text = render_config(config)
    lines = {line.split("=")[0].strip(): line for line in text.splitlines() if "=" in line}
    assert '"127.0.0.3"' in lines["host"] and f"# file:{path}" in lines["host"]
    assert "45" in lines["timeout"] and "# env:CONFGUARD_INVITE_TIMEOUT" in lines["timeout"]
    assert '"debug"' in lines["level"] and "# flag:--log-level" in lines["level"]
    assert "<redacted>" in lines["password"] and "ClueCon" not in text
    assert "0o660" in lines["mode"]
    assert "[metrics]" in text and "# listen = (not set)" in text


def test_example_config_in_deploy_loads(tmp_path: Path) -> None:
    """deploy/confguard.toml is valid; under systemd the password comes as a credential."""
    example = str(REPO / "deploy" / "confguard.toml")
    (tmp_path / "esl-password").write_text("lab\n")
    config = load_config(example, env={"CREDENTIALS_DIRECTORY": str(tmp_path)}, euid=999)
    # the documented lab switch: a private LAN address, not the loopback default
    assert ipaddress.ip_address(config.esl.host).is_private
    assert not ipaddress.ip_address(config.esl.host).is_loopback
    assert config.esl.password.reveal() == "lab"
    assert config.metrics.listen is None
    assert config.invite == load_config(env={}).invite  # commented keys are the defaults


def test_example_config_commented_keys_are_valid(tmp_path: Path) -> None:
    """Uncommenting any documented key gives a valid configuration."""
    example = (REPO / "deploy" / "confguard.toml").read_text()
    uncommented = "\n".join(
        line[2:] if line.startswith("# ") and (
            (" = " in line and line[2].islower()) or line.startswith("# [")
        ) else line
        for line in example.splitlines()
    )
    secret_file = tmp_path / "pw"
    secret_file.write_text("lab\n")
    uncommented = uncommented.replace("/etc/confguard/esl-password", str(secret_file))
    # the second prompt line documents a file; TOML forbids the duplicate key, keep the first
    lines, seen = [], set()
    section = ""
    for line in uncommented.splitlines():
        if line.startswith("["):
            section = line
        key = (section, line.split(" = ")[0]) if " = " in line and line[0].islower() else None
        if key in seen:
            continue
        if key:
            seen.add(key)
        lines.append(line)
    config = load_config(write(tmp_path, "\n".join(lines)), env={}, euid=999)
    assert config.invite.decline_key == "9"
    assert config.invite.max_duration == 3600 and config.invite.muted is False
    assert config.metrics.listen == "127.0.0.1:9464"
    assert config.log.file == "/var/log/confguard/confguard.log"
    assert config.invite.via == "mobile"
    assert config.routes["mobile"].gateway == "lab-carrier"


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[invite]\ncaller_id_number = "ABC"\n', "invite.caller_id_number"),
        ('[invite]\nhangup_cause = "NORMAL_CLEARING"\n', "invite.hangup_cause"),
    ],
)
def test_invite_defaults_pass_the_invite_machines_own_rules(
    tmp_path: Path, toml: str, key: str
) -> None:
    # A default the invite machine would refuse must fail at load, not on every invite.
    path = write(tmp_path, toml)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), env={})
    assert caught.value.key == key
    assert str(path) in str(caught.value)
