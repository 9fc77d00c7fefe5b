"""A stand-in for the spawner, for tests of bootstrap/confine.py and bootstrap/supervisor.py.

Run as ``/usr/bin/python3 -I -S confine_driver.py SPEC_JSON CONTROL_FD`` (the spawner's
interpreter and flags: no site-packages, stdlib only) with a control pipe's write end. It forks a
supervisor (setsid'd, as the spawner's child would be), whose child confines itself
(confine.confine) and execs ``argv``. On CONTROL_FD it writes one JSON line
``{"supervisor": pid}`` at once and ``{"status": wait status of the supervisor,
"report": the supervisor's report}`` at the end. The interpreter inherits the driver's
stdin/stdout/stderr.

SPEC: {"argv", "env", "cwd", "bootstrap": the bootstrap directory, "policy": {Policy
fields} or null, "seccomp": path of a BPF program or null, "oom_score_adj": int or null,
"uid": the uid (and gid) to switch to, or null}
"""

import json
import os
import sys


def main() -> None:
    spec = json.loads(sys.argv[1])
    sys.path.insert(0, spec["bootstrap"])
    import confine
    import supervisor

    control = int(sys.argv[2])
    os.set_inheritable(control, False)
    policy = confine.Policy(**spec["policy"]) if spec.get("policy") is not None else None
    program = None
    if spec.get("seccomp"):
        with open(spec["seccomp"], "rb") as fh:
            program = fh.read()
    confinement = confine.Confinement(
        policy=policy, seccomp_program=program, oom_score_adj=spec.get("oom_score_adj")
    )
    report_r, report_w = os.pipe()

    def start():
        try:
            os.close(report_w)
            if spec.get("cwd"):
                os.chdir(spec["cwd"])
            confine.confine(confinement)
            os.execve(spec["argv"][0], spec["argv"], spec["env"])
        except BaseException as exc:
            os.write(2, f"confine_driver: {type(exc).__name__}: {exc}\n".encode())
        os._exit(127)

    pid = os.fork()
    if pid == 0:
        os.close(report_r)
        os.setsid()
        uid = spec.get("uid")
        if uid is not None:  # as the spawner does for a root daemon, before any prctl
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        supervisor.supervise(start, report_fd=report_w)
    os.close(report_w)
    os.write(control, (json.dumps({"supervisor": pid}) + "\n").encode())
    _, status = os.waitpid(pid, 0)
    with os.fdopen(report_r, "rb") as fh:
        raw = fh.read()
    report = json.loads(raw) if raw else None
    os.write(control, (json.dumps({"status": status, "report": report}) + "\n").encode())


if __name__ == "__main__":
    main()
