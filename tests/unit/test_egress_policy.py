"""The installer's allow/deny decision: host spellings, address classes, both admission steps."""

from __future__ import annotations

import ipaddress

import pytest

from sandbox_executor.dependencies.egress.policy import (
    AddressClass,
    EgressPolicy,
    Target,
    canonical_host,
    classify,
    index_refusal,
    index_target,
    parse_allowed_hosts,
    parse_authority,
    parse_url_target,
    policy_for,
)

ip = ipaddress.ip_address


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),  # one decimal number
        ("0x7f000001", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),  # one octal number
        ("0x7f.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("169.254.169.254.", "169.254.169.254"),
        ("0xA9.0xFE.0xA9.0xFE", "169.254.169.254"),
        ("[::ffff:127.0.0.1]", "127.0.0.1"),
        ("[::ffff:7f00:1]", "127.0.0.1"),
        ("[::1]", "::1"),
        ("[0:0:0:0:0:0:0:1]", "::1"),
        ("::1", "::1"),
        ("LocalHost.", "localhost"),
        ("Files.PythonHosted.org", "files.pythonhosted.org"),
        ("my_index.internal", "my_index.internal"),
    ],
)
def test_hosts_compare_as_what_they_mean(text: str, expected: str) -> None:
    assert canonical_host(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "user@127.0.0.1",
        "pypi.org@127.0.0.1",
        "%31%32%37.0.0.1",
        "[fe80::1%eth0]",
        "[fe80::1%25eth0]",
        "256.0.0.1",
        "0x100.0.0.1",
        "1.2.3.4.5",
        "08.0.0.1",  # not octal, not decimal: refused rather than guessed
        "127.0.0.1/",
        "a..b",
        ".example.com",
        "exa mple.com",
        "ex\\ample.com",
        "bücher.de",
        "[::1",
        "[[::1]]",
        "a" * 64 + ".com",
        "-bad.example",
    ],
)
def test_hosts_that_are_not_plain_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        canonical_host(text)


@pytest.mark.parametrize(
    ("text", "default", "expected"),
    [
        ("pypi.org", 443, ("pypi.org", 443)),
        ("pypi.org:443", 0, ("pypi.org", 443)),
        ("127.0.0.1:8080", 0, ("127.0.0.1", 8080)),
        ("[::1]:8080", 0, ("::1", 8080)),
        ("[::ffff:127.0.0.1]:22", 0, ("127.0.0.1", 22)),
        ("2130706433:8080", 0, ("127.0.0.1", 8080)),
    ],
)
def test_authorities(text: str, default: int, expected: tuple[str, int]) -> None:
    assert parse_authority(text, default) == expected


@pytest.mark.parametrize(
    "text",
    [
        "u:p@pypi.org:443",
        "pypi.org:",
        "pypi.org:0",
        "pypi.org:65536",
        "pypi.org:+80",
        "::1:80",
        "[::1]x",
        "a:b:c",
    ],
)
def test_bad_authorities(text: str) -> None:
    with pytest.raises(ValueError):
        parse_authority(text, 0)


def test_url_targets() -> None:
    assert parse_url_target("http://127.0.0.1:8080/simple/x/?q=1#frag") == (
        Target("http", "127.0.0.1", 8080),
        "/simple/x/?q=1",
    )
    assert parse_url_target("HTTPS://Files.example.com") == (Target("https", "files.example.com", 443), "/")
    assert parse_url_target("http://h?x") == (Target("http", "h", 80), "/?x")
    for bad in (
        "ftp://h/",
        "http:/h/",
        "http://u:p@h/",
        "http://h\\@evil/",
        "http://h /",
        "file:///etc/passwd",
        "http:///x",
    ):
        with pytest.raises(ValueError):
            parse_url_target(bad)


def test_index_target_drops_credentials() -> None:
    assert index_target("https://user:secret@pypi.example.com/simple") == Target(
        "https", "pypi.example.com", 443
    )
    assert index_target("http://127.0.0.1:9999/simple") == Target("http", "127.0.0.1", 9999)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("8.8.8.8", AddressClass.PUBLIC),
        ("151.101.0.223", AddressClass.PUBLIC),
        ("2a04:4e42::223", AddressClass.PUBLIC),
        ("127.0.0.1", AddressClass.LOOPBACK),
        ("127.255.255.254", AddressClass.LOOPBACK),
        ("::1", AddressClass.LOOPBACK),
        ("::ffff:127.0.0.1", AddressClass.LOOPBACK),  # IPv4-mapped
        ("10.0.0.1", AddressClass.PRIVATE),
        ("172.16.5.4", AddressClass.PRIVATE),
        ("192.168.1.1", AddressClass.PRIVATE),
        ("100.64.0.1", AddressClass.PRIVATE),  # carrier-grade NAT
        ("198.18.0.1", AddressClass.PRIVATE),
        ("fd00::1", AddressClass.PRIVATE),  # unique local
        ("::ffff:10.1.2.3", AddressClass.PRIVATE),
        ("64:ff9b::a00:1", AddressClass.PRIVATE),  # NAT64 of 10.0.0.1
        ("2002:a00:1::1", AddressClass.PRIVATE),  # 6to4 of 10.0.0.1
        ("169.254.169.254", AddressClass.LINK_LOCAL),  # cloud metadata
        ("fe80::1", AddressClass.LINK_LOCAL),
        ("::ffff:169.254.169.254", AddressClass.LINK_LOCAL),
        ("64:ff9b::a9fe:a9fe", AddressClass.LINK_LOCAL),  # NAT64 of the metadata address
        ("fd00:ec2::254", AddressClass.PRIVATE),  # AWS's IPv6 metadata address
        ("0.0.0.0", AddressClass.NEVER),
        ("0.1.2.3", AddressClass.NEVER),
        ("::", AddressClass.NEVER),
        ("224.0.0.1", AddressClass.NEVER),
        ("239.255.255.250", AddressClass.NEVER),
        ("ff02::1", AddressClass.NEVER),
        ("255.255.255.255", AddressClass.NEVER),
        ("240.0.0.1", AddressClass.NEVER),
        ("fec0::1", AddressClass.NEVER),
        ("::127.0.0.1", AddressClass.NEVER),  # deprecated IPv4-compatible
    ],
)
def test_address_classes(address: str, expected: AddressClass) -> None:
    assert classify(ip(address)) is expected


INDEX = Target("http", "127.0.0.1", 9000)
FILES = Target("https", "files.example.com", 443)
OPERATOR = Target("https", "mirror.internal", 443)


def loopback_policy() -> EgressPolicy:
    policy = EgressPolicy(
        index=INDEX,
        operator_hosts=frozenset({OPERATOR, Target("http", "mirror.internal", 80)}),
        forbidden_internal_ports=frozenset({8080}),
        index_addresses=frozenset({ip("127.0.0.1")}),
    )
    policy.learn(FILES)
    return policy


@pytest.mark.parametrize(
    ("target", "allowed"),
    [
        (INDEX, True),
        (FILES, True),  # learned from the index's pages
        (OPERATOR, True),
        (Target("http", "mirror.internal", 80), True),
        (Target("https", "127.0.0.1", 9000), False),  # CONNECT to the plain-HTTP index
        (Target("http", "127.0.0.1", 9001), False),  # the index host, another port
        (Target("http", "127.0.0.1", 8080), False),  # the executor's port
        (Target("https", "files.example.com", 8443), False),
        (Target("http", "files.example.com", 80), False),  # learned as https only
        (Target("https", "evil.example.com", 443), False),
        (Target("https", "localhost", 443), False),
        (Target("http", "127.0.0.2", 9000), False),  # a second loopback host
        (Target("https", "files.pythonhosted.org", 443), False),  # built in for pypi.org only
    ],
)
def test_admission_by_name(target: Target, allowed: bool) -> None:
    decision = loopback_policy().admit(target)
    assert decision.allowed is allowed
    assert decision.reason == ("" if allowed else "host_not_allowed")


@pytest.mark.parametrize(
    ("target", "address", "reason"),
    [
        (INDEX, "127.0.0.1", ""),  # the index lives on loopback: its own address, its own port
        (INDEX, "::ffff:127.0.0.1", ""),
        (INDEX, "127.0.0.2", "address_loopback"),  # not the address pinned at the start
        (INDEX, "10.0.0.5", "address_private"),  # the index's name rebinds to the cluster
        (INDEX, "169.254.169.254", "address_link_local"),
        (INDEX, "8.8.8.8", ""),
        (FILES, "151.101.0.223", ""),
        (FILES, "127.0.0.1", ""),  # a learned host where the index itself lives (loopback)
        (FILES, "::1", ""),
        (FILES, "10.0.0.5", "address_private"),  # ...but not in another internal range
        (FILES, "::ffff:10.0.0.5", "address_private"),
        (FILES, "fd00::5", "address_private"),
        (FILES, "169.254.169.254", "address_link_local"),
        (FILES, "fe80::1", "address_link_local"),
        (FILES, "0.0.0.0", "address_never"),
        (FILES, "224.0.0.251", "address_never"),
        (OPERATOR, "10.0.0.7", ""),  # operator-listed hosts may be private
        (OPERATOR, "127.0.0.1", ""),  # and live where the index lives
        (OPERATOR, "169.254.169.254", "address_link_local"),
        (Target("https", "builtin.example", 443), "127.0.0.1", "address_loopback"),  # not linked
        (Target("http", "mirror.internal", 8080), "10.0.0.7", "forbidden_port"),
        (Target("http", "mirror.internal", 8080), "8.8.8.8", ""),
    ],
)
def test_admission_by_address(target: Target, address: str, reason: str) -> None:
    policy = loopback_policy()
    policy.operator_hosts = policy.operator_hosts | {Target("http", "mirror.internal", 8080)}
    decision = policy.admit_address(target, ip(address))
    assert (decision.allowed, decision.reason) == (not reason, reason)


def test_the_executor_port_is_refused_even_for_an_index_living_there() -> None:
    policy = EgressPolicy(
        index=Target("http", "127.0.0.1", 8080),
        forbidden_internal_ports=frozenset({8080}),
        index_addresses=frozenset({ip("127.0.0.1")}),
    )
    assert policy.admit(policy.index).allowed
    assert policy.admit_address(policy.index, ip("127.0.0.1")).reason == "forbidden_port"


def test_a_public_index_gets_no_internal_exception_and_pypi_its_file_host() -> None:
    policy = policy_for("https://pypi.org/simple", forbidden_internal_ports=[8080])
    files = Target("https", "files.pythonhosted.org", 443)
    assert policy.admit(files).allowed
    assert not policy.admit(Target("http", "files.pythonhosted.org", 80)).allowed
    # Nothing pinned: even the index's own name may not resolve to an internal address.
    assert policy.admit_address(policy.index, ip("10.0.0.1")).reason == "address_private"
    assert policy.admit_address(files, ip("127.0.0.1")).reason == "address_loopback"


def test_learned_hosts_may_live_only_where_the_index_lives() -> None:
    target = Target("http", "127.0.0.1", 9001)
    policy = loopback_policy()
    assert policy.learn(target)
    assert not policy.learn(target)
    assert not policy.learn(INDEX)
    assert policy.admit(target).allowed
    # The index lives on loopback: another loopback port it links to is reachable...
    assert policy.admit_address(target, ip("127.0.0.1")).allowed
    # ...never the executor's own port, however the index links to it.
    executor = Target("http", "127.0.0.1", 8080)
    assert policy.learn(executor)
    assert policy.admit_address(executor, ip("127.0.0.1")).reason == "forbidden_port"
    # A public index's pages can never send pip inside: loopback, the cluster, metadata.
    public = policy_for("http://index.example/simple", ["mirror.internal"])
    public.index_addresses = frozenset({ip("93.184.215.14")})
    public.learn(target)
    assert public.admit_address(target, ip("127.0.0.1")).reason == "address_loopback"
    assert public.admit_address(Target("http", "mirror.internal", 80), ip("127.0.0.1")).reason == (
        "address_loopback"
    )
    assert public.admit_address(Target("http", "mirror.internal", 80), ip("10.0.0.7")).allowed


def test_allowed_host_entries() -> None:
    assert parse_allowed_hosts(["files.example.com", " mirror.internal:8443 ", ""]) == {
        Target("http", "files.example.com", 80),
        Target("https", "files.example.com", 443),
        Target("http", "mirror.internal", 8443),
        Target("https", "mirror.internal", 8443),
    }
    for bad in ("u@h", "h:0", "http://h", "h/x", "*.example.com"):
        with pytest.raises(ValueError, match="bad host entry"):
            parse_allowed_hosts([bad])


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("http://127.0.0.1:9000/simple", False),
        ("http://10.0.0.5/simple", False),
        ("https://pypi.org/simple", False),
        ("http://169.254.169.254/latest/meta-data/", True),
        ("http://[fe80::1]/simple", True),
        ("http://0.0.0.0:8080/simple", True),
        ("http://2852039166/", True),  # 169.254.169.254 as one number
    ],
)
def test_index_addresses_that_can_never_be_used(url: str, refused: bool) -> None:
    assert (index_refusal(index_target(url)) is not None) is refused
