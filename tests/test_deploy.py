"""deploy/: the systemd unit (statically and through `systemd-analyze`), the FreeSWITCH snippets,
logrotate and the Makefile's install targets (dry run only; nothing is installed)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "confguard.service"
INSTALLED_EXEC = "/opt/confguard/bin/confguard"
INSTALL_HINT = (
    "systemd-analyze is not installed; the unit file cannot be verified. "
    "Install Debian's systemd package (apt-get update && apt-get install -y systemd) in .ci/run"
)


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit file as {section: [(key, value), ...]}; repeated keys kept in order.

    Like systemd: '#'/';' comment lines, a trailing backslash continues the line, no
    interpolation. Anything else (a line without '=' outside a comment) is an error."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"line {number} is not Key=value: {raw!r}"
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", key.strip()), f"line {number}: bad key {key!r}"
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [value for name, value in unit.get(section, []) if name == key]


@pytest.fixture(scope="module")
def unit() -> dict[str, list[tuple[str, str]]]:
    return parse_unit(UNIT.read_text())


REQUIRED = {
    "Type": "notify",
    "NotifyAccess": "main",
    "WatchdogSec": "30",
    "Restart": "on-failure",
    "RuntimeDirectory": "confguard",
    "StateDirectory": "confguard",
    "LoadCredential": "esl-password:/etc/confguard/esl-password",
    "User": "confguard",
    "Group": "confguard",
    "ExecStart": f"{INSTALLED_EXEC} serve --config /etc/confguard/confguard.toml",
    "ExecReload": "/bin/kill -HUP $MAINPID",
    "TimeoutStopSec": "10",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "NoNewPrivileges": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "SystemCallFilter": "@system-service",
    "SystemCallArchitectures": "native",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "CapabilityBoundingSet": "",
    "UMask": "0007",
}


@pytest.mark.parametrize(("key", "expected"), sorted(REQUIRED.items()))
def test_unit_has_required_service_settings(
    unit: dict[str, list[tuple[str, str]]], key: str, expected: str
) -> None:
    assert values(unit, "Service", key) == [expected]


def test_unit_sections_and_install(unit: dict[str, list[tuple[str, str]]]) -> None:
    assert set(unit) == {"Unit", "Service", "Install"}
    assert values(unit, "Install", "WantedBy") == ["multi-user.target"]
    assert values(unit, "Unit", "Description")


def test_unit_parser_rejects_garbage() -> None:
    with pytest.raises(AssertionError, match="not Key=value"):
        parse_unit("[Service]\nType notify\n")


def copy_with_existing_exec(tmp_path: Path, text: str) -> Path:
    """The unit with ExecStart pointing at an executable that exists here (verify checks it)."""
    assert INSTALLED_EXEC in text
    target = tmp_path / "confguard.service"
    target.write_text(text.replace(INSTALLED_EXEC, sys.executable))
    return target


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail(INSTALL_HINT)
    return path


def run_verify(unit_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [systemd_analyze(), "verify", "--man=no", str(unit_path)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=unit_path.parent,
    )


def test_systemd_analyze_verify_passes(tmp_path: Path) -> None:
    result = run_verify(copy_with_existing_exec(tmp_path, UNIT.read_text()))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # systemd only warns (exit 0) about unknown keys or bad values: any line about our unit fails
    complaints = [line for line in output.splitlines() if "confguard.service" in line]
    assert complaints == [], output


def test_systemd_analyze_verify_catches_a_typo(tmp_path: Path) -> None:
    """The verify step above can fail: a misspelt key is reported."""
    broken = UNIT.read_text().replace("WatchdogSec=30", "WatchdgSec=30")
    result = run_verify(copy_with_existing_exec(tmp_path, broken))
    assert "WatchdgSec" in result.stdout + result.stderr


def test_systemd_analyze_security_exposure_is_low(tmp_path: Path) -> None:
    unit_path = copy_with_existing_exec(tmp_path, UNIT.read_text())
    result = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", "--no-pager", str(unit_path)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    match = re.search(r"Overall exposure level for confguard\.service: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.5, result.stdout


def test_freeswitch_conf_test_extension() -> None:
    root = ElementTree.parse(DEPLOY / "freeswitch" / "conf_test.xml").getroot()
    (extension,) = root.iter("extension")
    condition = extension.find("condition")
    assert condition is not None
    assert condition.get("field") == "destination_number"
    assert re.fullmatch(condition.get("expression", ""), "7001")
    actions = [(a.get("application"), a.get("data")) for a in condition.iter("action")]
    applications = [app for app, _ in actions]
    assert ("conference", "test1@default") in actions
    assert applications.index("conference") < applications.index("hangup")
    assert applications[-1] == "hangup"


def test_freeswitch_event_socket_snippet() -> None:
    path = DEPLOY / "freeswitch" / "event_socket.conf.xml"
    text = path.read_text()
    # the file is a <configuration> plus the ACL as a comment: parse the element only
    configuration = text[text.index("<configuration"): text.index("</configuration>") + 16]
    root = ElementTree.fromstring(configuration)
    params = {p.get("name"): p.get("value") for p in root.iter("param")}
    assert params["listen-ip"] == "127.0.0.1"
    assert params["listen-port"] == "8021"
    assert params["password"] != "ClueCon" and "CHANGE-ME" in str(params["password"])
    acl = params["apply-inbound-acl"]
    assert acl
    acl_list = re.search(rf'<list name="{acl}" default="deny">(.*?)</list>', text, re.S)
    assert acl_list, "the ACL list named by apply-inbound-acl is documented"
    assert "127.0.0.1/32" in acl_list.group(1)


def test_freeswitch_readme_names_every_file() -> None:
    readme = (DEPLOY / "freeswitch" / "README.md").read_text()
    for name in ("event_socket.conf.xml", "conf_test.xml", "acl.conf.xml", "file_exists"):
        assert name in readme
    assert "8000 Hz" in readme


def test_logrotate_reopens_via_reload() -> None:
    text = (DEPLOY / "logrotate.conf").read_text()
    assert "/var/log/confguard/" in text
    assert re.search(r"postrotate\s.*systemctl reload confguard", text, re.S)


def test_lab_switch_address_only_in_the_example_config() -> None:
    """Outside docs, the lab switch's address lives in deploy/confguard.toml only."""
    address = re.search(r'^host = "([0-9.]+)"', (DEPLOY / "confguard.toml").read_text(), re.M)
    assert address
    offenders = [
        str(path.relative_to(REPO))
        for folder in ("confguard", "tests", "deploy")
        for path in (REPO / folder).rglob("*")
        if path.is_file() and path.suffix in {".py", ".toml", ".xml", ".service", ".conf"}
        and path != DEPLOY / "confguard.toml"
        and address.group(1) in path.read_text(errors="replace")
    ]
    assert offenders == []


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("target", ["install", "uninstall"])
def test_makefile_targets_dry_run(target: str) -> None:
    result = subprocess.run(
        ["make", "-n", "-C", str(REPO), target], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    if target == "install":
        for expected in ("useradd --system", "/opt/confguard", "deploy/confguard.service",
                         "/etc/systemd/system/confguard.service", "daemon-reload",
                         "test -e /etc/confguard/confguard.toml ||"):
            assert expected in result.stdout
    else:
        assert "rm -f /etc/systemd/system/confguard.service" in result.stdout
