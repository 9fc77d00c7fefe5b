"""The hostile programs, as sandboxed code sends them. Each reports what it managed; the
verdicts (attacks.py) rest on what the host sees, the reports only explain them.

Parameters come in the event (python) or as environment variables (shell), never in the
code, so a marker appears in a process's command line only where the program puts it.
"""

from __future__ import annotations

# Every environ and cmdline of every pid it can name (listed or guessed), and its own
# environment: any INTERNAL_API_TOKEN= or EXECUTOR_API_TOKEN= entry found.
ENVIRON_READ = """\
import os
NAMES = (b'INTERNAL_API_TOKEN=', b'EXECUTOR_API_TOKEN=')

def handler(event):
    found, readable, refused = [], 0, {}
    pids = set(range(1, event['max_pid'] + 1))
    try:
        pids |= {int(p) for p in os.listdir('/proc') if p.isdigit()}
    except OSError as exc:
        refused['listing /proc: ' + exc.strerror] = 1
    for pid in sorted(pids):
        for name in ('environ', 'cmdline'):
            try:
                with open(f'/proc/{pid}/{name}', 'rb') as f:
                    data = f.read()
            except OSError as exc:
                refused[exc.strerror] = refused.get(exc.strerror, 0) + 1
                continue
            readable += 1
            entries = data.split(b'\\0')
            found += [f'{pid}: ' + e.decode(errors='replace') for e in entries if e.startswith(NAMES)]
    found += [f'own environment: {k}={v}' for k, v in os.environ.items() if (k + '=').encode() in NAMES]
    return {'found': found, 'readable': readable, 'refused': refused}
"""

# TCP to the daemon's port and the control plane's, over every loopback spelling; where a
# connection opens, an HTTP request for a probe path the control plane would record.
PORT_CONNECT = """\
import socket

def handler(event):
    out = {}
    for host in ('127.0.0.1', '::1', 'localhost', '0.0.0.0'):
        for what, port in event['ports'].items():
            key = f'{what} {host}:{port}'
            try:
                sock = socket.create_connection((host, port), timeout=3)
            except OSError as exc:
                out[key] = exc.strerror or repr(exc)
                continue
            with sock:
                sock.sendall(f"GET {event['probe']} HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n".encode())
                out[key] = 'CONNECTED ' + sock.recv(60).decode(errors='replace')
    return out
"""

# A marker file in each directory (created first if missing).
WRITES = """\
import os

def handler(event):
    out = {}
    for d in event['dirs']:
        try:
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, event['marker']), 'w') as f:
                f.write('written by sandboxed code')
            out[d] = 'WROTE'
        except OSError as exc:
            out[d] = exc.strerror
    return out
"""

# SIGKILL to every pid it can name but its own and its parent's, then kill(-1).
KILL_ALL = """\
import os, signal

def handler(event):
    me, parent = os.getpid(), os.getppid()
    pids = set(range(1, event['max_pid'] + 1))
    try:
        pids |= {int(p) for p in os.listdir('/proc') if p.isdigit()}
    except OSError:
        pass
    delivered, refused = [], {}
    for pid in sorted(pids - {me, parent}):
        try:
            os.kill(pid, signal.SIGKILL)
            delivered.append(pid)
        except OSError as exc:
            refused[exc.strerror] = refused.get(exc.strerror, 0) + 1
    try:
        os.kill(-1, signal.SIGKILL)
        everyone = 'delivered'
    except OSError as exc:
        everyone = exc.strerror
    return {'delivered': delivered, 'refused': refused, 'kill(-1)': everyone}
"""

# A double-forked, setsid'd grandchild that ignores the polite signals and appends to a
# workspace file every 0.2 s, its command line carrying the marker; the run outlives its
# timeout.
SETSID_PYTHON = """\
import os, sys, time
ORPHAN = '''
import signal, sys, time
for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
    signal.signal(s, signal.SIG_IGN)
while True:
    with open(sys.argv[2], 'a') as f:
        f.write('.')
    time.sleep(0.2)
'''

def handler(event):
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execv(sys.executable, [sys.executable, '-c', ORPHAN, event['marker'], event['file']])
        os._exit(0)
    os.wait()
    time.sleep(60)
"""

SETSID_SHELL = """\
orphan='trap "" TERM HUP INT; while :; do printf . >> "$1"; sleep 0.2; done'
( setsid bash -c "$orphan" "$MARKER" "$ORPHAN_FILE" & )
sleep 60
"""

# The classic, every copy's command line carrying the marker.
FORK_BOMB = """\
bash -c 'b() { b | b & }; b; sleep 60' "$MARKER" &
sleep 60
"""

AFTER = "def handler(event):\n    return 'still serving'\n"
