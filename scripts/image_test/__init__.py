"""End-to-end test of the container image under every setting it meets (`make image-test`).

The modules: settings.py (the container settings, as data), launch.py (podman run /
podman kube play), client.py + plane.py (the daemon's API, a fake control plane on
loopback), level.py, lifecycle.py, workloads.py (what every setting checks),
programs.py + attacks.py (hostile user code and its host-side verdicts), hostproc.py (the
host's /proc), report.py (lines, table, summary), main.py.
"""
