"""The simulator's command-line parsers (`split_args`, `parse_dial_string` of confguard.sim.switch)
against the character-by-character loops they replaced, on random text made of the characters
that matter (spaces, quotes, braces, commas, equals signs)."""

from __future__ import annotations

import random

from confguard.sim.switch import parse_dial_string, split_args


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
