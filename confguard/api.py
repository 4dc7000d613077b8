"""The control API: HTTP/1.1 + JSON on a Unix socket, server and client.

It owns the request schema of an invite and the socket; the engine owns what happens to an invite.
HTTP is parsed by h11 (sans-I/O) on both sides, so neither hand-parses a request line.

    POST   /invites              {"extensions": [...], "room": ..., ...}  -> 201 {"invites": [...]}
                                 with `Idempotency-Key: K`: a retry -> 200 {"invites": [...]} and
                                 `Idempotent-Replayed: true`, nothing placed (confguard.idempotency)
    GET    /invites              active invites                            -> 200 {"invites": [...]}
    GET    /invites/<id>         one invite (live or recently ended)       -> 200 {...}
    GET    /invites/<id>/events  its updates from the start, then live     -> 200 NDJSON stream
    DELETE /invites/<id>         operator cancel                           -> 202 {...}
    GET    /status               the ESL connection and the invite count   -> 200 {...}

Errors are JSON `{"error": {"kind": ..., "message": ..., "field": ...}}` with 400 (bad input:
nothing was sent to FreeSWITCH), 404, 405, 409 (also: an idempotency key used for another request),
503 (FreeSWITCH not connected / shutting down).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import h11
import structlog

from confguard.config import InviteConfig
from confguard.idempotency import HEADER as IDEMPOTENCY_HEADER
from confguard.idempotency import KEY_RULE as KEY_RULE_TEXT
from confguard.idempotency import REPLAYED_HEADER, IdempotencyStore, check_key, request_hash
from confguard.invite import BadInput, InviteSpec, JoinTarget

if TYPE_CHECKING:  # the client side (the CLI) never loads the engine, ESL and genesis
    from confguard.engine import Engine

log = structlog.get_logger("confguard.api")

MAX_BODY = 64 * 1024
MAX_EXTENSIONS = 100
REQUEST_FIELDS = {
    "extensions",
    "room",
    "timeout",
    "ring_timeout",
    "key",
    "decline_key",
    "prompt",
    "caller_id_name",
    "caller_id_number",
    "variables",
    "join",
    "notify",  # status webhook URL(s) of these invites: a string or a list (confguard.webhooks)
    "max_duration",
    "muted",
    "deaf",
    "moderator",
    "endconf",
    "via",
}


def specs_from_request(
    body: Mapping[str, Any], defaults: InviteConfig, routes: Mapping[str, Any] | None = None
) -> list[InviteSpec]:
    """Validated invite specs for a request body; what it leaves out comes from `[invite]`
    (and, for `caller_id_number` / `ring_timeout`, first from its route: `routes`, the
    `[routes.<name>]` of confguard.routes). Raises BadInput naming the field."""
    unknown = set(body) - REQUEST_FIELDS
    if unknown:
        name = sorted(unknown)[0]
        raise BadInput(name, str(body[name])[:80], "unknown field")
    extensions = body.get("extensions")
    if not isinstance(extensions, list) or not extensions:
        raise BadInput("extensions", str(extensions)[:80], "a non-empty list of extensions")
    if len(extensions) > MAX_EXTENSIONS:
        raise BadInput("extensions", str(len(extensions)), f"at most {MAX_EXTENSIONS} at once")
    for extension in extensions:
        if not isinstance(extension, str):  # null would otherwise be dialled as user/None
            raise BadInput("extension", str(extension)[:80], "each extension is a string")
    if len(set(extensions)) != len(extensions):
        raise BadInput("extensions", ",".join(map(str, extensions))[:80], "listed twice")
    room = body.get("room")
    if not isinstance(room, str):
        raise BadInput("room", str(room), "required: the conference room, e.g. test1")

    def pick(name: str, default: Any) -> Any:
        value = body.get(name)
        return default if value is None else value

    for name in ("muted", "deaf", "moderator", "endconf"):
        value = body.get(name)
        if value is not None and not isinstance(value, bool):
            raise BadInput(name, str(value)[:80], "true or false")
    for name in ("timeout", "ring_timeout", "max_duration"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise BadInput(name, str(value), "a whole number of seconds")
    variables = body.get("variables")
    variables = {} if variables is None else variables
    if not isinstance(variables, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in variables.items()
    ):
        raise BadInput("variables", str(variables)[:80], "an object of string values")
    join = body.get("join")
    if join is None:
        if defaults.join_mode == "dialplan":
            target = JoinTarget.dialplan(defaults.join_extension, defaults.join_context)
        else:
            target = JoinTarget.inline(room)
    elif isinstance(join, str) and join == "inline":
        target = JoinTarget.inline(room)
    elif isinstance(join, str) and " " in join:
        extension, _, context = join.partition(" ")
        target = JoinTarget.dialplan(extension, context)
    else:
        raise BadInput("join", str(join)[:80], "'inline' or '<extension> <context>'")
    notify = body.get("notify")
    notify = [notify] if isinstance(notify, str) else notify
    if notify is not None and not (
        isinstance(notify, list) and all(isinstance(url, str) for url in notify)
    ):
        raise BadInput("notify", str(notify)[:80], "a URL or a list of URLs")
    route = _route_of(body, defaults, routes or {})
    if route is not None:
        defaults = replace(
            defaults,
            caller_id_number=route.caller_id_number or defaults.caller_id_number,
            ring_timeout=route.ring_timeout or defaults.ring_timeout,
        )
    timeout = pick("timeout", defaults.timeout)
    ring_timeout = body.get("ring_timeout", defaults.ring_timeout)
    if ring_timeout is not None and ring_timeout > timeout:
        ring_timeout = timeout if body.get("ring_timeout") is None else ring_timeout
    return [
        InviteSpec(
            extension=str(extension),
            room=room,
            timeout=timeout,
            ring_timeout=ring_timeout,
            key=pick("key", defaults.key),
            decline_key=pick("decline_key", defaults.decline_key),
            prompt=pick("prompt", defaults.prompt),
            caller_id_name=pick("caller_id_name", defaults.caller_id_name),
            caller_id_number=pick("caller_id_number", defaults.caller_id_number),
            hangup_cause=defaults.hangup_cause,
            join=target,
            reprompt_interval=defaults.reprompt_interval,
            variables=dict(variables),
            notify=tuple(notify or ()),
            max_duration=pick("max_duration", defaults.max_duration),
            muted=pick("muted", defaults.muted),
            deaf=pick("deaf", defaults.deaf),
            moderator=pick("moderator", defaults.moderator),
            endconf=pick("endconf", defaults.endconf),
            route=route,
        )
        for extension in extensions
    ]


def _route_of(body: Mapping[str, Any], defaults: InviteConfig, routes: Mapping[str, Any]) -> Any:
    """The request's `via` (else `[invite] via`) as a DialRoute; None for `user/{ext}`."""
    from confguard.routes import DEFAULT_ROUTE_NAME, lookup

    via = body.get("via")
    if via is None:
        via = defaults.via
    if via is None or via == DEFAULT_ROUTE_NAME:
        return None
    return lookup(routes, via, "via")


class HttpError(Exception):
    def __init__(self, status: int, kind: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"kind": kind, "message": message, **extra}}


class ControlServer:
    """Serves the control API for one engine on a Unix socket (mode 0660 by default)."""

    def __init__(
        self,
        engine: Engine,
        path: str,
        *,
        mode: int = 0o660,
        defaults: InviteConfig | None = None,
        status: Callable[[], dict[str, Any]] | None = None,
        idempotency: IdempotencyStore | None = None,
        journal: Any = None,
        check_spec: Callable[[InviteSpec], None] | None = None,
        routes: Mapping[str, Any] | None = None,
    ) -> None:
        self.engine = engine
        self.idempotency = idempotency or IdempotencyStore(journal)
        self.journal = journal  # finished invites no longer in memory are read from it
        # The daemon's own rules for a valid spec (webhooks: a notify URL needs a secret);
        # raises BadInput -> 400, before any invite of the request is placed.
        self.check_spec = check_spec
        self.path = path
        self.mode = mode
        self.defaults = defaults or InviteConfig()
        self.routes = dict(routes or {})  # [routes.<name>] (confguard.routes.DialRoute)
        self._status = status or (lambda: {})
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, mode=0o750, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if _socket_in_use(self.path):
                raise OSError(f"another confguard is already listening on {self.path}")
            os.unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o777 & ~self.mode)
        try:
            sock.bind(self.path)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, self.mode)
        self._server = await asyncio.start_unix_server(self._serve_client, sock=sock)
        log.info("api.listening", socket=self.path, mode=oct(self.mode))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._clients):
                task.cancel()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_BODY)
        try:
            request, body = await _read_message(conn, reader)
            if request is None:
                return
            await self._dispatch(conn, writer, request, body)
        except HttpError as exc:
            await _send_json(conn, writer, exc.status, exc.body)
        except (h11.RemoteProtocolError, ValueError) as exc:
            with contextlib.suppress(Exception):
                await _send_json(
                    conn, writer, 400, {"error": {"kind": "http", "message": str(exc)}}
                )
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("api.error")
            with contextlib.suppress(Exception):
                await _send_json(
                    conn, writer, 500, {"error": {"kind": "internal", "message": "see the log"}}
                )
        finally:
            if task is not None:
                self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _dispatch(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, request: h11.Request, body: bytes
    ) -> None:
        from confguard.engine import EngineError, UnknownInvite

        method = request.method.decode()
        parts = [p for p in request.target.decode().split("?", 1)[0].split("/") if p]
        if parts == ["status"] and method == "GET":
            status = dict(self._status())
            status["invites"] = self.engine.active()
            status["members"] = self.engine.members.rows()
            return await _send_json(conn, writer, 200, status)
        if parts == ["invites"] and method == "GET":
            return await _send_json(conn, writer, 200, {"invites": self.engine.active()})
        if parts == ["invites"] and method == "POST":
            key = _idempotency_key(request)
            if key is None:
                return await _send_json(conn, writer, 201, await self._create(body))
            code, payload, headers = await self._create_once(body, key)
            return await _send_json(conn, writer, code, payload, headers)
        if len(parts) >= 2 and parts[0] == "invites":
            try:
                run = self.engine.get(parts[1])
            except UnknownInvite as exc:
                ended = self._from_journal(parts[1])
                if ended is None or len(parts) > 3 or parts[2:] not in ([], ["events"]):
                    raise HttpError(404, "unknown_invite", str(exc)) from None
                if method != "GET":
                    raise HttpError(
                        409, "already_ended", f"invite {parts[1]} already ended"
                    ) from None
                if parts[2:] == ["events"]:
                    return await self._stream_ended(conn, writer, ended)
                return await _send_json(conn, writer, 200, {**ended, "history": [ended]})
            if len(parts) == 2 and method == "GET":
                now = asyncio.get_running_loop().time()
                return await _send_json(
                    conn, writer, 200, {**run.summary(now), "history": list(run.history)}
                )
            if len(parts) == 2 and method == "DELETE":
                try:
                    self.engine.cancel(run.invite_id)
                except EngineError as exc:
                    raise HttpError(409, "already_ended", str(exc)) from None
                return await _send_json(conn, writer, 202, {"cancelling": run.invite_id})
            if parts[2:] == ["events"] and method == "GET":
                return await self._stream(conn, writer, run.invite_id)
        if method not in ("GET", "POST", "DELETE"):
            raise HttpError(405, "method_not_allowed", f"{method} is not supported")
        raise HttpError(404, "not_found", "no such endpoint")

    def _parse_create(self, body: bytes) -> list[InviteSpec]:
        try:
            fields = json.loads(body or b"{}")
        except ValueError:
            raise HttpError(400, "bad_json", "the request body is not JSON") from None
        if not isinstance(fields, dict):
            raise HttpError(400, "bad_json", "the request body must be a JSON object")
        try:
            specs = specs_from_request(fields, self.defaults, self.routes)
            if self.check_spec is not None:
                for spec in specs:
                    self.check_spec(spec)
        except BadInput as exc:
            raise HttpError(
                400, "bad_input", str(exc), field=exc.field, value=exc.value, reason=exc.reason
            ) from None
        return specs

    async def _create(self, body: bytes) -> dict[str, Any]:
        created: list[dict[str, Any]] = []
        for spec in self._parse_create(body):
            created.append(await self._place(spec, created))
        return {"invites": created}

    async def _place(self, spec: InviteSpec, created: list[dict[str, Any]]) -> dict[str, Any]:
        """One invite; 503 (with what this request placed so far) when it cannot be placed."""
        from confguard.engine import EngineError, NotConnected

        try:
            run = await self.engine.invite(spec)
        except NotConnected as exc:
            raise HttpError(503, "not_connected", str(exc), created=created) from None
        except EngineError as exc:
            raise HttpError(503, "unavailable", str(exc), created=created) from None
        return {"invite_id": run.invite_id, "uuid": run.call_uuid, "ext": spec.extension,
                "room": spec.room}

    async def _create_once(
        self, body: bytes, key: str
    ) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        """`POST /invites` with an idempotency key (the rules: confguard.idempotency)."""
        from confguard.journal import JournalError

        specs = self._parse_create(body)  # 400 here: the key is not stored
        digest = request_hash(specs)
        store = self.idempotency
        async with store.hold(key):
            try:
                row = store.lookup(key)
            except JournalError as exc:
                raise HttpError(503, "journal_unavailable",
                                f"cannot read the {IDEMPOTENCY_HEADER} from the journal: {exc}; "
                                "nothing was sent") from None
            if row is not None and row["request_hash"] != digest:
                raise HttpError(
                    409, "idempotency_conflict",
                    f"{IDEMPOTENCY_HEADER} {key!r} was used for a different request (other "
                    "extensions, room or options); nothing was sent -- use a new key",
                    field=IDEMPOTENCY_HEADER, invites=[i["invite_id"] for i in row["invites"]],
                )
            earlier: list[dict[str, Any]] = list(row["invites"]) if row else []
            created_at = row["created_at"] if row else store.clock()
            placed = {item["ext"] for item in earlier}
            created = list(earlier)
            fresh = 0
            if row is None or not row["complete"]:
                for spec in specs:
                    if spec.extension in placed:
                        continue
                    created.append(await self._place(spec, created))
                    fresh += 1
                    # before this invite's originate can be written: no await since it returned
                    store.record(key, digest, created, complete=False, created_at=created_at)
                store.record(key, digest, created, complete=True, created_at=created_at)
        order = {spec.extension: n for n, spec in enumerate(specs)}
        created.sort(key=lambda item: order.get(item["ext"], len(order)))
        if fresh:
            log.info("api.idempotency_stored", key=key, placed=fresh, earlier=len(earlier))
            return 201, {"invites": created}, []
        log.info("api.idempotency_replayed", key=key,
                 invites=[item["invite_id"] for item in created])
        return 200, {"invites": created}, [(REPLAYED_HEADER, "true")]

    def _from_journal(self, invite_id: str) -> dict[str, Any] | None:
        """A finished invite the engine no longer holds (e.g. from before a restart), as its
        final update, from the journal; None when it is not there (or still unfinished)."""
        if self.journal is None:
            return None
        try:
            record = self.journal.get(invite_id)
        except Exception:
            log.exception("journal.error", op="get")
            return None
        if record is None or not record.finished:
            return None
        return {
            "seq": 0, "invite_id": record.invite_id, "uuid": record.call_uuid,
            "ext": record.ext, "room": record.room, "state": "ended", "outcome": record.outcome,
            "cause": record.cause,
            "elapsed_ms": round((record.total_seconds or 0.0) * 1000),
            "ts": record.ended_at, "from_journal": True,
        }

    async def _stream_ended(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, update: dict[str, Any]
    ) -> None:
        headers = [("content-type", "application/x-ndjson"), ("cache-control", "no-store")]
        writer.write(conn.send(h11.Response(status_code=200, headers=headers)))
        writer.write(conn.send(h11.Data(data=json.dumps(update).encode() + b"\n")))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()

    async def _stream(self, conn: h11.Connection, writer: asyncio.StreamWriter, key: str) -> None:
        headers = [("content-type", "application/x-ndjson"), ("cache-control", "no-store")]
        writer.write(conn.send(h11.Response(status_code=200, headers=headers)))
        async for update in self.engine.follow(key):
            writer.write(conn.send(h11.Data(data=json.dumps(update).encode() + b"\n")))
            await writer.drain()
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()


def _idempotency_key(request: h11.Request) -> str | None:
    """The request's Idempotency-Key (validated: 400 naming the header), or None."""
    values = [v for name, v in request.headers if name == IDEMPOTENCY_HEADER.lower().encode()]
    if not values:
        return None
    if len(values) > 1:
        raise HttpError(400, "bad_input", f"{IDEMPOTENCY_HEADER}: given more than once",
                        field=IDEMPOTENCY_HEADER, reason="one header")
    try:
        return check_key(values[0].decode("ascii"))
    except (UnicodeDecodeError, BadInput) as exc:
        shown = values[0].decode("ascii", "replace")[:80]
        raise HttpError(400, "bad_input", f"{IDEMPOTENCY_HEADER}: {KEY_RULE_TEXT} (got {shown!r})",
                        field=IDEMPOTENCY_HEADER, value=shown, reason=KEY_RULE_TEXT) from exc


def _socket_in_use(path: str) -> bool:
    """True when something accepts connections on `path` (a stale socket file is not in use)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:
        return False
    finally:
        probe.close()
    return True


async def _read_message(
    conn: h11.Connection, reader: asyncio.StreamReader
) -> tuple[Any, bytes]:
    """One whole HTTP message (request or response head) and its body, through h11."""
    head: Any = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(65536)
            conn.receive_data(data)
            if not data and head is None:
                return None, b""
            continue
        if isinstance(event, (h11.Request, h11.Response)):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                raise HttpError(413, "too_large", f"the body is over {MAX_BODY} bytes")
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            return head, bytes(body)


async def _send_json(
    conn: h11.Connection, writer: asyncio.StreamWriter, status: int, payload: Any,
    extra_headers: Sequence[tuple[str, str]] = (),
) -> None:
    data = json.dumps(payload).encode()
    headers = [("content-type", "application/json"), ("content-length", str(len(data))),
               *extra_headers]
    writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
    writer.write(conn.send(h11.Data(data=data)))
    writer.write(conn.send(h11.EndOfMessage()))
    await writer.drain()


# --- the client ------------------------------------------------------------------------------


class DaemonUnreachable(Exception):
    """No daemon answers on the control socket."""


class ApiError(Exception):
    """The daemon answered with an error."""

    def __init__(self, status: int, body: Mapping[str, Any]) -> None:
        error = body.get("error", {}) if isinstance(body, Mapping) else {}
        super().__init__(error.get("message", f"HTTP {status}"))
        self.status = status
        self.kind = error.get("kind", "error")
        self.error = error


class ControlClient:
    """The CLI's side of the control API."""

    def __init__(self, path: str) -> None:
        self.path = path

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.open_unix_connection(self.path)
        except (FileNotFoundError, ConnectionRefusedError, PermissionError) as exc:
            raise DaemonUnreachable(f"{self.path}: {exc.strerror or exc}") from None

    async def request(self, method: str, target: str, body: Any = None) -> Any:
        return (await self.exchange(method, target, body))[1]

    async def exchange(
        self, method: str, target: str, body: Any = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> tuple[int, Any, dict[str, str]]:
        """`request` with extra request headers; returns the status, the JSON body and the
        response's headers (lower-case names). Raises ApiError for a 4xx/5xx."""
        reader, writer = await self._open()
        conn = h11.Connection(h11.CLIENT)
        try:
            data = b"" if body is None else json.dumps(body).encode()
            sent = [("host", "confguard"), ("content-length", str(len(data))), *headers]
            if body is not None:
                sent.append(("content-type", "application/json"))
            writer.write(conn.send(h11.Request(method=method, target=target, headers=sent)))
            writer.write(conn.send(h11.Data(data=data)) or b"")
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
            response, payload = await _read_message(conn, reader)
            if response is None:
                raise DaemonUnreachable(f"{self.path}: the daemon closed the connection")
            result = json.loads(payload) if payload else {}
            if response.status_code >= 400:
                raise ApiError(response.status_code, result)
            received = {name.decode().lower(): value.decode("latin-1")
                        for name, value in response.headers}
            return response.status_code, result, received
        finally:
            writer.close()

    async def follow(self, invite_id: str) -> AsyncIterator[dict[str, Any]]:
        reader, writer = await self._open()
        conn = h11.Connection(h11.CLIENT)
        try:
            target = f"/invites/{invite_id}/events"
            writer.write(conn.send(h11.Request(method="GET", target=target,
                                               headers=[("host", "confguard")])))
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
            pending = b""
            while True:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError:
                    raise DaemonUnreachable("the daemon closed the stream") from None
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(65536))
                    continue
                if isinstance(event, h11.Response) and event.status_code >= 400:
                    _, payload = await _read_message(conn, reader)
                    raise ApiError(event.status_code, json.loads(payload or b"{}"))
                if isinstance(event, h11.Data):
                    pending += event.data
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        if line.strip():
                            yield json.loads(line)
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    return
        finally:
            writer.close()
