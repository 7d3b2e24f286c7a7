"""Who may send HL7 to the worklist: the "allowed senders" setting.

One entry per line: an IP address or network (`10.1.2.3`, `10.1.0.0/16`,
`2001:db8::/32`), or an `MSH-3^MSH-4` pair (sending application ^ sending
facility, compared with the first component of each field; `*` matches
anything, an empty part only an empty field).  Blank lines and text after
`#` are ignored.

Addresses are what a sender cannot forge over TCP; MSH-3/MSH-4 are text it
writes itself.  So when both kinds are listed a message must match both: an
address entry AND a pair entry.  No entry of a kind: that kind does not
restrict.  No entry at all: anyone may send (the admin page warns).
"""

import ipaddress
from dataclasses import dataclass

ANY = "*"


@dataclass(frozen=True)
class SenderRules:
    networks: tuple = ()
    pairs: tuple = ()  # (application, facility)
    nobody: bool = False  # the setting could not be read: refuse all

    @classmethod
    def parse(cls, text: str) -> "SenderRules":
        """The rules of a setting's text; ValueError naming the first bad line."""
        networks, pairs = [], []
        for number, line in enumerate((text or "").splitlines(), 1):
            entry = line.split("#", 1)[0].strip()
            if not entry:
                continue
            if "^" in entry:
                application, _, facility = entry.partition("^")
                if "^" in facility or not application.strip():
                    raise ValueError(f"line {number}: {entry!r} is not APPLICATION^FACILITY")
                pairs.append((application.strip(), facility.strip()))
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ValueError(
                    f"line {number}: {entry!r} is neither an IP address or network nor APPLICATION^FACILITY"
                ) from None
        return cls(tuple(networks), tuple(pairs))

    def allows_anyone(self) -> bool:
        return not self.networks and not self.pairs and not self.nobody

    def refusal(self, address: str, application: str, facility: str) -> str:
        """Why this sender may not send ("" if it may).  `application` and
        `facility` are the first components of MSH-3 and MSH-4."""
        if self.nobody:
            return "the allowed senders setting cannot be read"
        if self.networks and not self._address_listed(address):
            return f"sender address {address or '(unknown)'} is not an allowed sender"
        if self.pairs and not any(_match(a, application) and _match(f, facility) for a, f in self.pairs):
            return f"sending application^facility {application}^{facility} is not an allowed sender"
        return ""

    def _address_listed(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return any(ip.version == net.version and ip in net for net in self.networks)


def _match(pattern: str, value: str) -> bool:
    return pattern == ANY or pattern == value
