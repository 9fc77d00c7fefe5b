"""A PEP 503 simple index on loopback, serving wheels and sdists built at test time.

Nothing here needs the network or a build tool: wheels are written as zip files by hand
(METADATA, WHEEL, RECORD), sdists as tar.gz with an in-tree PEP 517 backend that needs no
build requirements (so pip's isolated build env installs nothing from the index).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import io
import tarfile
import textwrap
import threading
import zipfile
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

from packaging.utils import canonicalize_name


def _dist_name(name: str) -> str:
    return canonicalize_name(name).replace("-", "_")


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def wheel_bytes(
    name: str, version: str, files: dict[str, str], requires: Iterable[str] = ()
) -> tuple[str, bytes]:
    """A pure-Python ``py3-none-any`` wheel: (file name, content)."""
    dist = _dist_name(name)
    info = f"{dist}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {req}\n" for req in requires)
    members: dict[str, bytes] = {path: text.encode() for path, text in files.items()}
    members[f"{info}/METADATA"] = metadata.encode()
    members[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: local_index\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in members.items())
    record += f"{info}/RECORD,,\n"
    members[f"{info}/RECORD"] = record.encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in members.items():
            zf.writestr(path, data)
    return f"{dist}-{version}-py3-none-any.whl", buf.getvalue()


# The in-tree backend builds a wheel with the same hand-made format; BUILD_CODE runs first
# (it is what an attacker controls) and may define FINDINGS, written into the wheel's module.
_BACKEND_TEMPLATE = """
import base64, hashlib, io, os, zipfile

NAME = {name!r}
VERSION = {version!r}
MODULE = {module!r}


def _build_code():
    FINDINGS = {{}}
{build_code}
    return FINDINGS


def get_requires_for_build_wheel(config_settings=None):
    return []


def _hash(data):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    findings = _build_code()
    dist = NAME.replace("-", "_")
    info = dist + "-" + VERSION + ".dist-info"
    members = {{
        MODULE + ".py": ("FINDINGS = " + repr(findings) + "\\n").encode(),
        info + "/METADATA": (
            "Metadata-Version: 2.1\\nName: " + NAME + "\\nVersion: " + VERSION + "\\n"
        ).encode(),
        info + "/WHEEL": (
            b"Wheel-Version: 1.0\\nGenerator: evil\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"
        ),
    }}
    record = "".join(p + "," + _hash(d) + "," + str(len(d)) + "\\n" for p, d in members.items())
    members[info + "/RECORD"] = (record + info + "/RECORD,,\\n").encode()
    filename = dist + "-" + VERSION + "-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, filename), "w") as zf:
        for p, d in members.items():
            zf.writestr(p, d)
    return filename
"""


def sdist_bytes(
    name: str, version: str, module: str, build_code: str, build_requires: Iterable[str] = ()
) -> tuple[str, bytes]:
    """An sdist whose PEP 517 build runs ``build_code`` (a function body that fills the
    dict ``FINDINGS``) and then produces a wheel whose ``module`` holds those findings.
    ``build_requires`` go into pyproject's ``[build-system] requires`` (pip installs them
    into an isolated build environment first, from the index)."""
    requires = ", ".join(f'"{req}"' for req in build_requires)
    dist = _dist_name(name)
    root = f"{dist}-{version}"
    backend = _BACKEND_TEMPLATE.format(
        name=name,
        version=version,
        module=module,
        build_code=textwrap.indent(textwrap.dedent(build_code), "    "),
    )
    files = {
        f"{root}/pyproject.toml": (
            f'[build-system]\nrequires = [{requires}]\nbuild-backend = "local_backend"\n'
            'backend-path = ["."]\n'
            f'[project]\nname = "{name}"\nversion = "{version}"\n'
        ),
        f"{root}/PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{root}/local_backend.py": backend,
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for path, text in files.items():
            data = text.encode()
            member = tarfile.TarInfo(path)
            member.size = len(data)
            member.mode = 0o644
            tf.addfile(member, io.BytesIO(data))
    return f"{root}.tar.gz", buf.getvalue()


def held_build_code(index_url: str, tag: str) -> str:
    """Build code (for :func:`sdist_bytes`) that reports its start to the index, then waits
    until the index serves the release file of ``tag`` (:meth:`LocalIndex.release`): an
    install that is in flight for as long as a test wants, reached over pip's own network."""
    root = index_url.rsplit("/simple", 1)[0]
    return f"""
import time, urllib.error, urllib.request
try:
    urllib.request.urlopen({root!r} + "/files/started-{tag}", timeout=5)
except OSError:
    pass
while True:
    try:
        urllib.request.urlopen({root!r} + "/files/release-{tag}", timeout=5)
        break
    except OSError:
        time.sleep(0.05)
FINDINGS["released"] = True
"""


class LocalIndex:
    """Serves ``/simple/`` (PEP 503) and ``/files/<name>`` on 127.0.0.1 from a thread.

    ``requests`` records every request path; while ``gate`` is cleared, every request
    blocks until it is set again (to hold an install in flight).
    """

    def __init__(self, host: str = "127.0.0.1", link_base: str = "") -> None:
        # link_base: prefix of the file links on project pages ("" = this server, relative).
        self.link_base = link_base
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.gate = threading.Event()
        self.gate.set()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/simple"

    def add(self, filename: str, data: bytes) -> None:
        with self._lock:
            self.files[filename] = data

    def add_wheel(self, name: str, version: str, files: dict[str, str], requires: Iterable[str] = ()) -> str:
        filename, data = wheel_bytes(name, version, files, requires)
        self.add(filename, data)
        return filename

    def started(self, tag: str) -> bool:
        """Whether a build of :func:`held_build_code` with ``tag`` has begun."""
        with self._lock:
            return f"/files/started-{tag}" in self.requests

    def release(self, tag: str) -> None:
        """Let the builds of :func:`held_build_code` with ``tag`` finish."""
        self.add(f"release-{tag}", b"go")

    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    def _projects(self) -> dict[str, list[str]]:
        projects: dict[str, list[str]] = {}
        with self._lock:
            names = list(self.files)
        for filename in names:
            stem = filename.removesuffix(".tar.gz").removesuffix(".whl")
            project = canonicalize_name(stem.split("-")[0])
            projects.setdefault(project, []).append(filename)
        return projects

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        index = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                with index._lock:
                    index.requests.append(self.path)
                index.gate.wait(60)
                path = self.path.split("?", 1)[0]
                if path in ("/simple", "/simple/"):
                    links = "".join(f'<a href="/simple/{p}/">{p}</a>\n' for p in sorted(index._projects()))
                    self._send(200, f"<html><body>\n{links}</body></html>".encode(), "text/html")
                elif path.startswith("/simple/"):
                    project = canonicalize_name(path[len("/simple/") :].strip("/"))
                    files = index._projects().get(project)
                    if files is None:
                        self._send(404, b"not found", "text/plain")
                        return
                    links = ""
                    for filename in sorted(files):
                        digest = hashlib.sha256(index.files[filename]).hexdigest()
                        quoted = html.escape(filename)
                        href = f"{index.link_base}/files/{quoted}#sha256={digest}"
                        links += f'<a href="{href}">{quoted}</a>\n'
                    self._send(200, f"<html><body>\n{links}</body></html>".encode(), "text/html")
                elif path.startswith("/files/"):
                    data = index.files.get(path[len("/files/") :])
                    if data is None:
                        self._send(404, b"not found", "text/plain")
                    else:
                        self._send(200, data, "application/octet-stream")
                else:
                    self._send(404, b"not found", "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                # pip may be killed mid-request (timeouts, shutdown tests): not an error here.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.send_response(code)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

        return Handler

    def start(self) -> LocalIndex:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.gate.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> LocalIndex:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
