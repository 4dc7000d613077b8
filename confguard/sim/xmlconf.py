"""The simulator's XML configuration and the `xml_locate` api command that prints it.

Owns the part of FreeSWITCH's XML registry the simulator models: the `configuration` section with
`conference.conf` (profile `default`, no caller controls) and the `dialplan` section with context
`default`, whose extension `confguard_join` sends 7001 to `conference test1@default` -- the set-up
confguard.realswitch's conf.py gives the real switch, so `confguard check` finds on the
simulator what it finds there. (Calls the switch routes to 7001, `Switch._route`, run
`SimConfig.join_actions`, by default these.) Other sections
(`directory`, `languages`, ...) and the real switch's other configurations (switch.conf,
modules.conf, ...) are not modelled: `xml_locate` finds nothing there.

`xml_locate` as transcript 17 recorded it (confguard.realswitch):
- `xml_locate <section>`: the whole section (section name in any case);
- `xml_locate <section> <tag> <attr> <value>`: the section's child `<tag>` (exact) whose `attr`
  (exact) is `value` (in any case);
- not found: `can't find anything`; none, two or three words: `-ERR bad args`.

The printout is the registry's text form: every element with an explicit close tag, attributes
in their order, and the whitespace of the document the switch read kept between elements. The
rules, as the recordings show them (transcript 17 and the real switch's `xml_locate directory`
and `xml_locate configuration` while making it):
- before each child: the text the document had there (a newline and the document's indentation),
  or a newline when the element's content started with the child directly; then two spaces per
  level below the printed element;
- after each child: a newline;
- before the close tag of an element with children: the text the document had after its last
  child, or two spaces per level when there was none;
- after the printed element: a newline.
So the printout depends on how the document was laid out: `SOURCE` is written as conf.py lays out
these sections (two spaces per level, one element a line, caller-controls' group inline).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from xml.sax.saxutils import quoteattr

NOT_FOUND = "can't find anything\n"
BAD_ARGS = "-ERR bad args\n"
INDENT = "  "  # per level below the printed element

# The simulator's sections, laid out as conf.py writes them for the real switch (the
# printout keeps this whitespace). {domain}, {extension}, {context}, {room}: from the switch.
SOURCE = """\
<document type="freeswitch/xml">
  <section name="configuration">
    <configuration name="conference.conf">
      <caller-controls><group name="none"></group></caller-controls>
      <profiles>
        <profile name="default">
          <param name="domain" value={domain}/>
          <param name="rate" value="8000"/>
          <param name="interval" value="20"/>
          <param name="energy-level" value="0"/>
          <param name="caller-controls" value="none"/>
          <param name="comfort-noise" value="false"/>
        </profile>
      </profiles>
    </configuration>
  </section>
  <section name="dialplan">
    <context name={context}>
      <extension name="confguard_join">
        <condition field="destination_number" expression={expression}>
          <action application="answer"/>
          <action application="conference" data={target}/>
          <action application="hangup"/>
        </condition>
      </extension>
    </context>
  </section>
</document>
"""


def build_document(domain: str, extension: str, context: str, room: str) -> ET.Element:
    """The registry: conference.conf for `domain`, `extension` in `context` joining `room`
    (with profile `default`)."""
    text = SOURCE.format(
        domain=quoteattr(domain),
        context=quoteattr(context),
        expression=quoteattr(f"^{extension}$"),
        target=quoteattr(f"{room}@default"),
    )
    return ET.fromstring(text)


def to_text(element: ET.Element) -> str:
    """`element` printed as the registry prints it (see the module docstring)."""
    out: list[str] = []
    _print(element, 0, out)
    out.append("\n")
    return "".join(out)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _attribute(value: str) -> str:
    return '"' + _escape(value).replace('"', "&quot;") + '"'


def _print(element: ET.Element, depth: int, out: list[str]) -> None:
    attributes = "".join(f" {name}={_attribute(value)}" for name, value in element.attrib.items())
    out.append(f"<{element.tag}{attributes}>")
    children = list(element)
    if children:
        for index, child in enumerate(children):
            before = (element.text if index == 0 else children[index - 1].tail) or ""
            if not before and index == 0:
                before = "\n"
            out.append(before + INDENT * (depth + 1))
            _print(child, depth + 1, out)
            out.append("\n")
        out.append(children[-1].tail or INDENT * depth)
    else:
        out.append(_escape(element.text or ""))
    out.append(f"</{element.tag}>")


def xml_locate(document: ET.Element, arg: str) -> str:
    """The `xml_locate` api reply for the words `arg` over `document`."""
    words = arg.split()
    if len(words) in (0, 2, 3):
        return BAD_ARGS
    wanted = words[0].lower()
    section = next(
        (s for s in document.findall("section") if s.get("name", "").lower() == wanted), None
    )
    if section is None:
        return NOT_FOUND
    if len(words) == 1:
        return to_text(section)
    tag, attribute, value = words[1], words[2], " ".join(words[3:]).lower()
    for child in section:
        found = child.attrib.get(attribute)
        if child.tag == tag and found is not None and found.lower() == value:
            return to_text(child)
    return NOT_FOUND


def dialplan_extensions(path: str) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
    """`SimConfig.extensions` from a dialplan file's `<extension>`s: each one's first
    `destination_number` condition (its expression) and that condition's actions."""
    root = ET.parse(path).getroot()
    found: list[tuple[str, tuple[tuple[str, str], ...]]] = []
    for extension in root.iter("extension"):
        for condition in extension.findall("condition"):
            if condition.get("field") != "destination_number":
                continue
            actions = tuple(
                (action.get("application", ""), action.get("data", ""))
                for action in condition.findall("action")
            )
            found.append((condition.get("expression", ""), actions))
            break
    return tuple(found)
