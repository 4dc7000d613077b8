"""The simulator's parsers against the slower ones they replaced: the command-line parsers
(`split_args`, `parse_dial_string` of confguard.sim.switch) against character-by-character
loops, on random text made of the characters that matter (spaces, quotes, braces, commas,
equals signs); the Event Socket's `wire.CommandParser` against the regex-and-bytearray one, on
random command streams cut into random segments."""

from __future__ import annotations

import random
import re

from confguard.sim import switch as switch_module
from confguard.sim import wire
from confguard.sim.switch import parse_dial_string, parse_originate, split_args


def reference_split_args(text: str, *, keep_quotes: bool = False) -> list[str]:
    args: list[str] = []
    current: list[str] = []
    quoted = False
    has_token = False
    for char in text:
        if char == "'":
            quoted = not quoted
            has_token = True
            if keep_quotes:
                current.append(char)
        elif char == " " and not quoted:
            if has_token:
                args.append("".join(current))
            current, has_token = [], False
        else:
            current.append(char)
            has_token = True
    if has_token:
        args.append("".join(current))
    return args


def reference_parse_dial_string(dial: str) -> tuple[dict[str, str], str]:
    variables: dict[str, str] = {}
    if not dial.startswith("{"):
        return variables, dial
    depth, quoted, end = 0, False, -1
    for index, char in enumerate(dial):
        if char == "'":
            quoted = not quoted
        elif not quoted and char == "{":
            depth += 1
        elif not quoted and char == "}":
            depth -= 1
            if depth == 0:
                end = index
                break
    if end < 0:
        return variables, dial
    body, rest = dial[1:end], dial[end + 1 :]
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in body:
        if char == "'":
            quoted = not quoted
            current.append(char)
        elif char == "," and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    for part in parts:
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == "'" and value[-1] == "'":
            value = value[1:-1]
        variables[name.strip()] = value
    return variables, rest


ORIGINATE = (
    "{origination_uuid=U,originate_timeout=30,ignore_early_media=true,"
    "origination_caller_id_name='A, B',api_on_originate='sched_hangup +30 U ALLOTTED_TIMEOUT'}"
    "user/1000 'm:|:play_and_get_digits:1 1 31 5000 # tone_stream://%(250,250,440) x|park' inline"
)


def test_split_args_and_dial_strings_match_the_character_loops() -> None:
    ops = random.Random(11)
    alphabet = [" ", " ", "'", "{", "}", ",", "=", "a", "b", "\t", "%(1,2)"]
    samples = ["", " ", "'", "''", "a 'b c", "{a=b}", "{a='x,y'}user/1", ORIGINATE]
    for _ in range(5000):
        samples.append("".join(ops.choice(alphabet) for _ in range(ops.randrange(16))))
    for text in samples:
        for keep in (False, True):
            assert split_args(text, keep_quotes=keep) == reference_split_args(
                text, keep_quotes=keep
            ), (text, keep)
        dial = "{" + text if ops.random() < 0.7 else text
        assert parse_dial_string(dial) == reference_parse_dial_string(dial), dial
    first = split_args(ORIGINATE, keep_quotes=True)[0]
    assert parse_dial_string(first)[0]["origination_caller_id_name"] == "A, B"


def plain_parse_originate(arg: str) -> tuple[list[str], dict[str, str], str] | None:
    args = reference_split_args(arg, keep_quotes=True)
    if len(args) < 2:
        return None
    variables, target = reference_parse_dial_string(args[0])
    return args, variables, target


def test_originate_forms_parse_as_the_plain_text() -> None:
    """`parse_originate` keeps one parse per form (the text with its origination_uuid masked):
    on random commands whose uuids differ while the rest repeats, and whose uuid value also
    turns up elsewhere (in quotes, in names, in the target), it gives what parsing the text
    itself gives -- order of the variables included -- and a caller's changes do not leak."""
    ops = random.Random(17)
    alphabet = [" ", "'", "{", "}", ",", "=", "a", "b", "-", "1", "\t", "user/1 park"]
    forms = ["".join(ops.choice(alphabet) for _ in range(ops.randrange(24))) for _ in range(300)]
    forms += ["{origination_uuid=U,a='x U,y'}user/1 park", "{U=U}loopback/U/x U", ORIGINATE]
    for _ in range(6000):
        form = ops.choice(forms)
        uuid = "".join(ops.choice("0123456789abcdef-") for _ in range(ops.randrange(1, 12)))
        if "origination_uuid" not in form:
            cut = ops.randrange(len(form) + 1)
            form = form[:cut] + "{origination_uuid=U," + form[cut:]
        arg = form.replace("U", uuid)
        got = parse_originate(arg)
        want = plain_parse_originate(arg)
        assert got == want, arg
        if got is not None:
            assert list(got[1]) == list(want[1]), arg  # the variables' order
            got[0].append("extra")
            got[1]["extra"] = "1"
            assert parse_originate(arg) == want, arg
    assert len(switch_module._ORIGINATE_FORMS) <= switch_module._ORIGINATE_FORMS_KEPT


class ReferenceCommandParser:
    """`wire.CommandParser` as it was: the whole buffer searched with the regex for every
    block, each block cut off the front of a bytearray."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._pending: tuple[str, tuple[tuple[str, str], ...], int] | None = None

    def feed(self, data: bytes) -> list[wire.ClientCommand]:
        self._buffer += data
        commands = []
        while True:
            command = self._next()
            if command is None:
                return commands
            commands.append(command)

    def _next(self) -> wire.ClientCommand | None:
        if self._pending is None:
            while self._buffer[:1] in (b"\n", b"\r") and self._buffer:
                del self._buffer[:1]
            match = re.search(rb"\r?\n\r?\n", self._buffer)
            if match is None:
                if len(self._buffer) > wire.MAX_HEADER_BYTES:
                    raise wire.WireError("command block without an end")
                return None
            text = bytes(self._buffer[: match.start()]).decode("utf-8", "surrogateescape")
            del self._buffer[: match.end()]
            lines = text.replace("\r\n", "\n").split("\n")
            headers = []
            for header_line in lines[1:]:
                name, sep, value = header_line.rstrip("\r").partition(":")
                if sep:
                    headers.append((name.strip(), value.lstrip(" ")))
            length_text = next((v for n, v in headers if n.lower() == "content-length"), None)
            if length_text is None:
                return wire.ClientCommand(lines[0].rstrip("\r"), tuple(headers))
            try:
                length = int(length_text.strip())
            except ValueError as exc:
                raise wire.WireError("Content-Length is not a number") from exc
            if length < 0 or length > wire.MAX_BODY_BYTES:
                raise wire.WireError("Content-Length out of range")
            self._pending = (lines[0].rstrip("\r"), tuple(headers), length)
        line, headers, length = self._pending
        if len(self._buffer) < length:
            return None
        body = bytes(self._buffer[:length])
        del self._buffer[:length]
        self._pending = None
        return wire.ClientCommand(line, tuple(headers), body)


def test_command_parser_matches_the_one_it_replaced() -> None:
    """Random streams of command blocks (headers, `\\r\\n` and `\\n` line ends, stray blank
    lines, bodies holding blank lines, non-UTF-8 bytes, bad Content-Lengths) cut into random
    segments: the same commands, in the same order, completed by the same segment, and the
    same error."""
    ops = random.Random(5)
    pieces = [
        b"api status", b"bgapi originate {a=b}user/1 &park", b"filter Unique-ID abc",
        b"event plain ALL", b"exit", b"caf\xe9", b"sendevent CUSTOM", b"x",
    ]  # fmt: skip
    header_pieces = [b"Job-UUID: j-1", b"Event-Subclass: a::b", b"X-Odd:  spaced ", b"nocolon"]
    for _ in range(3000):
        stream = bytearray()
        for _ in range(ops.randrange(1, 6)):
            eol = ops.choice([b"\n", b"\r\n"])
            stream += ops.choice([b"", b"\n", b"\r\n", b"\n\n"])  # stray blank lines
            block = [ops.choice(pieces)] + [
                ops.choice(header_pieces) for _ in range(ops.randrange(3))
            ]
            roll = ops.random()
            body = b""
            if roll < 0.3:
                body = ops.choice([b"", b"a", b"two\n\nlines\r\n", b"\xff\xfe"]) * ops.randrange(3)
                block.append(b"Content-Length: %d" % len(body))
            elif roll < 0.33:
                block.append(ops.choice([b"Content-Length: lots", b"Content-Length: -1"]))
            stream += eol.join(block) + eol + ops.choice([eol, b"\n", b"\r\n"]) + body
        if ops.random() < 0.3:
            stream += b"api unfinished"[: ops.randrange(1, 14)]  # an unfinished block at the end
        cuts = sorted(ops.sample(range(1, len(stream)), min(len(stream) - 1, ops.randrange(4))))
        bounds = zip([0, *cuts], [*cuts, len(stream)], strict=True)
        segments = [bytes(stream[a:b]) for a, b in bounds]
        ours, reference = wire.CommandParser(), ReferenceCommandParser()
        for segment in segments:
            try:
                expected: object = reference.feed(segment)
            except wire.WireError:
                expected = wire.WireError
            try:
                got: object = ours.feed(segment)
            except wire.WireError:
                got = wire.WireError
            assert got == expected, (bytes(stream), segments)
            if expected is wire.WireError:
                break
            assert ours.buffered == len(reference._buffer)


def test_command_parser_gives_up_on_a_block_without_an_end_as_before() -> None:
    """A block that has no blank line within MAX_HEADER_BYTES is garbage, whether it came in
    one segment or many, after whole commands or not; a body may be longer."""
    limit = wire.MAX_HEADER_BYTES
    for prefix in (b"", b"api status\n\n"):
        for size in (limit, limit + 1):
            for segments in ([prefix + b"x" * size], [prefix, b"x" * (size - 1), b"x"]):
                outcomes = []
                for parser in (wire.CommandParser(), ReferenceCommandParser()):
                    try:
                        outcomes.append([parser.feed(segment) for segment in segments])
                    except wire.WireError:
                        outcomes.append(["error"])
                assert outcomes[0] == outcomes[1]
                assert (outcomes[0] == ["error"]) is (size > limit)
    body = b"y" * (limit + 10)
    raw = b"sendevent CUSTOM\nContent-Length: %d\n\n" % len(body) + body
    parser = wire.CommandParser()
    assert parser.feed(raw[:100]) == [] and parser.feed(raw[100:])[0].body == body
def reference_atoi(text: str) -> int:
    sign, digits = 1, ""
    rest = text.strip()
    if rest[:1] in "+-" and rest:
        sign = -1 if rest[0] == "-" else 1
        rest = rest[1:]
    for char in rest:
        if not char.isdigit():
            break
        digits += char
    return sign * int(digits) if digits else 0


def test_atoi_matches_the_character_loop() -> None:
    """`_atoi`'s shortcut for plain ASCII digits reads them as the loop does (and leaves to the
    loop what int() would read otherwise: signs, spaces, underscores, other scripts' digits)."""
    from confguard.sim.switch import _atoi

    ops = random.Random(3)
    alphabet = ["0", "1", "7", "9", "+", "-", " ", "_", "a", "\u0663", "\u00b2"]
    samples = ["", "0", "007", "30", "+5", "-5", " 5", "1_000", "\u0663", "12abc"]
    samples += ["".join(ops.choice(alphabet) for _ in range(ops.randrange(8))) for _ in range(3000)]
    for text in samples:
        try:
            expected = reference_atoi(text)
        except ValueError:  # the loop's int() of other scripts' digits
            continue
        assert _atoi(text) == expected, text


def test_new_uuid_is_random_version_4() -> None:
    import uuid

    from confguard.sim.switch import new_uuid

    made = [new_uuid() for _ in range(2000)]
    assert len(set(made)) == len(made)
    for text in made:
        parsed = uuid.UUID(text)
        assert str(parsed) == text  # lower-case, 8-4-4-4-12
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
    # every other bit is random: each hex digit outside the version and variant nibbles varies
    for position in (0, 7, 9, 15, 20, 35):
        assert len({text[position] for text in made}) > 8, position


def test_a_forked_child_draws_uuids_of_its_own() -> None:
    """The random bytes behind `new_uuid` are drawn ahead: a forked child must not hand out
    the ones its parent is about to (the pool starts over in the child)."""
    import os

    from confguard.sim.switch import new_uuid

    new_uuid()  # the pool is drawn
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next uuid, then out at once
        os.write(write_end, new_uuid().encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    child = os.read(read_end, 100).decode()
    os.close(read_end)
    assert len(child) == 36 and child != new_uuid()
