"""`confguard check` and `confguard history`: the operator commands, through `cli.main`.

`check` runs against the in-process simulator (a real ESL session on 127.0.0.1): the ✓ path, a
closed port and a wrong password, and never prints the password. `history` reads a journal that
the real `Journal` wrote: the table, the filters, JSON lines and the missing-journal message.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
import time
from pathlib import Path

import pytest

from confguard import cli
from confguard.journal import InviteRecord, Journal
from confguard.sim import SimConfig

SIM_PASSWORD = "Sim-Pw-7f3a9c"  # not FreeSWITCH's default: must never show in any output


@pytest.fixture
def sim_config() -> SimConfig:
    return SimConfig(
        host="127.0.0.1", port=0, password=SIM_PASSWORD, time_scale=0.05, heartbeat_interval=20.0
    )


def run_cli(*argv: str) -> tuple[int, str, str]:
    """`confguard <argv>` in this thread with its own loop; (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(list(argv), out)
    return code, out.getvalue(), err.getvalue()


async def run_cli_async(*argv: str) -> tuple[int, str, str]:
    return await asyncio.to_thread(run_cli, *argv)


def write_config(tmp_path: Path, password: str, extra: str = "") -> Path:
    secret = tmp_path / "esl-password"
    secret.write_text(password + "\n")
    config = tmp_path / "confguard.toml"
    config.write_text(f'[esl]\npassword_file = "{secret}"\n{extra}')
    return config


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def mark_lines(text: str) -> dict[str, str]:
    """check name -> mark, from `format_results` output."""
    marks: dict[str, str] = {}
    for line in text.splitlines():
        if line[:2] in ("✓ ", "✗ ", "? "):
            name = line[2:].split(": ", 1)[0]
            marks[name] = line[0]
    return marks


# --- check --------------------------------------------------------------------------------------


async def test_check_all_green_against_the_simulator(sim, tmp_path: Path) -> None:
    # A running conference, as on a live switch: `conference list` then answers +OK.
    await sim.switch.api("originate user/1001 &conference(test1)")
    for _ in range(100):
        if (await sim.switch.api("conference list")).startswith("+OK"):
            break
        await asyncio.sleep(0.02)
    config = write_config(tmp_path, SIM_PASSWORD)
    code, out, err = await run_cli_async(
        "check", "--config", str(config), "--esl-host", "127.0.0.1", "--esl-port", str(sim.port)
    )
    marks = mark_lines(out)
    target = f"127.0.0.1:{sim.port}"
    assert marks[f"reachable at {target}"] == "✓"
    assert marks["password accepted"] == "✓"
    assert marks["version"] == "✓"
    for module in ("mod_commands", "mod_dptools", "mod_conference"):
        assert marks[f"{module} loaded"] == "✓", out
    assert marks["conference api answers"] == "✓", out
    assert "✗" not in out, out
    assert code == 0, out
    assert SIM_PASSWORD not in out + err


async def test_check_dialplan_mode_names_the_extension(sim, tmp_path: Path) -> None:
    config = write_config(
        tmp_path, SIM_PASSWORD,
        '[invite]\njoin_mode = "dialplan"\njoin_extension = "7001"\njoin_context = "default"\n',
    )
    _, out, _ = await run_cli_async(
        "check", "--config", str(config), "--esl-port", str(sim.port)
    )
    assert "dialplan extension 7001 in context default" in out
    assert "conference api answers" not in out  # inline-only check


async def test_check_closed_port_is_a_failed_reachability_line(tmp_path: Path) -> None:
    port = closed_port()
    config = write_config(tmp_path, SIM_PASSWORD)
    code, out, err = await run_cli_async(
        "check", "--config", str(config), "--esl-host", "127.0.0.1", "--esl-port", str(port)
    )
    assert code != 0
    lines = out.splitlines()
    assert any(line.startswith(f"✗ reachable at 127.0.0.1:{port}") for line in lines), out
    assert any(line.strip().startswith("fix:") for line in lines)
    assert "password accepted" not in out  # never got that far
    assert SIM_PASSWORD not in out + err


async def test_check_wrong_password_fails_without_printing_either_password(
    sim, tmp_path: Path
) -> None:
    wrong = "Wrong-Pw-41b2e8"
    config = write_config(tmp_path, wrong)
    code, out, err = await run_cli_async(
        "check", "--config", str(config), "--esl-port", str(sim.port)
    )
    assert code != 0
    marks = mark_lines(out)
    assert marks[f"reachable at 127.0.0.1:{sim.port}"] == "✓"
    assert marks["password accepted"] == "✗"
    assert "password_file" in out  # the fix names the setting
    assert wrong not in out + err
    assert SIM_PASSWORD not in out + err
    assert "version" not in marks  # no checks ran without a session


# --- history ------------------------------------------------------------------------------------


def record(n: int, ext: str, room: str, created: float) -> InviteRecord:
    return InviteRecord(
        invite_id=f"inv{n:04d}", call_uuid=f"00000000-0000-0000-0000-{n:012d}",
        job_uuid=f"10000000-0000-0000-0000-{n:012d}", ext=ext, room=room, timeout=30,
        deadline=created + 30, created_at=created,
    )


@pytest.fixture
def journal_path(tmp_path: Path) -> Path:
    """A journal with a joined, a timed-out (older), and a still-active invite."""
    path = tmp_path / "state" / "journal.sqlite3"
    now = time.time()
    with Journal(path) as journal:
        joined = record(1, "1000", "test1", now - 60)
        journal.open_invite(joined)
        journal.update_state(joined.invite_id, "ringing", now - 59.5)
        journal.update_state(joined.invite_id, "waiting_key", now - 58)
        journal.update_state(joined.invite_id, "cancelling", now - 56)
        journal.finish_invite(joined.invite_id, "joined", None, now - 55.5)
        old = record(2, "1001", "sales", now - 7200)
        journal.open_invite(old)
        journal.update_state(old.invite_id, "waiting_key", now - 7199)
        journal.finish_invite(old.invite_id, "timeout", "ALLOTTED_TIMEOUT", now - 7170)
        journal.open_invite(record(3, "1002", "test1", now - 5))  # still active
    return path


def test_history_table_newest_first_with_durations(journal_path: Path, tmp_path: Path) -> None:
    code, out, err = run_cli("history", "--journal", str(journal_path),
                             "--config", str(write_config(tmp_path, "x")))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["WHEN", "EXT", "ROOM", "OUTCOME", "CAUSE", "RING", "WAIT", "TOTAL",
                                "VIA", "IN", "ROOM"]
    rows = [line.split() for line in lines[1:]]
    assert len(rows) == 2  # the active invite is not history
    # newest first; date and time are two words
    assert rows[0][2:6] == ["1000", "test1", "joined", "-"]
    assert rows[0][6:9] == ["2.0s", "2.0s", "4.5s"]
    assert rows[0][9] == "user"
    assert rows[0][10:] == ["in", "the", "room"]  # joined, and not seen leaving (yet)
    assert rows[1][2:6] == ["1001", "sales", "timeout", "ALLOTTED_TIMEOUT"]
    assert rows[1][7] == "-"  # no key press: no wait-for-key duration
    assert rows[1][8] == "30.0s"
    assert rows[1][9:] == ["user", "-"]  # the default route; never in the room


def test_history_filters_and_json(journal_path: Path, tmp_path: Path) -> None:
    config = str(write_config(tmp_path, "x"))
    code, out, _ = run_cli("history", "--journal", str(journal_path), "--config", config,
                           "--since", "1h", "--json")
    assert code == 0
    items = [json.loads(line) for line in out.splitlines()]
    assert [(i["ext"], i["outcome"]) for i in items] == [("1000", "joined")]
    assert items[0]["durations"]["wait_key_s"] == 2.0
    assert "when" in items[0]
    code, out, _ = run_cli("history", "--journal", str(journal_path), "--config", config,
                           "--ext", "1001", "--json")
    assert [json.loads(line)["room"] for line in out.splitlines()] == ["sales"]
    code, out, _ = run_cli("history", "--journal", str(journal_path), "--config", config,
                           "--room", "nowhere")
    assert code == 0
    assert out.strip() == "no finished invites match"
    code, out, _ = run_cli("history", "--journal", str(journal_path), "--config", config,
                           "--limit", "1", "--json")
    assert len(out.splitlines()) == 1


def test_history_reads_without_writing(journal_path: Path, tmp_path: Path) -> None:
    journal_path.chmod(0o444)
    try:
        code, out, err = run_cli("history", "--journal", str(journal_path),
                                 "--config", str(write_config(tmp_path, "x")))
    finally:
        journal_path.chmod(0o644)
    assert code == 0, err
    assert "1000" in out


def test_history_without_a_journal_says_so(tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here.sqlite3"
    code, out, err = run_cli("history", "--journal", str(missing),
                             "--config", str(write_config(tmp_path, "x")))
    assert code == cli.EXIT_NO_JOURNAL
    assert out == ""
    assert f"no journal at {missing}" in err
    assert not missing.exists()  # reading never creates it


def test_history_bad_since_is_bad_input(journal_path: Path, tmp_path: Path) -> None:
    code, _, err = run_cli("history", "--journal", str(journal_path), "--since", "yesterday",
                           "--config", str(write_config(tmp_path, "x")))
    assert code == cli.EXIT_BAD_INPUT
    assert "--since" in err
