#!/usr/bin/env python3
"""Derive the executor's seccomp profile from podman's default (containers-common).

Why a profile of our own: bwrap creates user, pid, mount, net, ipc and uts namespaces.
Kubernetes' RuntimeDefault and Docker's default profile refuse ``unshare``/``clone`` with
namespace flags unless the container holds CAP_SYS_ADMIN; podman's default allows them,
but it still gates ``sethostname``/``setdomainname`` on CAP_SYS_ADMIN, and bwrap sets the
sandbox's hostname inside its fresh UTS namespace. The kernel already limits both calls to
a UTS namespace the caller owns (the container's own one needs CAP_SYS_ADMIN, which the
container does not have), so allowing them in the filter opens nothing else.

The one change against the source profile: ``sethostname`` and ``setdomainname`` move out
of the CAP_SYS_ADMIN-conditional rules into an unconditional allow rule. Everything else
(the default errno, every other conditional rule) is kept verbatim.

Usage: generate.py [SOURCE] [OUTPUT]
  SOURCE defaults to /usr/share/containers/seccomp.json (Debian: golang-github-containers-common)
  OUTPUT defaults to sandbox-executor.json beside this script
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

UTS_CALLS = ("sethostname", "setdomainname")
DEFAULT_SOURCE = Path("/usr/share/containers/seccomp.json")
DEFAULT_OUTPUT = Path(__file__).with_name("sandbox-executor.json")


def derive(profile: dict[str, Any]) -> dict[str, Any]:
    """Return ``profile`` with the UTS calls allowed regardless of capabilities."""
    rules: list[dict[str, Any]] = []
    for rule in profile["syscalls"]:
        conditional = bool(rule.get("includes", {}).get("caps")) or bool(
            rule.get("excludes", {}).get("caps")
        )
        if conditional and any(name in UTS_CALLS for name in rule["names"]):
            rule = {**rule, "names": [n for n in rule["names"] if n not in UTS_CALLS]}
        rules.append(rule)
    rules.append(
        {
            "names": list(UTS_CALLS),
            "action": "SCMP_ACT_ALLOW",
            "args": [],
            "comment": "sandbox-executor: bwrap sets the hostname of the UTS namespace it "
            "creates; the kernel still refuses it for the container's own namespace",
            "includes": {},
            "excludes": {},
        }
    )
    return {**profile, "syscalls": rules}


def main(argv: list[str]) -> int:
    """Write the derived profile; argv: [SOURCE] [OUTPUT]."""
    source = Path(argv[0]) if argv else DEFAULT_SOURCE
    output = Path(argv[1]) if len(argv) > 1 else DEFAULT_OUTPUT
    profile = json.loads(source.read_text(encoding="utf-8"))
    output.write_text(json.dumps(derive(profile), indent=2) + "\n", encoding="utf-8")
    print(f"wrote {output} from {source}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
