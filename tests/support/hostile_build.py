"""An sdist build step that tries every way out of pip's sandbox (for tests/support/local_index.py).

It runs while pip builds the sdist and records each attempt in ``FINDINGS`` (which ends up
in the module the build produces, so a later execution can read it):

- ``direct``: plain TCP to each target (a tagged HTTP request if it connects), and the same
  as TCP Fast Open (``sendto`` with ``MSG_FASTOPEN``: connects without ``connect()``);
- ``udp``: a datagram to a UDP port (the caller's sink records whether it arrived);
- ``proxy``: request lines sent to the proxy pip was given (``http_proxy`` in the build's
  environment, with its password when it has one: the build holds what pip holds);
- ``unix``: the same lines to the proxy's unix socket, where pip's sandbox has one;
- ``urllib``: plain ``urllib.request`` fetches, which follow ``http_proxy`` by themselves;
- ``control``: the index itself through the proxy, to show the channel works.

Every target is a loopback address: nothing here ever leaves the machine.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from sandbox_executor.bootstrap.confine import landlock_abi
from sandbox_executor.config import Settings
from sandbox_executor.isolation_probes import detect

_BUILD = """
import base64, os, socket, urllib.parse, urllib.request

PROXY = urllib.parse.urlsplit(os.environ.get("http_proxy", ""))
AUTH = ""
if PROXY.username:
    pair = (PROXY.username + ":" + (PROXY.password or "")).encode()
    AUTH = "Proxy-Authorization: Basic " + base64.b64encode(pair).decode() + "\\r\\n"

def direct(host, port):
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.settimeout(3)
    try:
        sock.connect((host, port))
        sock.sendall(("GET /?" + TAG + " HTTP/1.0\\r\\n\\r\\n").encode())
        return "connected"
    except OSError as exc:
        return type(exc).__name__
    finally:
        sock.close()

def fastopen(host, port):
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.sendto(("GET /?" + TAG + " HTTP/1.0\\r\\n\\r\\n").encode(), 0x20000000, (host, port))
        return "connected"
    except OSError as exc:
        return type(exc).__name__
    finally:
        sock.close()

def udp(port):
    try:
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(TAG.encode(), ("127.0.0.1", port))
        return "sent"
    except OSError as exc:
        return type(exc).__name__

def via_proxy():
    return socket.create_connection((PROXY.hostname, PROXY.port), timeout=5)

def via_unix():
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(5)
    sock.connect("/run/egress-proxy.sock")
    return sock

def status(connect, line):
    try:
        sock = connect()
    except (OSError, TypeError) as exc:
        return type(exc).__name__
    try:
        sock.sendall((line + "\\r\\nHost: x\\r\\n" + AUTH + "\\r\\n").encode())
        data = b""
        while b"\\r\\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        return data.split(b"\\r\\n", 1)[0].decode()
    except OSError as exc:
        return type(exc).__name__
    finally:
        sock.close()

def fetch(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return "HTTP/1.0 " + str(answer.status)
    except urllib.error.HTTPError as exc:
        return "HTTP/1.0 " + str(exc.code)
    except OSError as exc:
        return type(exc).__name__

FINDINGS["direct"] = {h + ":" + str(p): direct(h, p) for h, p in TARGETS}
FINDINGS["fastopen"] = {h + ":" + str(p): fastopen(h, p) for h, p in TARGETS}
FINDINGS["udp"] = udp(UDP_PORT) if UDP_PORT else "not tried"
FINDINGS["proxy"] = {line: status(via_proxy, line) for line in LINES}
FINDINGS["unix"] = {line: status(via_unix, line) for line in LINES}
FINDINGS["urllib"] = {url: fetch(url) for url in URLS}
FINDINGS["control"] = status(via_proxy, "GET " + INDEX_URL + "/ HTTP/1.1")
"""


def require_level(level: str) -> str:
    """``level`` if this host gives it when pinned (and, for landlock, Landlock's TCP rules:
    ABI >= 4, Linux 6.7); else the calling test is skipped."""
    decision, _ = detect(Settings(sandbox_isolation=level))  # type: ignore[arg-type]
    if decision.level is None:
        pytest.skip(f"{level} is not available on this host: {decision.refusal}")
    if level == "landlock" and landlock_abi() < 4:
        pytest.skip("the installer's TCP rules need Landlock ABI >= 4 (Linux 6.7)")
    return level


def hostile_build(
    index_url: str, others: Sequence[tuple[str, int]], tag: str = "hostile-build", udp_port: int = 0
) -> str:
    """Build code (for ``sdist_bytes``) aiming at ``others`` (loopback ``(host, port)``
    pairs, the first one also under other spellings), at the index itself and, when given,
    at a loopback UDP port."""
    index_host_port = index_url.split("://", 1)[1].split("/", 1)[0]
    index_port = int(index_host_port.rsplit(":", 1)[1])
    targets = [("127.0.0.1", index_port), *others, ("::1", others[0][1])]
    lines, urls = [], []
    for host, port in others:
        lines += [f"CONNECT {host}:{port} HTTP/1.1", f"GET http://{host}:{port}/?{tag} HTTP/1.1"]
        urls.append(f"http://{host}:{port}/?{tag}")
    port = others[0][1]
    lines += [
        f"GET http://2130706433:{port}/?{tag} HTTP/1.1",
        f"GET http://0x7f.1:{port}/?{tag} HTTP/1.1",
        f"CONNECT [::ffff:127.0.0.1]:{port} HTTP/1.1",
        f"GET http://localhost.:{port}/?{tag} HTTP/1.1",
        f"GET http://{index_host_port}@127.0.0.1:{port}/?{tag} HTTP/1.1",
        f"CONNECT {index_host_port} HTTP/1.1",  # the plain-HTTP index as a tunnel
        f"POST {index_url}/ HTTP/1.1",
    ]
    values = {
        "TAG": tag,
        "TARGETS": targets,
        "LINES": lines,
        "URLS": urls,
        "INDEX_URL": index_url,
        "UDP_PORT": udp_port,
    }
    return "".join(f"{name} = {value!r}\n" for name, value in values.items()) + _BUILD


def refused(answer: str) -> bool:
    """A proxy answer that let nothing through (or a channel that is not there)."""
    if answer.startswith("HTTP/"):
        return answer.split(" ")[1] in ("400", "403", "405")
    return answer in ("ConnectionRefusedError", "FileNotFoundError", "PermissionError", "TypeError")


def assert_nothing_got_out(findings: dict[str, dict[str, str] | str], *, unix_socket: bool) -> None:
    """What the build saw: no direct connection, every proxied attempt refused, the index reachable."""
    for kind in ("direct", "fastopen"):
        attempts = findings[kind]
        assert isinstance(attempts, dict) and "connected" not in attempts.values(), (kind, attempts)
    for channel in ("proxy", "unix", "urllib"):
        answers = findings[channel]
        assert isinstance(answers, dict)
        for what, answer in answers.items():
            assert refused(answer), (channel, what, answer)
    unix = findings["unix"]
    assert isinstance(unix, dict)
    if unix_socket:  # the socket is there and answers: its refusals are the proxy's
        assert all(answer.startswith("HTTP/") for answer in unix.values()), unix
    control = findings["control"]
    assert isinstance(control, str) and control.startswith("HTTP/1.0 200"), control
