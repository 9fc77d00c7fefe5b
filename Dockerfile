# sandbox-executor: one container per session, untrusted code runs in Bubblewrap inside it.
#
# Build:  make image          (podman build --format docker, see mk/image.mk)
# Run:    podman run --cap-drop=ALL --security-opt no-new-privileges \
#           --security-opt seccomp=deploy/kubernetes/seccomp/sandbox-executor.json \
#           --security-opt unmask=/proc/* -p 8080:8080 sandbox-executor:dev
#         (these flags give the full bwrap level; other settings get the strongest level
#          they allow, e.g. landlock under Docker's default seccomp: docs/OPERATIONS.md)
#
# The base is pinned by tag. Where no registry is reachable, scripts/bootstrap-base-image
# creates it locally with debootstrap. Debian package versions are pinned below: when a
# security update supersedes one, bump it (`apt-cache policy NAME` in the base image).

# ---------------------------------------------------------------------------------------
# builder: the executor's virtualenv, from uv.lock (hash-checked), built with Debian's
# python3 so that the final image needs no second interpreter.
FROM docker.io/library/debian:bookworm-slim AS builder

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# The builder stage is thrown away, its apt lists with it.
# hadolint ignore=DL3009
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ca-certificates=20250419~deb12u2 \
      python3=3.11.2-1+b1 \
      python3-venv=3.11.2-1+b1

# Trust the system store (it includes any CA the local base image added) for pip and uv.
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    UV_NO_CACHE=1 \
    UV_PYTHON=/usr/bin/python3 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/srv/executor/venv \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_FROZEN=1

RUN python3 -m venv /opt/uv \
 && /opt/uv/bin/pip install --no-compile uv==0.13.9

WORKDIR /src

# Dependencies first (their own layer: source edits do not reinstall them). --frozen: the
# lock file is the truth, never re-resolved; every wheel is checked against its hash.
COPY pyproject.toml uv.lock README.md ./
RUN /opt/uv/bin/uv sync --no-dev --no-install-project

# The project itself, as a regular (non-editable) install. The build backend is pinned
# too, so the image does not depend on whatever hatchling is newest today.
COPY src/ src/
RUN printf '%s\n' hatchling==1.33.0 packaging==26.3 pathspec==1.1.1 pluggy==1.7.0 \
      trove-classifiers==2026.9.21.13 >/tmp/build-constraints.txt \
 && UV_BUILD_CONSTRAINT=/tmp/build-constraints.txt /opt/uv/bin/uv sync --no-dev --no-editable \
 && /srv/executor/venv/bin/python -c "import sandbox_executor.cli"

# ---------------------------------------------------------------------------------------
FROM docker.io/library/debian:bookworm-slim

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# bubblewrap: the sandbox. python3/nodejs/bash: the interpreters user code runs with
# (Debian's, under /usr, which is all a sandbox sees). gosu + s3fs: the control plane's
# start script mounts the S3 workspace as root and then drops to `sandbox`. tini reaps
# orphans and forwards SIGTERM. libseccomp2: the executor's own seccomp filter.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      bash=5.2.15-2+b13 \
      bubblewrap=0.8.0-2+deb12u1 \
      ca-certificates=20250419~deb12u2 \
      gosu=1.14-1+b10 \
      libseccomp2=2.5.4-1+deb12u1 \
      nodejs=18.20.4+dfsg-1~deb12u3 \
      python3=3.11.2-1+b1 \
      s3fs=1.90-1 \
      tini=0.19.0-1+b3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 1000 sandbox \
 && useradd --uid 1000 --gid 1000 --home-dir /home/sandbox --create-home \
      --shell /bin/bash sandbox \
 && install -d -o 1000 -g 1000 -m 0755 /workspace /opt \
      /var/lib/sandbox-executor /var/lib/sandbox-executor/results \
      /var/lib/sandbox-executor/state

# Outside /usr, /lib*, /bin, /etc and /opt: invisible to sandboxed code, read-only to the
# daemon. /opt belongs to the daemon: session dependencies go to SANDBOX_VENV_PATH
# (/opt/sandbox-venv, a symlink it swaps atomically, beside /opt/sandbox-venv.d), so /opt
# must be writable for uid 1000 (a volume there when the root file system is read-only).
COPY --from=builder /srv/executor/venv /srv/executor/venv
# The control plane's start command runs `python -m executor.interfaces.http.rest` from /app.
COPY executor/ /app/executor/

ENV PATH=/srv/executor/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    EXECUTOR_HOST=0.0.0.0 \
    EXECUTOR_PORT=8080 \
    WORKSPACE_PATH=/workspace \
    RESULTS_DIR=/var/lib/sandbox-executor/results \
    SANDBOX_VENV_PATH=/opt/sandbox-venv \
    PYTHON_BINARY=/usr/bin/python3 \
    BWRAP_PATH=/usr/bin/bwrap

WORKDIR /app
USER 1000:1000
EXPOSE 8080

HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["/srv/executor/venv/bin/python", "-c", "import os, sys, urllib.request as u; sys.exit(0 if u.urlopen('http://127.0.0.1:%s/health' % os.environ.get('EXECUTOR_PORT', '8080'), timeout=2).status == 200 else 1)"]

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["sandbox-executor", "serve"]
