"""The FreeSWITCH configuration confguard's real-switch tests and `make demo-real` run against.

Owns the files written into a run folder: `conf/freeswitch.xml` (one document with the
`configuration`, `dialplan` and `directory` sections) and `scripts/callee.lua`. Nothing here comes
from the FreeSWITCH install: any build with the modules in `MODULES` can run it.

What the configuration gives:
- the Event Socket on 127.0.0.1 only, on the given port, with the given password and the
  `loopback.auto` ACL;
- a directory whose users are the simulator's default callees (`confguard.sim.callees`): each
  user's dial-string reaches `loopback/<ext>/confguard_callee/XML`, whose -b leg runs
  `callee.lua`; the user's default behaviour travels as `sim_default_*` variables and a per-call
  `sim_*` variable in the originate's `{}` wins, exactly as on the simulator;
- context `default` with the join extension 7001 (`conference test1@default`), and a conference
  profile `default` with no caller controls;
- with `events_example`, the deploy example of invites from inside FreeSWITCH as it stands in
  deploy/freeswitch/ (the moderator's caller controls and the `confguard` conference profile,
  the dialplan's 7002 and `*7<ext>`, the Lua hook on `confguard::outcome` and its script), so
  the real-switch tests run the example itself;
- no session-rate throttle worth the name (the stock 30 sessions/s would throttle tests) and
  warning-level logging into `log/freeswitch.log`.
"""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

from confguard.sim.callees import CalleeMode, CalleeSpec, default_directory

MODULES = (
    "mod_console",
    "mod_logfile",
    "mod_event_socket",
    "mod_commands",
    "mod_dptools",
    "mod_dialplan_xml",
    "mod_loopback",
    "mod_conference",
    "mod_tone_stream",
    "mod_sndfile",
    "mod_native_file",
    "mod_hash",
    "mod_db",
    "mod_expr",
    "mod_lua",
)

DOMAIN = "confguard.test"
CALLEE_CONTEXT = "confguard_callee"
JOIN_EXTENSION = "7001"
JOIN_ROOM = "test1"
CALLEE_SCRIPT = Path(__file__).with_name("callee.lua")
DEPLOY_FREESWITCH = Path(__file__).resolve().parents[2] / "deploy" / "freeswitch"
OUTCOME_SCRIPT = "confguard_outcome.lua"


@dataclass(frozen=True)
class SwitchConf:
    """What varies between runs: the Event Socket's port and password, limits, log level."""

    port: int
    password: str
    max_sessions: int = 4000
    sessions_per_second: int = 2000
    loglevel: str = "warning"
    users: Mapping[str, CalleeSpec] | None = None  # None: the simulator's default directory
    events_example: bool = False  # load deploy/freeswitch's invites-from-FreeSWITCH example


def _seconds(value: float) -> str:
    return f"{value:g}"


def callee_defaults(spec: CalleeSpec) -> dict[str, str]:
    """A callee's behaviour as the `sim_default_*` variables callee.lua reads."""
    if spec.mode is CalleeMode.UNALLOCATED:
        raise ValueError("an unallocated callee is a user that is not in the directory")
    out = {"sim_default_mode": spec.mode.value}
    if spec.mode is CalleeMode.ANSWER:
        out["sim_default_answer_after"] = _seconds(spec.answer_after)
        if spec.dtmf:
            out["sim_default_dtmf"] = ";".join(f"{d}@{_seconds(at)}" for d, at in spec.dtmf)
        if spec.hangup_after is not None:
            out["sim_default_hangup_after"] = _seconds(spec.hangup_after)
    return out


def dial_string(extension: str, spec: CalleeSpec) -> str:
    """The directory dial-string of one test user."""
    if spec.mode is CalleeMode.UNREGISTERED:
        # A SIP user with no registration: the originate fails before any channel exists.
        return "error/user_not_registered"
    variables = {"loopback_bowout": "false", **callee_defaults(spec)}
    inner = ",".join(f"{name}={value}" for name, value in variables.items())
    return f"{{{inner}}}loopback/{extension}/{CALLEE_CONTEXT}/XML"


def _param(name: str, value: object) -> str:
    return f"<param name={quoteattr(name)} value={quoteattr(str(value))}/>"


def _deploy_parts(name: str, path: str) -> str:
    """The elements at `path` in deploy/freeswitch/`name`, as XML text (the example itself)."""
    root = ET.parse(DEPLOY_FREESWITCH / name).getroot()
    return "".join(ET.tostring(element, encoding="unicode") for element in root.findall(path))


def events_example_parts(run_dir: Path) -> dict[str, str]:
    """The deploy example's pieces for each place in the document (empty without it)."""
    script = run_dir / "scripts" / OUTCOME_SCRIPT
    hooks = ET.parse(DEPLOY_FREESWITCH / "lua.conf.xml").getroot().findall("settings/hook")
    for hook in hooks:
        hook.set("script", str(script))  # the run folder's copy
    return {
        "caller_controls": _deploy_parts("conference_moderator.xml", "caller-controls/group"),
        "profiles": _deploy_parts("conference_moderator.xml", "profiles/profile"),
        "extensions": _deploy_parts("confguard_events.xml", "extension"),
        "lua_hooks": "".join(ET.tostring(hook, encoding="unicode") for hook in hooks),
    }


def freeswitch_xml(conf: SwitchConf, run_dir: Path) -> str:
    """The whole configuration document for a switch whose run folder is `run_dir`."""
    users = default_directory() if conf.users is None else conf.users
    log_file = run_dir / "log" / "freeswitch.log"
    script = run_dir / "scripts" / "callee.lua"
    modules = "\n".join(f'        <load module="{name}"/>' for name in MODULES)
    example = (events_example_parts(run_dir) if conf.events_example
               else dict.fromkeys(("caller_controls", "profiles", "extensions", "lua_hooks"), ""))
    lua_hooks = example["lua_hooks"]
    directory = "\n".join(
        f"            <user id={quoteattr(ext)}><params>"
        f'{_param("dial-string", dial_string(ext, spec))}</params></user>'
        for ext, spec in sorted(users.items())
    )
    return f"""<?xml version="1.0"?>
<!-- Written by confguard.realswitch.conf for one test run; regenerated on every start. -->
<document type="freeswitch/xml">
  <X-PRE-PROCESS cmd="set" data="domain={DOMAIN}"/>
  <X-PRE-PROCESS cmd="set" data="domain_name={DOMAIN}"/>
  <X-PRE-PROCESS cmd="set" data="force_local_ip_v4=127.0.0.1"/>
  <X-PRE-PROCESS cmd="set" data="local_ip_v4=127.0.0.1"/>
  <section name="configuration">
    <configuration name="switch.conf">
      <settings>
        {_param("max-sessions", conf.max_sessions)}
        {_param("sessions-per-second", conf.sessions_per_second)}
        {_param("loglevel", conf.loglevel)}
        {_param("colorize-console", "false")}
        {_param("dump-cores", "no")}
      </settings>
    </configuration>
    <configuration name="modules.conf">
      <modules>
{modules}
      </modules>
    </configuration>
    <configuration name="console.conf">
      <mappings>
        <map name="all" value="console,debug,info,notice,warning,err,crit,alert"/>
      </mappings>
      <settings>{_param("colorize", "false")}{_param("loglevel", conf.loglevel)}</settings>
    </configuration>
    <configuration name="logfile.conf">
      <settings>{_param("rotate-on-hup", "true")}</settings>
      <profiles>
        <profile name="default">
          <settings>{_param("logfile", log_file)}{_param("rollover", 0)}</settings>
          <mappings><map name="all" value="debug,info,notice,warning,err,crit,alert"/></mappings>
        </profile>
      </profiles>
    </configuration>
    <configuration name="event_socket.conf">
      <settings>
        {_param("nat-map", "false")}
        {_param("listen-ip", "127.0.0.1")}
        {_param("listen-port", conf.port)}
        {_param("password", conf.password)}
        {_param("apply-inbound-acl", "loopback.auto")}
      </settings>
    </configuration>
    <configuration name="conference.conf">
      <caller-controls><group name="none"></group>{example["caller_controls"]}</caller-controls>
      <profiles>
        <profile name="default">
          {_param("domain", DOMAIN)}
          {_param("rate", 8000)}
          {_param("interval", 20)}
          {_param("energy-level", 0)}
          {_param("caller-controls", "none")}
          {_param("comfort-noise", "false")}
        </profile>{example["profiles"]}
      </profiles>
    </configuration>
    <configuration name="lua.conf">
      <settings>{_param("script-directory", run_dir / "scripts" / "?.lua")}{lua_hooks}</settings>
    </configuration>
  </section>
  <section name="dialplan">
    <context name="default">
      <extension name="confguard_join">
        <condition field="destination_number" expression="^{JOIN_EXTENSION}$">
          <action application="answer"/>
          <action application="conference" data="{JOIN_ROOM}@default"/>
          <action application="hangup"/>
        </condition>
      </extension>{example["extensions"]}
    </context>
    <context name="{CALLEE_CONTEXT}">
      <extension name="confguard_callee">
        <condition field="destination_number" expression="^.+$">
          <action application="lua" data={quoteattr(str(script))}/>
        </condition>
      </extension>
    </context>
  </section>
  <section name="directory">
    <domain name="{DOMAIN}">
      <groups>
        <group name="default">
          <users>
{directory}
          </users>
        </group>
      </groups>
    </domain>
  </section>
</document>
"""


def write_conf(conf: SwitchConf, run_dir: Path) -> Path:
    """Lay out `run_dir` (conf/, log/, run/, db/, scripts/) and write the configuration."""
    for sub in ("conf", "log", "run", "db", "scripts"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    path = run_dir / "conf" / "freeswitch.xml"
    path.write_text(freeswitch_xml(conf, run_dir))
    path.chmod(0o600)  # it holds the Event Socket password
    shutil.copyfile(CALLEE_SCRIPT, run_dir / "scripts" / "callee.lua")
    if conf.events_example:
        shutil.copyfile(DEPLOY_FREESWITCH / "scripts" / OUTCOME_SCRIPT,
                        run_dir / "scripts" / OUTCOME_SCRIPT)
    return path
