"""stack/swarm.sh's argument handling and refusals, run against a fake `docker` on PATH.

The fake logs every call (its arguments, and its stdin when the call streams one) and answers
from a list of rules: the first whose pattern is found in the joined arguments gives the
output and exit status. Everything else succeeds silently. What a real swarm does is tested
by `tox -e e2e`; these tests prove what the script does before it changes anything.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

SWARM_SH = Path(__file__).parent / "stack" / "swarm.sh"
STACK = "fake"
APP_PASSWORD = "app-password-7f3a"
Rule = dict[str, Any]  # pattern, and stdout/stdout_file, stderr, rc

FAKE_DOCKER = """#!{python}
import json, os, re, sys
args = sys.argv[1:]
line = " ".join(args)
entry = {{"args": args}}
if "-i" in args[:3] or ("exec" in args[:1] and "-i" in args):
    entry["stdin"] = sys.stdin.buffer.read().decode("utf-8", "replace")
with open(os.environ["FAKE_DOCKER_LOG"], "a") as log:
    log.write(json.dumps(entry) + "\\n")
for rule in json.load(open(os.environ["FAKE_DOCKER_RULES"])):
    if re.search(rule["pattern"], line):
        if "stdout_file" in rule:
            sys.stdout.buffer.write(open(rule["stdout_file"], "rb").read())
        else:
            sys.stdout.write(rule.get("stdout", ""))
        sys.stderr.write(rule.get("stderr", ""))
        sys.exit(rule.get("rc", 0))
"""

# A swarm whose nodes run, whose ingress node publishes 28080 and 28443, and whose stack
# converges at once.
HEALTHY: list[Rule] = [
    {"pattern": r"^inspect -f \{\{\.State\.Running\}\}", "stdout": "true\n"},
    {
        "pattern": r"^port fake-worker1$",
        "stdout": "28080/tcp -> 0.0.0.0:28080\n28443/tcp -> 0.0.0.0:28443\n",
    },
    {"pattern": r"^info -f", "stdout": "registry.lab:5000 \n"},
    {
        "pattern": r"docker ps -q --filter label=com\.docker\.swarm\.service\.name=fake_mongo",
        "stdout": "mongocid\n",
    },
    {
        "pattern": r"docker ps -q --filter label=com\.docker\.swarm\.service\.name=fake_api",
        "stdout": "apicid\n",
    },
    {
        "pattern": r"mongosh --quiet",
        "stdout": "{ users: [ { _id: 'usersdb.usersapi' } ], ok: 1 }\n",
    },
    {
        "pattern": r"service ls --filter label=com\.docker\.stack\.namespace=fake --format "
        r"\{\{\.Name\}\} \{\{\.Replicas\}\}",
        "stdout": "fake_api 2/2\nfake_ingress 1/1\nfake_mongo 1/1\n",
    },
    {
        "pattern": r"service inspect -f \{\{\.Spec\.Name\}\}",
        "stdout": "fake_api completed\nfake_ingress none\nfake_mongo none\n",
    },
]


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str
    calls: list[Rule]

    def called(self, pattern: str) -> bool:
        return any(re.search(pattern, " ".join(map(str, c["args"]))) for c in self.calls)


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "docker"
    fake.write_text(FAKE_DOCKER.format(python=sys.executable))
    fake.chmod(0o755)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name, value in [
        ("mongo_root_password", "root-password-9c1e"),
        ("mongo_app_password", APP_PASSWORD),
        ("tls.crt", "crt"),
        ("tls.key", "key"),
    ]:
        (secrets / name).write_text(value)
    return tmp_path


def swarm(sandbox: Path, *args: str, rules: list[Rule] | None = None, **env: str) -> Run:
    rules_file = sandbox / "rules.json"
    rules_file.write_text(json.dumps(rules or []))
    log = sandbox / "docker.log"
    log.write_text("")
    base = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {
            "DOCKERHUB_USER",
            "REGISTRY",
            "API_IMAGE",
            "VERSION",
            "STACK_NAME",
            "HTTP_PORT",
            "HTTPS_PORT",
            "BACKUP_DIR",
            "SECRETS_DIR",
        }
    }
    full_env = {
        **base,
        "PATH": f"{sandbox / 'bin'}:{os.environ['PATH']}",
        "FAKE_DOCKER_LOG": str(log),
        "FAKE_DOCKER_RULES": str(rules_file),
        "STACK_NAME": STACK,
        "HTTP_PORT": "28080",
        "HTTPS_PORT": "28443",
        "SECRETS_DIR": str(sandbox / "secrets"),
        "BACKUP_DIR": str(sandbox / "backups"),
        "WAIT_TIMEOUT": "5",
        **env,
    }
    done = subprocess.run(
        ["bash", str(SWARM_SH), *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    return Run(done.returncode, done.stdout, done.stderr, calls)


# --- the step list ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args", [["bogus"], ["nodes", "swarm", "bogus", "deploy"], ["help", "depoly"]]
)
def test_an_unknown_step_anywhere_refuses_the_list_before_any_step(
    sandbox: Path, args: list[str]
) -> None:
    run = swarm(sandbox, *args)
    assert run.rc == 2
    assert "usage: stack/swarm.sh STEP [STEP...]" in run.stderr
    assert "unknown step: " in run.stderr
    assert run.calls == []
    assert run.stdout == ""


def test_no_step_prints_usage_on_stderr(sandbox: Path) -> None:
    run = swarm(sandbox)
    assert run.rc == 2
    assert "usage:" in run.stderr


def test_restore_needs_a_file_before_any_step_runs(sandbox: Path) -> None:
    run = swarm(sandbox, "status", "restore")
    assert run.rc == 2
    assert "restore FILE" in run.stderr
    assert run.calls == []


def test_a_bad_setting_is_refused_before_any_step(sandbox: Path) -> None:
    run = swarm(sandbox, "nodes", HTTP_PORT="80x")
    assert run.rc == 2
    assert "HTTP_PORT must be a port number" in run.stderr
    assert run.calls == []


def test_steps_run_in_order_and_stop_at_the_first_failure(sandbox: Path) -> None:
    # No node runs: status fails, so down never starts.
    rules: list[Rule] = [{"pattern": r"^inspect -f \{\{\.State\.Running\}\}", "rc": 1}]
    run = swarm(sandbox, "help", "status", "down", rules=rules)
    assert run.rc == 1
    assert run.stdout.index("usage: stack/swarm.sh STEP") < run.stdout.index("==> status")
    assert "node fake-manager is not running" in run.stderr
    assert "==> down" not in run.stdout
    assert not run.called(r"^rm ")


# --- no default account ---------------------------------------------------------------------
@pytest.mark.parametrize("step", ["build", "push", "deploy"])
def test_no_registry_account_is_refused_by_name(sandbox: Path, step: str) -> None:
    run = swarm(sandbox, step, rules=HEALTHY)
    assert run.rc == 1
    for name in ("DOCKERHUB_USER", "REGISTRY", "API_IMAGE"):
        assert name in run.stderr
    assert not run.called(r"^build|^push|stack deploy|^cp ")


# --- deploy's checks before it changes anything ------------------------------------------------
def test_deploy_refuses_an_image_missing_from_its_registry(sandbox: Path) -> None:
    rules: list[Rule] = [
        {
            "pattern": r"^manifest inspect",
            "rc": 1,
            "stderr": "no such manifest: registry.lab:5000/usersapi:9.9.9\n",
        },
        *HEALTHY,
    ]
    run = swarm(sandbox, "deploy", rules=rules, REGISTRY="registry.lab:5000", VERSION="9.9.9")
    assert run.rc == 1
    assert "registry.lab:5000/usersapi:9.9.9 is not in its registry" in run.stderr
    assert "VERSION=9.9.9" in run.stderr
    assert "build push" in run.stderr
    assert run.called(r"^manifest inspect --insecure registry\.lab:5000/usersapi:9\.9\.9$")
    assert not run.called(r"stack deploy|^cp |secret create|mongosh")


def test_deploy_refuses_ports_the_ingress_node_does_not_publish(sandbox: Path) -> None:
    run = swarm(
        sandbox,
        "deploy",
        rules=HEALTHY,
        REGISTRY="registry.lab:5000",
        HTTP_PORT="8080",
        HTTPS_PORT="8443",
    )
    assert run.rc == 1
    assert "publishes host ports [28080 28443], not 8080 8443" in run.stderr
    assert "down' first" in run.stderr
    assert not run.called(r"stack deploy|^cp |manifest")


def test_verify_refuses_ports_the_ingress_node_does_not_publish(sandbox: Path) -> None:
    run = swarm(sandbox, "verify", rules=HEALTHY, HTTPS_PORT="443")
    assert run.rc == 1
    assert "not 443" in run.stderr
    assert not re.search(r"^PASS ", run.stdout, re.MULTILINE)


def deployed_image(run: Run) -> str:
    for call in run.calls:
        args = [str(a) for a in call["args"]]
        if "stack" in args and "--prune" in args:
            return next(a.split("=", 1)[1] for a in args if a.startswith("API_IMAGE="))
    raise AssertionError("no docker stack deploy")


RUNNING_1_0: Rule = {
    "pattern": r"ContainerSpec\.Image",
    "stdout": "registry.lab:5000/usersapi:1.0.0@sha256:" + "a" * 64 + "\n",
}


def test_deploy_without_version_keeps_the_running_image(sandbox: Path) -> None:
    run = swarm(sandbox, "deploy", rules=[RUNNING_1_0, *HEALTHY], REGISTRY="registry.lab:5000")
    assert run.rc == 0, run.stderr
    assert deployed_image(run) == "registry.lab:5000/usersapi:1.0.0"
    assert "api: registry.lab:5000/usersapi:1.0.0 (unchanged)" in run.stdout
    assert "converged after" in run.stdout


def test_deploy_with_a_version_says_what_changes(sandbox: Path) -> None:
    run = swarm(
        sandbox,
        "deploy",
        rules=[RUNNING_1_0, *HEALTHY],
        REGISTRY="registry.lab:5000",
        VERSION="1.1.0",
    )
    assert run.rc == 0, run.stderr
    assert deployed_image(run) == "registry.lab:5000/usersapi:1.1.0"
    assert "api: registry.lab:5000/usersapi:1.0.0 -> registry.lab:5000/usersapi:1.1.0" in run.stdout


def test_deploy_sets_the_app_password_through_stdin_only(sandbox: Path) -> None:
    run = swarm(sandbox, "deploy", rules=[RUNNING_1_0, *HEALTHY], REGISTRY="registry.lab:5000")
    assert run.rc == 0, run.stderr
    assert all(APP_PASSWORD not in " ".join(map(str, c["args"])) for c in run.calls)
    update = [c for c in run.calls if "updateUser" in str(c.get("stdin", ""))]
    assert len(update) == 1
    assert APP_PASSWORD in str(update[0]["stdin"])
    assert "readWrite" in str(update[0]["stdin"])
    assert APP_PASSWORD not in run.stdout + run.stderr


def test_deploy_ends_the_wait_with_a_failing_tasks_error(sandbox: Path) -> None:
    rules: list[Rule] = [
        RUNNING_1_0,
        {"pattern": r"^exec fake-manager docker stack ps -q --no-trunc", "stdout": "old1\n"},
        {
            "pattern": r"stack ps --no-trunc --format",
            "stdout": "old1|fake_api.1|fake-worker2|Running 5 minutes ago|\n"
            "new1|fake_api.1|fake-worker2|Rejected 2 seconds ago|No such image: "
            "registry.lab:5000/usersapi:1.0.0\n",
        },
        *HEALTHY,
    ]
    run = swarm(sandbox, "deploy", rules=rules, REGISTRY="registry.lab:5000", WAIT_TIMEOUT="30")
    assert run.rc == 1
    assert "fake_api.1 on fake-worker2: Rejected: No such image" in run.stdout
    assert "converged after" not in run.stdout


# --- backup and restore ---------------------------------------------------------------------
def test_backup_writes_a_file_only_its_owner_reads(sandbox: Path) -> None:
    archive = sandbox / "dump.gz"
    archive.write_bytes(gzip.compress(b"archive bytes"))
    rules: list[Rule] = [{"pattern": r"mongodump", "stdout_file": str(archive)}, *HEALTHY]
    run = swarm(sandbox, "backup", rules=rules)
    assert run.rc == 0, run.stderr
    files = list((sandbox / "backups").iterdir())
    assert len(files) == 1
    assert re.fullmatch(r"fake-\d{8}T\d{6}Z\.archive\.gz", files[0].name)
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert f"wrote {files[0]}" in run.stdout
    assert files[0].read_bytes() == archive.read_bytes()
    dump = next(c for c in run.calls if "mongodump" in " ".join(map(str, c["args"])))
    assert "root-password" not in " ".join(map(str, dump["args"]))


def test_backup_leaves_no_file_when_mongodump_fails(sandbox: Path) -> None:
    rules: list[Rule] = [{"pattern": r"mongodump", "rc": 1, "stderr": "Failed: auth\n"}, *HEALTHY]
    run = swarm(sandbox, "backup", str(sandbox / "b.gz"), rules=rules)
    assert run.rc == 1
    assert not (sandbox / "b.gz").exists()


def write_bad_archive(sandbox: Path, kind: str) -> Path:
    path = sandbox / f"{kind}.archive.gz"
    good = gzip.compress(b"\x6d\xe2\x99\x81" + b"x" * 4000)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "not-gzip":
        path.write_text("just text\n")
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "corrupt":
        path.write_bytes(good[:20] + bytes(b ^ 0xFF for b in good[20:40]) + good[40:])
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "no such file"),
        ("empty", "empty file"),
        ("not-gzip", "not a complete gzip file"),
        ("truncated", "not a complete gzip file"),
        ("corrupt", "not a complete gzip file"),
    ],
)
def test_restore_refuses_a_bad_file_before_touching_the_database(
    sandbox: Path, kind: str, message: str
) -> None:
    path = write_bad_archive(sandbox, kind)
    run = swarm(sandbox, "restore", str(path), rules=HEALTHY)
    assert run.rc == 1
    assert message in run.stderr
    assert "nothing restored" in run.stderr or kind in ("missing", "empty")
    assert not run.called("mongorestore")


@pytest.mark.parametrize(
    ("dry_run", "message"),
    [
        (
            {"stderr": "preparing collections to restore from\ndry run completed\n"},
            "holds no usersdb.users collection",
        ),
        (
            {
                "rc": 1,
                "stderr": "Failed: stream or file does not appear to be a mongodump archive\n",
            },
            "does not appear to be a mongodump archive",
        ),
    ],
    ids=["another database's archive", "not an archive"],
)
def test_restore_refuses_what_the_dry_run_does_not_vouch_for(
    sandbox: Path, dry_run: Rule, message: str
) -> None:
    path = sandbox / "odd.archive.gz"
    path.write_bytes(gzip.compress(b"no archive of usersdb"))
    rules: list[Rule] = [{"pattern": r"mongorestore.*--dryRun", **dry_run}, *HEALTHY]
    run = swarm(sandbox, "restore", str(path), rules=rules)
    assert run.rc == 1
    assert message in run.stderr
    assert run.called("mongorestore.*--dryRun")
    assert not run.called("--drop")


def test_restore_of_a_checked_archive_drops_and_restores(sandbox: Path) -> None:
    path = sandbox / "good.archive.gz"
    path.write_bytes(gzip.compress(b"archive"))
    rules: list[Rule] = [
        {
            "pattern": r"mongorestore.*--dryRun",
            "stderr": "reading metadata for usersdb.users from archive on stdin\n",
        },
        *HEALTHY,
    ]
    run = swarm(sandbox, "restore", str(path), rules=rules)
    assert run.rc == 0, run.stderr
    restore = [c for c in run.calls if "--drop" in " ".join(map(str, c["args"]))]
    assert len(restore) == 1
    assert "--nsInclude='usersdb.*'" in " ".join(map(str, restore[0]["args"]))


# --- small things ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("localhost", "DNS:localhost,IP:127.0.0.1"),
        ("127.0.0.1", "IP:127.0.0.1,DNS:localhost"),
        ("api.example.com", "DNS:api.example.com,DNS:localhost,IP:127.0.0.1"),
    ],
)
def test_the_certificate_names_each_host_once(host: str, expected: str) -> None:
    done = subprocess.run(
        ["bash", "-c", f'source "{SWARM_SH}"; subject_alt_names "$1"', "_", host],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout == expected


def test_swarm_shows_the_init_line_but_not_the_join_token(sandbox: Path) -> None:
    rules: list[Rule] = [
        {"pattern": r"docker info -f \{\{\.Swarm\.LocalNodeState\}\}", "stdout": "inactive\n"},
        {"pattern": r"^inspect -f \{\{\(index", "stdout": "10.0.0.2\n"},
        {
            "pattern": r"swarm init",
            "stdout": "Swarm initialized: current node (abc) is now a "
            "manager.\n\nTo add a worker to this swarm, run the following command:\n\n"
            "    docker swarm join --token SWMTKN-1-secret 10.0.0.2:2377\n",
        },
        {"pattern": r"join-token -q worker", "stdout": "SWMTKN-1-secret\n"},
        *HEALTHY,
    ]
    run = swarm(sandbox, "swarm", rules=rules)
    assert run.rc == 0, run.stderr
    assert "Swarm initialized: current node (abc) is now a manager." in run.stdout
    assert "SWMTKN" not in run.stdout + run.stderr


def test_down_names_what_it_keeps(sandbox: Path) -> None:
    (sandbox / "backups").mkdir()
    (sandbox / "backups" / "fake-1.archive.gz").write_bytes(b"x")
    rules: list[Rule] = [
        RUNNING_1_0,
        {"pattern": r"docker info -f \{\{\.Swarm\.LocalNodeState\}\}", "stdout": "active\n"},
        *HEALTHY,
    ]
    run = swarm(sandbox, "down", rules=rules)
    assert run.rc == 0, run.stderr
    assert f"kept: the passwords and certificate in {sandbox / 'secrets'}" in run.stdout
    assert f"kept: 1 backup(s) in {sandbox / 'backups'}" in run.stdout
    assert "kept: the image it ran, registry.lab:5000/usersapi:1.0.0, in its registry" in run.stdout


def test_a_rollback_ends_the_deploy_with_one_line_naming_image_and_cause(sandbox: Path) -> None:
    rules: list[Rule] = [
        RUNNING_1_0,
        {
            "pattern": r"service inspect -f \{\{\.Spec\.Name\}\}",
            "stdout": "fake_api rollback_completed\nfake_ingress none\nfake_mongo none\n",
        },
        {
            "pattern": r"stack ps --no-trunc --format",
            "stdout": "new1|fake_api.1|fake-worker2|Failed 9 seconds ago|"
            "task: non-zero exit (143): dockerexec: unhealthy container\n",
        },
        *HEALTHY,
    ]
    run = swarm(sandbox, "deploy", rules=rules, REGISTRY="registry.lab:5000", VERSION="1.1.0")
    assert run.rc == 1
    rolled = [line for line in run.stdout.splitlines() if line.startswith("ROLLED BACK")]
    assert rolled == [
        (
            "ROLLED BACK: fake_api runs registry.lab:5000/usersapi:1.0.0 again: the update to "
            "registry.lab:5000/usersapi:1.1.0 failed: fake_api.1 on fake-worker2: Failed: task: "
            "non-zero exit (143): dockerexec: unhealthy container"
        )
    ]
    assert "converged" not in run.stdout
