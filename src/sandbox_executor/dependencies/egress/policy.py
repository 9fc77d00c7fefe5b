"""Who the dependency installer may talk to: host parsing, address classes, the decision.

Pure functions and one small mutable class (the hosts learned during one install); the
proxy (``proxy.py``) does the I/O. A request is admitted in two steps:

1. by name (:meth:`EgressPolicy.admit`): the canonical (scheme, host, port) must be the
   index, a host the operator listed (``DEPENDENCY_ALLOWED_HOSTS``), a built-in file host
   of a known public index, or a host the index's own pages linked to;
2. by address (:meth:`EgressPolicy.admit_address`), for every address the proxy is about
   to connect to, after it resolved the name itself: public addresses pass; loopback and
   private ones for the index only at the addresses it had when the install started, for
   the hosts it linked to and the operator's hosts only where the index itself lives (its
   address class: an index on loopback may send pip to another loopback port, a public
   index never inside), and private ones for the operator's hosts; link-local, multicast,
   unspecified and reserved addresses never; the executor's own port never on a
   non-public address.

Host text is canonicalized before any comparison, in the forms a C resolver accepts:
``2130706433``, ``0x7f.1``, ``0177.0.0.1``, ``127.1``, ``[::ffff:127.0.0.1]`` and
``localhost.`` all compare as what they mean; userinfo, percent-encoding and zone ids are
refused outright.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

Scheme = Literal["http", "https"]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_PORTS: dict[str, int] = {"http": 80, "https": 443}
# Public indexes whose pages cannot be read through CONNECT but whose file host is known.
KNOWN_FILE_HOSTS: dict[str, tuple[str, ...]] = {
    "pypi.org": ("files.pythonhosted.org",),
    "test.pypi.org": ("test-files.pythonhosted.org",),
}
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_NUMERIC_PART = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)$")
_PORT = re.compile(r"^[0-9]{1,5}$")


class AddressClass(enum.Enum):
    PUBLIC = "public"
    PRIVATE = "private"  # RFC 1918, CGNAT, unique-local and other non-global unicast
    LOOPBACK = "loopback"
    LINK_LOCAL = "link_local"  # where cloud metadata endpoints live
    NEVER = "never"  # multicast, unspecified, broadcast, reserved


@dataclass(frozen=True)
class Target:
    """One place the installer may fetch from: scheme, canonical host, port."""

    scheme: Scheme
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True)
class Decision:
    """An admission answer; ``reason`` is a short fixed word (a metric label) when denied."""

    allowed: bool
    reason: str = ""


ALLOW = Decision(True)


def _ipv4_legacy(text: str) -> ipaddress.IPv4Address | None:
    """inet_aton(3)'s forms (1 to 4 parts, each decimal, 0-octal or 0x-hex), else None."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4 or not all(_NUMERIC_PART.match(p) for p in parts):
        return None
    values: list[int] = []
    for part in parts:
        if part.startswith("0x"):
            values.append(int(part[2:] or "0", 16))
        elif len(part) > 1 and part.startswith("0"):
            if not set(part) <= set("01234567"):
                raise ValueError("bad octal part in an IPv4 address")
            values.append(int(part, 8))
        else:
            values.append(int(part))
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (5 - len(values)):
        raise ValueError("IPv4 address part out of range")
    number = last
    for index, value in enumerate(head):
        number |= value << (8 * (3 - index))
    return ipaddress.IPv4Address(number)


def unwrap(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 one carries (mapped, NAT64, 6to4, Teredo), else itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if address.sixtofour is not None:
            return address.sixtofour
        if address.teredo is not None:
            return address.teredo[1]
    return address


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NEVER_V4 = (ipaddress.IPv4Network("0.0.0.0/8"), ipaddress.IPv4Network("240.0.0.0/4"))
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")


def classify(address: IPAddress) -> AddressClass:
    """The class of the address a connection would really reach."""
    address = unwrap(address)
    if address.is_multicast or address.is_unspecified:
        return AddressClass.NEVER
    if isinstance(address, ipaddress.IPv4Address) and any(address in net for net in _NEVER_V4):
        return AddressClass.NEVER
    if address.is_loopback:
        return AddressClass.LOOPBACK
    if isinstance(address, ipaddress.IPv6Address) and (address.is_site_local or address.is_reserved):
        return AddressClass.NEVER
    if address.is_link_local:
        return AddressClass.LINK_LOCAL
    if address.is_private or address in _CGNAT or not address.is_global:
        return AddressClass.PRIVATE
    return AddressClass.PUBLIC


def canonical_host(text: str) -> str:
    """The one spelling of a host (IP literal or DNS name) used for every comparison.

    Raises ValueError for anything that is not plainly a host: userinfo, percent signs,
    zone ids, empty labels, non-ASCII, over-long names.
    """
    host = text.strip()
    if not host or len(host) > 255 or any(c in host for c in "@%/\\?# \t"):
        raise ValueError("not a plain host")
    if host.startswith("[") or ":" in host:
        inner = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if "[" in inner or "]" in inner:
            raise ValueError("bad brackets")
        v6 = ipaddress.IPv6Address(inner)  # ValueError on anything else
        return str(v6.ipv4_mapped) if v6.ipv4_mapped is not None else str(v6)
    host = host.lower()
    if host.endswith("."):
        host = host[:-1]
    legacy = _ipv4_legacy(host)
    if legacy is not None:
        return str(legacy)
    labels = host.split(".")
    if not all(_LABEL.match(label) for label in labels) or len(host) > 253:
        raise ValueError("not a DNS name")
    if labels[-1].isdigit():
        raise ValueError("numeric top-level label")
    return host


def parse_authority(text: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` -> (canonical host, port)."""
    if "@" in text:
        raise ValueError("userinfo in authority")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("unclosed bracket")
        host_text, rest = text[: end + 1], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError("junk after bracket")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host_text, port_text = text.split(":")
    elif ":" in text:
        raise ValueError("IPv6 addresses need brackets")
    else:
        host_text, port_text = text, None
    port = default_port
    if port_text is not None:
        if not _PORT.match(port_text) or not 0 < int(port_text) < 65536:
            raise ValueError("bad port")
        port = int(port_text)
    return canonical_host(host_text), port


def parse_url_target(url: str) -> tuple[Target, str]:
    """An absolute ``http(s)://authority/path?query`` URL -> (target, path-and-query).

    Stricter than urllib: no userinfo, no backslashes, no whitespace; the fragment is
    dropped (it never goes on the wire).
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in DEFAULT_PORTS:
        raise ValueError("not an http(s) URL")
    if any(c in rest for c in "\\ \t\r\n"):
        raise ValueError("bad character in URL")
    rest = rest.split("#", 1)[0]
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, path = rest[:cut], rest[cut:]
    host, port = parse_authority(authority, DEFAULT_PORTS[scheme])
    if not path.startswith("/"):
        path = "/" + path
    return Target("https" if scheme == "https" else "http", host, port), path


def parse_allowed_hosts(entries: Iterable[str]) -> frozenset[Target]:
    """``DEPENDENCY_ALLOWED_HOSTS`` entries: ``host`` (https:443 and http:80) or
    ``host:port`` (both schemes on that port). Raises ValueError naming a bad entry."""
    targets: set[Target] = set()
    for raw in entries:
        entry = raw.strip()
        if not entry:
            continue
        try:
            host, port = parse_authority(entry, 0)
        except ValueError as exc:
            raise ValueError(f"bad host entry {entry!r}: {exc}") from None
        targets.add(Target("http", host, port or DEFAULT_PORTS["http"]))
        targets.add(Target("https", host, port or DEFAULT_PORTS["https"]))
    return frozenset(targets)


def index_refusal(index: Target) -> str | None:
    """Why an index at this literal address can never be used (None if it may be)."""
    try:
        address = ipaddress.ip_address(index.host)
    except ValueError:
        return None
    cls = classify(address)
    if cls in (AddressClass.LINK_LOCAL, AddressClass.NEVER):
        return f"the index address is {cls.value}"
    return None


@dataclass
class EgressPolicy:
    """The decision for one install: fixed targets plus the ones learned from the index."""

    index: Target
    operator_hosts: frozenset[Target] = frozenset()
    # Ports that are never reachable on a non-public address (the executor's own).
    forbidden_internal_ports: frozenset[int] = frozenset()
    # The index's addresses when the install started: the only non-public ones it may use.
    index_addresses: frozenset[IPAddress] = frozenset()
    learned: set[Target] = field(default_factory=set)
    # The known file hosts of a public HTTPS index (its pages cannot be read: CONNECT).
    builtin: frozenset[Target] = field(init=False)

    def __post_init__(self) -> None:
        hosts = KNOWN_FILE_HOSTS.get(self.index.host, ()) if self.index.scheme == "https" else ()
        self.builtin = frozenset(Target("https", host, 443) for host in hosts)

    def learn(self, target: Target) -> bool:
        """Record a host the index linked to; True if it was new."""
        if target == self.index or target in self.operator_hosts or target in self.learned:
            return False
        self.learned.add(target)
        return True

    def admit(self, target: Target) -> Decision:
        """Step 1: is this (scheme, host, port) one the installer may ask for?"""
        if (
            target == self.index
            or target in self.operator_hosts
            or target in self.builtin
            or target in self.learned
        ):
            return ALLOW
        return Decision(False, "host_not_allowed")

    def admit_address(self, target: Target, address: IPAddress) -> Decision:
        """Step 2: may a connection for ``target`` (already admitted) go to ``address``?"""
        cls = classify(address)
        if cls in (AddressClass.NEVER, AddressClass.LINK_LOCAL):
            return Decision(False, f"address_{cls.value}")
        if cls is AddressClass.PUBLIC:
            return ALLOW
        if target.port in self.forbidden_internal_ports:
            return Decision(False, "forbidden_port")
        if target == self.index:
            # Only where its name pointed when the install started: no rebinding.
            pinned = unwrap(address) in {unwrap(a) for a in self.index_addresses}
            return ALLOW if pinned else Decision(False, f"address_{cls.value}")
        linked_or_listed = target in self.learned or target in self.operator_hosts
        if linked_or_listed and cls in {classify(a) for a in self.index_addresses}:
            return ALLOW  # where the index itself lives
        if cls is AddressClass.PRIVATE and target in self.operator_hosts:
            return ALLOW
        return Decision(False, f"address_{cls.value}")


def index_target(index_url: str) -> Target:
    """The index's (scheme, host, port); credentials in the URL are the index's business."""
    scheme, sep, rest = index_url.partition("://")
    authority_end = min(
        (i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest)
    )
    authority = rest[:authority_end].rpartition("@")[2]
    return parse_url_target(f"{scheme}{sep}{authority}{rest[authority_end:]}")[0]


def policy_for(
    index_url: str, allowed_hosts: Iterable[str] = (), forbidden_internal_ports: Iterable[int] = ()
) -> EgressPolicy:
    """The policy of one install from the sync's index URL and the operator's settings."""
    return EgressPolicy(
        index=index_target(index_url),
        operator_hosts=parse_allowed_hosts(allowed_hosts),
        forbidden_internal_ports=frozenset(forbidden_internal_ports),
    )
