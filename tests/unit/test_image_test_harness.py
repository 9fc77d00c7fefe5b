"""The pure parts of `make image-test` (scripts/image_test): the pod spec it plays, how it
reads an isolation level, how it finds files on a container's disk, its table."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from image_test import hostproc, launch, level, report, settings  # noqa: E402


def test_the_pod_spec_is_filled_and_takes_the_tests_environment() -> None:
    env = {"EXECUTOR_PORT": "18123", "INTERNAL_API_TOKEN": "tok-1", "CONTROL_PLANE_URL": "http://127.0.0.1:9"}
    spec = launch.render_pod_spec(settings.POD_SPEC.read_text(), "se-it-kube", "localhost/x:y", env)
    body = "\n".join(line for line in spec.splitlines() if not line.lstrip().startswith("#"))
    assert "image: localhost/x:y" in body
    assert "name: se-it-kube" in body
    assert '{name: EXECUTOR_PORT, value: "18123"}' in body
    assert '{name: INTERNAL_API_TOKEN, value: "tok-1"}' in body
    assert '{name: CONTROL_PLANE_URL, value: "http://127.0.0.1:9"}' in body
    # The spec's own secret is replaced, not duplicated; its other settings stay.
    assert "kube-play-secret-token" not in body
    assert body.count("name: INTERNAL_API_TOKEN") == 1
    assert "{name: DISABLE_BWRAP" in body and "runAsUser: 1000" in body
    for placeholder in ("IMAGE", "NAME", '"PORT"'):
        assert placeholder not in body


def test_the_fuse_device_is_asked_for_only_where_the_host_has_one() -> None:
    options = settings.S3_DOCKER.options
    assert launch.host_options(options, have_fuse=True) == list(options)
    without = launch.host_options(options, have_fuse=False)
    assert "/dev/fuse" not in without and "--device" not in without
    assert len(without) == len(options) - 2


def test_levels_are_read_as_words_and_from_metrics_samples_valued_1() -> None:
    check = (
        "[ok  ] isolation: bwrap-compat (Landlock ABI 7; seccomp filter on)\n"
        "       remedy: unset DISABLE_BWRAP and SANDBOX_ISOLATION: this host gives bwrap\n"
    )
    assert level.check_level(check) == "bwrap-compat"
    assert level.check_level("[ok  ] bwrap: ran a test sandbox\n") == ""
    metrics = (
        "# HELP sandbox_isolation_level the isolation level\n"
        'sandbox_isolation_level{level="bwrap"} 0.0\n'
        'sandbox_isolation_level{level="landlock",landlock_abi="7"} 1.0\n'
        'sandbox_executions_total{language="python",status="success"} 1.0\n'
    )
    assert level.metrics_level(metrics) == ["landlock"]
    assert level.metrics_level("sandbox_executions_total 3\n") == []


def test_container_paths_follow_absolute_links_inside_the_container(tmp_path: Path) -> None:
    # /proc/<pid>/root of our own process is "/": an absolute link must resolve beneath it.
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "rel").symlink_to("real")
    root = Path(f"/proc/{os.getpid()}/root")
    assert hostproc.container_path(os.getpid(), f"{tmp_path}/link/f") == root / str(tmp_path / "real/f")[1:]
    assert hostproc.container_path(os.getpid(), f"{tmp_path}/rel/f") == root / str(tmp_path / "real/f")[1:]


def test_the_table_marks_unreached_columns() -> None:
    rep = report.Report()
    rep.setting("docker", "landlock").level = "landlock"
    rep.check("docker", "starts", True, column="starts")
    rep.check("docker", "token", False, column="token")
    rep.check("docker", "token again", True, column="token")
    rows = rep.table().splitlines()
    cells = [cell.strip() for cell in rows[1].split("|")]
    head = [cell.strip() for cell in rows[0].split("|")]
    assert cells[head.index("starts")] == "ok"
    assert cells[head.index("token")] == "FAIL"
    assert cells[head.index("kill")] == "-"
    assert (rep.passed, rep.failed) == (2, 1)


def test_every_setting_has_a_known_level_and_a_unique_name() -> None:
    # Only the negative control runs without a sandbox, and it is there.
    assert {s.expected_level for s in settings.ALL if not s.control} <= set(level.LEVELS) - {"none"}
    assert [s.expected_level for s in settings.ALL if s.control] == ["none"]
    assert len({s.name for s in settings.ALL}) == len(settings.ALL)
