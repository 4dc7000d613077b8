"""Evidence for the webhooks' closing note: a receiver's log across a receiver outage and a
daemon restart (SIGKILL), against the real FreeSWITCH when one is found, else the simulator.

    PYTHONPATH=. .venv/bin/python tests/webhook_demo.py [--sim]

One line per request the receiver got (time, path, invite, seq, state/outcome, attempt, its
answer), `#` lines for what the script did, then the check of every lane (tests/webhook_receiver.py
`check_lanes`): signed, seq never going down, no gap, a repeated seq only with the same body.

The story: invite A joins while the receiver is up (it answers 500 once, to A's seq 2: a retry);
invite B (a callee that never presses) is placed; the receiver goes down; invite C joins during
the outage (its events queue); the daemon is SIGKILLed with B still waiting and the backlog
undelivered; a new daemon starts (adopts B) while the receiver is still down; the receiver comes
back; the backlog arrives in order; B's FreeSWITCH timer ends it (`timeout`), which arrives last.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from peers import EslLink, Peer, RealPeer, SimPeer
from test_e2e import ROOM, ServeProcess, run_cli
from webhook_receiver import Hit, Receiver, check_lanes, outcome_delivered

REPO = Path(__file__).resolve().parent.parent
SECRET = "demo-webhook-secret-0123456789abcdef"


def note(text: str) -> None:
    now = time.time()
    print(f"# {time.strftime('%H:%M:%S', time.gmtime(now))}.{int(now * 1000) % 1000:03d}Z "
          f"{text}", flush=True)


async def open_peer(workdir: Path, use_sim: bool) -> tuple[Peer, object | None]:
    if not use_sim:
        from confguard.realswitch import FreeSwitchNotFound, RealSwitch, find_freeswitch

        try:
            install = find_freeswitch(REPO)
        except FreeSwitchNotFound as missing:
            note(f"no real FreeSWITCH ({missing}); using the simulator")
        else:
            switch = RealSwitch(install, workdir / "freeswitch")
            await asyncio.to_thread(switch.start)
            note(f"real FreeSWITCH on 127.0.0.1:{switch.port}")
            return RealPeer(switch), switch
    peer = SimPeer(workdir)
    await peer.start()
    note(f"simulator on 127.0.0.1:{peer.port} (time scale {peer.scale})")
    return peer, None


async def wait_state(serve: ServeProcess, invite_id: str, state: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        code, out = await run_cli("status", "--json", "--socket", serve.socket)
        if code == 0 and any(r["invite_id"] == invite_id and r["state"] == state
                             for r in json.loads(out)["invites"]):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{invite_id} never reached {state}")


async def invite(serve: ServeProcess, ext: str, timeout: int, *, wait: bool) -> str:
    argv = ["invite", ext, "--room", ROOM, "--timeout", str(timeout), "--json",
            "--socket", serve.socket]
    code, out = await run_cli(*argv, *([] if wait else ["--no-wait"]))
    first = json.loads(out.splitlines()[0])
    last = json.loads(out.splitlines()[-1])
    note(f"invite {ext}: {first['invite_id']} "
         + (f"-> {last.get('outcome')} (exit {code})" if wait else "placed (--no-wait)"))
    return str(first["invite_id"])


async def main(use_sim: bool) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="confguard-webhook-demo-"))
    peer, switch = await open_peer(workdir, use_sim)
    link = EslLink(peer)
    await link.start()
    secret_file = workdir / "webhook-secret"
    secret_file.write_text(SECRET + "\n")
    secret_file.chmod(0o600)
    receiver = Receiver(SECRET, on_hit=lambda hit: print(hit.line(), flush=True))
    await receiver.start()
    first_of_a: dict[str, str] = {}

    def policy(hit: Hit) -> int:  # A's seq 2 is refused once: a retry, same seq
        first_of_a.setdefault("id", str(hit.body.get("invite_id")))  # the first invite seen
        if hit.body.get("invite_id") == first_of_a.get("id") and hit.body.get("seq") == 2 \
                and hit.attempt == 1:
            return 500
        return 200

    receiver.policy = policy
    env = {
        "CONFGUARD_ESL_HOST": "127.0.0.1",
        "CONFGUARD_ESL_PORT": str(link.port),
        "CONFGUARD_ESL_PASSWORD_FILE": str(peer.password_file),
        "CONFGUARD_WEBHOOKS_URLS": receiver.url(),
        "CONFGUARD_WEBHOOKS_SECRET_FILE": str(secret_file),
        "CONFGUARD_WEBHOOKS_RETRY_INITIAL": "0.5",
        "CONFGUARD_WEBHOOKS_RETRY_MAX": "2",
        "CONFGUARD_INVITE_PROMPT": "tone_stream://%(200,100,440)",
    }
    serve = ServeProcess(env, workdir)
    note(f"receiver on {receiver.url()}; starting `confguard serve` (journal {workdir})")
    await serve.start()
    try:
        # A: the receiver is up
        code, out = await run_cli("invite", "1000", "--room", ROOM, "--timeout", "20",
                                  "--no-wait", "--json", "--socket", serve.socket)
        assert code == 0, out
        placed = json.loads(out)["invite_id"]
        assert first_of_a.setdefault("id", placed) == placed
        note(f"invite 1000: A = {first_of_a['id']} placed; its seq 2 gets a 500 once")
        await receiver.wait_until(lambda: outcome_delivered(receiver, first_of_a["id"]), 30)
        # B: never presses; bounded by its FreeSWITCH timer
        b_timeout = peer.secs(25)
        b = await invite(serve, "1001", b_timeout, wait=False)
        await wait_state(serve, b, "waiting_key", 15)
        await receiver.wait_until(
            lambda: any(x.get("invite_id") == b and x.get("state") == "waiting_key"
                        for x in receiver.delivered()), 10)
        await receiver.stop()
        note("receiver DOWN (its port refuses connections)")
        c = await invite(serve, "1000", 20, wait=True)
        await asyncio.sleep(2.0)
        note("SIGKILL the daemon (B still waiting for its key, C's events undelivered)")
        serve.kill()
        await asyncio.sleep(2.0)
        note("starting a new `confguard serve` on the same journal (receiver still down)")
        await serve.start()
        await asyncio.sleep(3.0)
        await receiver.start()
        note("receiver UP again, same port")
        await receiver.wait_until(lambda: outcome_delivered(receiver, c), 30)
        note(f"waiting for B's FreeSWITCH timer (+{b_timeout} s from its invite)")
        await receiver.wait_until(lambda: outcome_delivered(receiver, b), 60)
    finally:
        serve.stop()
        await receiver.stop()
        await link.stop()
        if switch is not None:
            await asyncio.to_thread(switch.stop)  # type: ignore[attr-defined]
        elif isinstance(peer, SimPeer):
            await peer.stop()
    lanes = check_lanes(receiver.hits)
    print()
    names = {first_of_a["id"]: "A", b: "B", c: "C"}
    for (path, invite_id), seqs in lanes.items():
        hits = [h for h in receiver.hits if h.body.get("invite_id") == invite_id]
        repeated = sorted({int(h.body["seq"]) for h in hits
                           if sum(1 for o in hits if o.body["seq"] == h.body["seq"]) > 1})
        print(f"lane {path} {names.get(invite_id, '?')}={invite_id}: delivered seq {seqs}; "
              f"{len(hits)} requests; repeated seq {repeated or 'none'} (same body each time); "
              f"last: {hits[-1].body.get('outcome')}")
    log = serve.log.read_text()
    print(f"daemon log: webhook.attempt_failed x{log.count('webhook.attempt_failed')}, "
          f"webhook.outbox_loaded x{log.count('webhook.outbox_loaded')}, "
          f"webhook.given_up x{log.count('webhook.given_up')}; secret in the log: "
          f"{SECRET in log}")
    print("check_lanes: every request signed; per invite seq never went down; no gap; "
          "a repeated seq only with the same event id and body: OK")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sim", action="store_true", help="the simulator even if a real "
                        "FreeSWITCH is found")
    sys.exit(asyncio.run(main(parser.parse_args().sim)))
