"""stack/swarm.sh and its helpers, run against a fake `docker` on PATH, in both modes.

The fake logs every call (its arguments, and its stdin when the call streams one) and answers
from a list of rules: the first whose pattern is found in the joined arguments (and whose
marker condition holds) gives the output and exit status, may sleep (a call that hangs) or
interrupt the script's process group (Ctrl-C). A rule can set a marker, so that the swarm
answers differently after `docker stack deploy`. Everything else succeeds silently. What a
real swarm does is tested by `tox -e e2e`; these tests prove what the script asks of Docker,
in which order, and what it refuses before it changes anything.

Lab mode: no SWARM_CONTEXT, the endpoint is the context fake-lab that `nodes` makes. Own
swarm: SWARM_CONTEXT=prod.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import http.server
import json
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import api_checks
import pytest
import swarm_state
import yaml

import usersapi_keys

SWARM_SH = Path(__file__).parent / "stack" / "swarm.sh"
STACK = "fake"
LAB = "fake-lab"
OWN = "prod"
ROOT_PASSWORD = "root-password-9c1e"
APP_PASSWORD = "app-password-7f3a"
# A quote, a double quote, a backslash, ';', '#' and a space: the backup user's password.
BACKUP_PASSWORD = "b'k \"x\\ ;#1"
IMAGE = "registry.lab:5000/usersapi:1.0.0"
ADMIN_KEY = "usersapi_" + "A" * 43
VERIFY_KEY = "usersapi_" + "V" * 43
KEY_LINES = (
    "# the stack's keys\n"
    f"{usersapi_keys.key_line('admin', 'write', ADMIN_KEY)}\n"
    f"{usersapi_keys.key_line('verify', 'read', VERIFY_KEY)}\n"
)
# What `docker stack deploy` reads from its environment (the fake logs them).
STACK_FILE_VARIABLES = {
    "API_IMAGE",
    "API_MONGO_USER",
    "API_REPLICAS",
    "SECRETS_DIR",
    "MONGO_DB",
    "MONGO_APP_PASSWORD_HASH",
    "MONGO_PASSWORD_HASH",
    "TLS_CERT_HASH",
    "TLS_KEY_HASH",
    "TLS_CERT_FILE",
    "TLS_KEY_FILE",
    "NGINX_CONF_HASH",
    "API_KEYS_HASH",
    "RATE_LIMIT",
    "RATE_BURST",
    "CONN_LIMIT",
    "STACK_NAME",
}
Rule = dict[str, Any]  # pattern; stdout | stdout_file | json; stderr; rc; sleep; interrupt;
# mark (a marker it sets); after / before (a marker that must / must not be set); save_env
# (variables whose values later json answers put in place of @NAME@)

FAKE_DOCKER = """#!{python}
import json, os, re, signal, sys, time
args = sys.argv[1:]
line = " ".join(args)
entry = {{"args": args, "env": {{k: v for k, v in os.environ.items() if k in {env_keys!r}}}}}
if "-i" in args or (args and args[-1] == "-"):
    entry["stdin"] = sys.stdin.buffer.read().decode("utf-8", "replace")
with open(os.environ["FAKE_DOCKER_LOG"], "a") as log:
    log.write(json.dumps(entry) + "\\n")
markers = os.environ["FAKE_DOCKER_MARKERS"]
for rule in json.load(open(os.environ["FAKE_DOCKER_RULES"])):
    if "after" in rule and not os.path.exists(os.path.join(markers, rule["after"])):
        continue
    if "before" in rule and os.path.exists(os.path.join(markers, rule["before"])):
        continue
    if re.search(rule["pattern"], line):
        if "mark" in rule:
            open(os.path.join(markers, rule["mark"]), "w").close()
        for name in rule.get("save_env", []):
            with open(os.path.join(markers, "env-" + name), "w") as saved:
                saved.write(os.environ.get(name, ""))
        if rule.get("interrupt"):
            os.killpg(os.getpgrp(), signal.SIGINT)
            time.sleep(2)
        time.sleep(rule.get("sleep", 0))
        if "stdout_file" in rule:
            sys.stdout.buffer.write(open(rule["stdout_file"], "rb").read())
        elif "json" in rule:
            text = json.dumps(rule["json"])
            for name in os.listdir(markers):
                if name.startswith("env-"):
                    value = open(os.path.join(markers, name)).read()
                    text = text.replace("@" + name[4:] + "@", value)
            sys.stdout.write(text)
        else:
            sys.stdout.write(rule.get("stdout", ""))
        sys.stderr.write(rule.get("stderr", ""))
        sys.exit(rule.get("rc", 0))
"""


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def tools_config(password: str) -> str:
    """What deploy writes into the backup secret: a YAML double-quoted string."""
    escaped = password.replace("\\", "\\\\").replace('"', '\\"')
    return f'password: "{escaped}"\n'


APP_SECRET = f"{STACK}_mongo_app_password_{short_hash(APP_PASSWORD)}"
ROOT_SECRET = f"{STACK}_mongo_root_password_{short_hash(ROOT_PASSWORD)}"
BACKUP_SECRET = f"{STACK}_mongo_backup_{short_hash(tools_config(BACKUP_PASSWORD))}"
KEYS_SECRET = f"{STACK}_api_keys_{short_hash(KEY_LINES)}"
CERT_SECRET = f"{STACK}_tls_cert_{short_hash('crt')}"
KEY_SECRET = f"{STACK}_tls_key_{short_hash('key')}"
NGINX_CONF = f"{STACK}_nginx_conf_{short_hash((SWARM_SH.parent / 'nginx.conf').read_text())}"


# --- a fake swarm, as Docker's JSON ---------------------------------------------------------
def service(
    short: str,
    image: str,
    *,
    env: list[str] | None = None,
    secrets: list[tuple[str, str]] | None = None,
    configs: list[str] | None = None,
    ports: list[int] | None = None,
    replicas: int = 1,
    update: str | None = None,
    cap_add: list[str] | None = None,
) -> dict[str, Any]:
    template = {
        "ContainerSpec": {
            "Image": image + "@sha256:" + "a" * 64,
            "Env": env or [],
            "Secrets": [
                {"File": {"Name": target, "UID": "0", "GID": "0", "Mode": 256}, "SecretName": name}
                for target, name in secrets or []
            ],
            "Configs": [{"ConfigName": name} for name in configs or []],
            "ReadOnly": True,
            "CapabilityDrop": ["ALL"],
            "CapabilityAdd": [f"CAP_{name}" for name in cap_add or []],
            "Mounts": [
                {"Type": "tmpfs", "Target": "/scratch", "TmpfsOptions": {"SizeBytes": 1024}}
            ],
        },
        "Resources": {"Limits": {"NanoCPUs": 1_000_000_000, "MemoryBytes": 1 << 30, "Pids": 128}},
        "LogDriver": {"Name": "json-file", "Options": {"max-size": "10m", "max-file": "3"}},
        "Networks": [{"Target": "net-back"}],
        "ForceUpdate": 0,
    }
    spec = {
        "Name": f"{STACK}_{short}",
        "TaskTemplate": template,
        "UpdateConfig": {"Order": "start-first", "Parallelism": 1, "FailureAction": "rollback"},
        "Mode": {"Replicated": {"Replicas": replicas}},
        "EndpointSpec": {
            "Ports": [{"PublishedPort": p, "PublishMode": "host"} for p in ports or []]
        },
    }
    found: dict[str, Any] = {"ID": f"svc-{short}", "Spec": spec}
    if update:
        found["UpdateStatus"] = {"State": update, "Message": "update rolled back"}
    return found


def task(
    svc: dict[str, Any],
    slot: int,
    *,
    state: str = "running",
    desired: str = "running",
    node: str = "node-1",
    err: str = "",
    spec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "ID": f"task-{svc['ID']}-{slot}-{state}",
        "ServiceID": svc["ID"],
        "Slot": slot,
        "NodeID": node,
        "DesiredState": desired,
        "CreatedAt": "2026-01-01T00:00:00Z",
        "Status": {"State": state, "Err": err},
        "Spec": copy.deepcopy(spec or svc["Spec"]["TaskTemplate"]),
    }


def ended_task(svc: dict[str, Any], state: str, err: str) -> dict[str, Any]:
    """A task of the service's first slot, on the api node, that was rejected or failed."""
    return task(svc, 1, state=state, desired="shutdown", node="node-3", err=err)


NODES = [
    {
        "ID": "node-1",
        "Description": {"Hostname": "fake-manager"},
        "Spec": {"Labels": {"app": "database"}},
    },
    {
        "ID": "node-2",
        "Description": {"Hostname": "fake-worker1"},
        "Spec": {"Labels": {"app": "ingress"}},
    },
    {
        "ID": "node-3",
        "Description": {"Hostname": "fake-worker2"},
        "Spec": {"Labels": {"app": "api"}},
    },
]


@dataclass
class Swarm:
    """The stack as the fake swarm shows it."""

    api: dict[str, Any]
    mongo: dict[str, Any]
    ingress: dict[str, Any]
    tasks: list[dict[str, Any]]

    @property
    def services(self) -> list[dict[str, Any]]:
        return [self.api, self.mongo, self.ingress]


LIMITS = {"RATE_LIMIT": "20", "RATE_BURST": "40", "CONN_LIMIT": "32"}


def healthy_swarm(
    image: str = IMAGE,
    *,
    user: str = "usersapi_a",
    app_secret: str = APP_SECRET,
    keys_secret: str = KEYS_SECRET,
    cert_secret: str = CERT_SECRET,
    key_secret: str = KEY_SECRET,
) -> Swarm:
    api = service(
        "api",
        image,
        env=[
            f"MONGO_USER={user}",
            "MONGO_DB=usersdb",
            "MONGO_HOST=mongo",
            "MONGO_OP_TIMEOUT_MS=3000",
        ],
        secrets=[("mongo_app_password", app_secret), ("api_keys", keys_secret)],
        replicas=2,
    )
    mongo = service(
        "mongo",
        "mongo:8.0",
        secrets=[("mongo_root_password", ROOT_SECRET)],
        cap_add=["CHOWN", "DAC_READ_SEARCH", "SETGID", "SETUID"],
    )
    ingress = service(
        "ingress",
        "nginx:1.27-alpine",
        env=[f"{name}={value}" for name, value in LIMITS.items()],
        secrets=[("tls.crt", cert_secret), ("tls.key", key_secret)],
        configs=[NGINX_CONF],
        ports=[28080, 28443],
        cap_add=["CHOWN", "SETGID", "SETUID"],
    )
    tasks = [
        task(api, 1, node="node-3"),
        task(api, 2, node="node-3"),
        task(mongo, 1),
        task(ingress, 1, node="node-2"),
    ]
    return Swarm(api, mongo, ingress, tasks)


def swarm_rules(swarm: Swarm, when: dict[str, str] | None = None) -> list[Rule]:
    """What the swarm answers about the stack: services, tasks, nodes."""
    when = when or {}
    ids = "\n".join(t["ID"] for t in swarm.tasks) + "\n"
    image_of = r"service inspect -f \{\{\.Spec\.TaskTemplate\.ContainerSpec\.Image\}\} "
    rules: list[Rule] = [
        {
            "pattern": image_of + "fake_api$",
            "stdout": swarm.api["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] + "\n",
        },
        {
            "pattern": image_of + "fake_mongo$",
            "stdout": "mongo:8.0@sha256:" + "b" * 64 + "\n",
        },
        {"pattern": r"service inspect fake_api$", "json": [swarm.api]},
        {"pattern": r"service inspect fake_mongo$", "json": [swarm.mongo]},
        {"pattern": r"service inspect fake_ingress$", "json": [swarm.ingress]},
        {
            "pattern": r"service ls -q --filter label=com\.docker\.stack\.namespace=fake$",
            "stdout": "svc-api\nsvc-mongo\nsvc-ingress\n",
        },
        {"pattern": r"service inspect svc-api svc-mongo svc-ingress$", "json": swarm.services},
        {"pattern": r"stack ps -q --no-trunc fake$", "stdout": ids},
        {"pattern": r"inspect --type task task-", "json": swarm.tasks},
    ]
    return [{**rule, **when} for rule in rules]


def endpoint_rules(context: str = LAB, availability: str = "active") -> list[Rule]:
    """A reachable manager of an active swarm, and short-lived tasks that start at once."""
    return [
        {
            "pattern": rf"^context inspect --format \S+ {context}$",
            "stdout": "tcp://10.0.0.2:2375\n",
        },
        {
            "pattern": r"info --format \{\{\.Swarm\.LocalNodeState\}\}",
            "stdout": "active true node-1\n",
        },
        {"pattern": r"node inspect self --format", "stdout": f"{availability} fake-manager\n"},
        {"pattern": r"node ls -q$", "stdout": "node-1\nnode-2\nnode-3\n"},
        {
            "pattern": r"node ls --format \{\{\.Hostname\}\}$",
            "stdout": "fake-manager\nfake-worker1\nfake-worker2\n",
        },
        {"pattern": r"node inspect node-1 node-2 node-3$", "json": NODES},
        {"pattern": r"service ps -q --no-trunc fake-", "stdout": "tsk1\n"},
        {"pattern": r"inspect --type task --format .* tsk1$", "stdout": "running|cid123|\n"},
        {
            "pattern": r"secret ls --filter label=com\.docker\.stack\.namespace=fake "
            r"--filter label=usersapi\.secret=mongo_backup",
            "stdout": BACKUP_SECRET + "\n",
        },
        {"pattern": r"^info -f", "stdout": "registry.lab:5000 \n"},
        {"pattern": r"secret inspect", "rc": 1},
        {"pattern": r"config inspect", "rc": 1},
    ]


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str
    calls: list[Rule]

    def args(self, call: Rule) -> str:
        return " ".join(map(str, call["args"]))

    def called(self, pattern: str) -> bool:
        return any(re.search(pattern, self.args(c)) for c in self.calls)

    def index(self, pattern: str) -> int:
        return next(i for i, c in enumerate(self.calls) if re.search(pattern, self.args(c)))

    def matching(self, pattern: str) -> list[Rule]:
        return [c for c in self.calls if re.search(pattern, self.args(c))]


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "docker"
    fake.write_text(
        FAKE_DOCKER.format(python=sys.executable, env_keys=sorted(STACK_FILE_VARIABLES))
    )
    fake.chmod(0o755)
    (tmp_path / "markers").mkdir()
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name, value in [
        ("mongo_root_password", ROOT_PASSWORD),
        ("mongo_app_password", APP_PASSWORD),
        ("mongo_backup_password", BACKUP_PASSWORD),
        ("tls.crt", "crt"),
        ("tls.key", "key"),
        ("api_keys", KEY_LINES),
        ("api_key", ADMIN_KEY + "\n"),
        ("verify_key", VERIFY_KEY + "\n"),
    ]:
        (secrets / name).write_text(value)
    return tmp_path


SETTINGS = {
    "DOCKERHUB_USER",
    "REGISTRY",
    "API_IMAGE",
    "VERSION",
    "STACK_NAME",
    "HTTP_PORT",
    "HTTPS_PORT",
    "BACKUP_DIR",
    "SECRETS_DIR",
    "SWARM_CONTEXT",
    "DATABASE_NODE",
    "INGRESS_NODE",
    "API_NODE",
    "MONGO_DB",
    "PYTHON",
    "NODE_PREFIX",
    "TLS_CERT_FILE",
    "TLS_KEY_FILE",
    "RATE_LIMIT",
    "RATE_BURST",
    "CONN_LIMIT",
    "PUBLIC_HOST",
}


def write_rules(sandbox: Path, rules: list[Rule]) -> Path:
    path = sandbox / "rules.json"
    path.write_text(json.dumps(rules))
    return path


def fake_docker_env(sandbox: Path, rules: list[Rule], log: Path) -> dict[str, str]:
    """What the fake docker in SANDBOX needs: PATH to it, its files, and the stack's name."""
    return {
        "PATH": f"{sandbox / 'bin'}:{os.environ['PATH']}",
        "FAKE_DOCKER_LOG": str(log),
        "FAKE_DOCKER_RULES": str(write_rules(sandbox, rules)),
        "FAKE_DOCKER_MARKERS": str(sandbox / "markers"),
        "STACK_NAME": STACK,
    }


def swarm(
    sandbox: Path,
    *args: str,
    rules: list[Rule] | None = None,
    session: bool = False,
    env: dict[str, str] | None = None,
    **settings: str,
) -> Run:
    log = sandbox / "docker.log"
    log.write_text("")
    for marker in (sandbox / "markers").iterdir():
        marker.unlink()
    base = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    full_env = {
        **base,
        **fake_docker_env(sandbox, rules or [], log),
        "HTTP_PORT": "28080",
        "HTTPS_PORT": "28443",
        "SECRETS_DIR": str(sandbox / "secrets"),
        "BACKUP_DIR": str(sandbox / "backups"),
        "WAIT_TIMEOUT": "6",
        "CALL_TIMEOUT": "3",
        **(env or {}),
        **settings,
    }
    done = subprocess.run(
        ["bash", str(SWARM_SH), *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
        start_new_session=session,
    )
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    return Run(done.returncode, done.stdout, done.stderr, calls)


def own(**env: str) -> dict[str, str]:
    """The settings of a swarm of one's own."""
    return {
        "SWARM_CONTEXT": OWN,
        "DATABASE_NODE": "fake-manager",
        "INGRESS_NODE": "fake-worker1",
        "API_NODE": "fake-worker2",
        **env,
    }


# --- the step list and its refusals ------------------------------------------------------------
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


@pytest.mark.parametrize(
    "args", [["deploy", "--help"], ["-h"], ["all", "down", "-h"], ["--help", "bogus"]]
)
def test_help_anywhere_prints_the_usage_and_runs_nothing(sandbox: Path, args: list[str]) -> None:
    run = swarm(sandbox, *args, rules=endpoint_rules())
    assert run.rc == 0
    assert "usage: stack/swarm.sh STEP [STEP...]" in run.stdout
    assert "SWARM_CONTEXT" in run.stdout
    assert run.calls == []


def test_help_lists_every_setting_with_its_default(sandbox: Path) -> None:
    run = swarm(sandbox, "help")
    script = "".join(p.read_text() for p in (SWARM_SH.parent).glob("*.sh"))
    pattern = r'^\s*([A-Z][A-Z0-9_]+)=(?:\$\(in_project ")?\$\{\1:-'
    settings = set(re.findall(pattern, script, re.MULTILINE))
    assert {
        "SWARM_CONTEXT",
        "DATABASE_NODE",
        "API_NODE",
        "MONGO_BACKUP_USER",
        "BACKUP_DIR",
    } <= settings
    for name in settings:
        assert re.search(rf"^  {name} +.*\[.+\]$", run.stdout, re.MULTILINE), name


def test_restore_needs_a_file_before_any_step_runs(sandbox: Path) -> None:
    run = swarm(sandbox, "status", "restore")
    assert run.rc == 2
    assert "restore FILE" in run.stderr
    assert run.calls == []


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("HTTP_PORT", "80x", "HTTP_PORT must be a port number"),
        ("MONGO_DB", "users.db", "is not a MongoDB database name"),
        ("MONGO_DB", "users db", "is not a MongoDB database name"),
        ("WAIT_TIMEOUT", "0", "WAIT_TIMEOUT must be a whole number above 0"),
        ("API_NODE", "fake-manager", "must name different nodes"),
        ("RATE_LIMIT", "0", "RATE_LIMIT must be a whole number from 1 to 100000"),
        ("RATE_LIMIT", "20r", "RATE_LIMIT must be a whole number"),
        ("RATE_BURST", "10", "RATE_BURST must be a whole number from 26 to 100000"),
        ("CONN_LIMIT", "1e3", "CONN_LIMIT must be a whole number from 25"),
        ("CONN_LIMIT", "9999999", "CONN_LIMIT must be a whole number from 25 to 100000"),
    ],
)
def test_a_bad_setting_is_refused_before_any_step(
    sandbox: Path, setting: str, value: str, message: str
) -> None:
    run = swarm(sandbox, "status", env={setting: value})
    assert run.rc == 2
    assert message in run.stderr
    assert run.calls == []


def test_steps_run_in_order_and_stop_at_the_first_failure(sandbox: Path) -> None:
    # No lab swarm (no context): status fails, so down never starts.
    rules: list[Rule] = [{"pattern": r"^context inspect", "rc": 1}]
    run = swarm(sandbox, "help", "status", "down", rules=rules)
    assert run.rc == 1
    assert run.stdout.index("usage: stack/swarm.sh STEP") < run.stdout.index("==> status")
    assert "no lab swarm here (no Docker context fake-lab)" in run.stderr
    assert "swarm.sh all' builds the lab swarm" in run.stderr
    assert "==> down" not in run.stdout


# --- a swarm of one's own: refusals ------------------------------------------------------------
@pytest.mark.parametrize("step", ["nodes", "swarm"])
def test_the_lab_steps_refuse_a_swarm_of_ones_own(sandbox: Path, step: str) -> None:
    run = swarm(sandbox, "status", step, env=own())
    assert run.rc == 2
    assert f"'{step}' builds the lab swarm on this machine" in run.stderr
    assert "SWARM_CONTEXT=prod" in run.stderr
    assert run.calls == []


def test_labels_on_ones_own_swarm_needs_the_node_names(sandbox: Path) -> None:
    run = swarm(sandbox, "labels", SWARM_CONTEXT=OWN, DATABASE_NODE="db1")
    assert run.rc == 2
    assert "set DATABASE_NODE, INGRESS_NODE and API_NODE" in run.stderr
    assert run.calls == []


def test_a_missing_context_is_named(sandbox: Path) -> None:
    run = swarm(sandbox, "status", rules=[{"pattern": r"^context inspect", "rc": 1}], env=own())
    assert run.rc == 1
    assert "SWARM_CONTEXT=prod: no such Docker context" in run.stderr
    assert not run.called(r"^--context")


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ({"stdout": "active false node-1\n"}, "is a worker: the context must reach a manager"),
        ({"stdout": "inactive false \n"}, "is not in a swarm (state: inactive)"),
        ({"rc": 1, "stderr": "Cannot connect to the Docker daemon\n"}, "does not answer"),
        ({"sleep": 10}, "no answer within 3 s"),
    ],
    ids=["worker", "no swarm", "unreachable", "hangs"],
)
def test_an_endpoint_that_is_no_manager_is_refused_with_the_cause(
    sandbox: Path, answer: Rule, message: str
) -> None:
    rules = [{"pattern": r"info --format \{\{\.Swarm", **answer}, *endpoint_rules(OWN)]
    run = swarm(sandbox, "status", rules=rules, env=own())
    assert run.rc == 1
    assert message in run.stderr


def test_a_drained_manager_is_refused_before_a_task_is_made(sandbox: Path) -> None:
    rules = [*swarm_rules(healthy_swarm()), *endpoint_rules(OWN, availability="drain")]
    run = swarm(sandbox, "backup", rules=rules, env=own())
    assert run.rc == 1
    assert "has availability 'drain': it runs no tasks" in run.stderr
    assert "docker node update --availability active fake-manager" in run.stderr
    assert not run.called(r"service create")


def test_after_down_the_messages_suggest_all(sandbox: Path) -> None:
    run = swarm(sandbox, "backup", rules=[{"pattern": r"^context inspect", "rc": 1}])
    assert run.rc == 1
    assert "swarm.sh all' builds the lab swarm and deploys the stack" in run.stderr
    assert "nodes' first" not in run.stderr


# --- every swarm call goes through the endpoint --------------------------------------------------
LOCAL_COMMANDS = {"context", "info", "manifest", "stack", "build", "push", "image", "pull"}
NODE_CONTAINERS = ("fake-manager", "fake-worker1", "fake-worker2")


def assert_through_the_endpoint(run: Run, context: str) -> None:
    """No call touches a node container: a call either goes through the context or is one of
    this machine's own (its engine builds, pushes and reads registries)."""
    for call in run.calls:
        args = [str(a) for a in call["args"]]
        if args[:2] == ["--context", context]:
            assert args[2] not in {"cp", "run"}, args
            continue
        assert args[0] in LOCAL_COMMANDS, args
        assert args[:2] != ["stack", "deploy"] or "--help" in args, args
        assert not any(name in a for a in args for name in NODE_CONTAINERS), args


# --- deploy -------------------------------------------------------------------------------------
def deploy_rules(
    before: Swarm | None, after: Swarm, extra: list[Rule] | None = None, context: str = LAB
) -> list[Rule]:
    rules: list[Rule] = [*(extra or [])]
    rules.append({"pattern": r"stack deploy --with-registry-auth", "mark": "deployed"})
    rules += swarm_rules(after, {"after": "deployed"})
    if before is not None:
        rules += swarm_rules(before, {"before": "deployed"})
    else:
        rules += [
            {"pattern": r"service inspect .*fake_", "rc": 1, "before": "deployed"},
            {
                "pattern": r"service ls -q --filter label=com\.docker\.stack\.namespace=fake$",
                "stdout": "",
                "before": "deployed",
            },
        ]
    rules.append({"pattern": r"exec -i cid123 python - users", "stdout": "set the users\n"})
    return [*rules, *endpoint_rules(context)]


def deploy_call(run: Run) -> Rule:
    return next(c for c in run.calls if "stack" in c["args"] and "--prune" in c["args"])


def deployed(run: Run, name: str) -> str:
    """A variable `docker stack deploy` found in its environment."""
    return str(deploy_call(run)["env"][name])


@pytest.mark.parametrize("mode", ["lab", "own"])
def test_deploy_copies_nothing_and_goes_through_the_endpoint_only(sandbox: Path, mode: str) -> None:
    context, settings = (LAB, {}) if mode == "lab" else (OWN, own())
    run = swarm(
        sandbox,
        "deploy",
        rules=deploy_rules(healthy_swarm(), healthy_swarm(), context=context),
        REGISTRY="registry.lab:5000",
        env=settings,
    )
    assert run.rc == 0, run.stderr
    assert "converged after" in run.stdout
    assert_through_the_endpoint(run, context)
    assert deploy_call(run)["args"][:5] == [
        "--context",
        context,
        "stack",
        "deploy",
        "--with-registry-auth",
    ]
    assert deployed(run, "SECRETS_DIR") == str(sandbox / "secrets")
    # The passwords: in files the CLI reads (SECRETS_DIR), or on stdin; never an argument.
    for call_ in run.calls:
        joined = " ".join(map(str, call_["args"]))
        for secret in (ROOT_PASSWORD, APP_PASSWORD, BACKUP_PASSWORD):
            assert secret not in joined
    assert APP_PASSWORD not in run.stdout + run.stderr
    assert not run.called(r"(^| )(cp|scp)( |$)|docker exec fake-")


def deploy_from(sandbox: Path, before: Swarm | None, after: Swarm, **settings: str) -> Run:
    """deploy, the swarm as BEFORE until `docker stack deploy` and as AFTER then."""
    rules = deploy_rules(before, after)
    return swarm(sandbox, "deploy", rules=rules, env={"REGISTRY": "registry.lab:5000", **settings})


def steady_deploy(sandbox: Path) -> Run:
    """deploy on a stack that runs and converges at once, its image in a registry."""
    return deploy_from(sandbox, healthy_swarm(), healthy_swarm())


def test_deploy_without_version_keeps_the_running_image(sandbox: Path) -> None:
    run = steady_deploy(sandbox)
    assert run.rc == 0, run.stderr
    assert deployed(run, "API_IMAGE") == IMAGE
    assert f"api: {IMAGE} (unchanged)" in run.stdout + run.stderr


def test_deploy_with_a_version_says_what_changes(sandbox: Path) -> None:
    new = "registry.lab:5000/usersapi:1.1.0"
    run = deploy_from(sandbox, healthy_swarm(), healthy_swarm(image=new), VERSION="1.1.0")
    assert run.rc == 0, run.stderr
    assert deployed(run, "API_IMAGE") == new
    assert f"api: {IMAGE} -> {new}" in run.stdout + run.stderr


@pytest.mark.parametrize("step", ["build", "push", "deploy"])
def test_no_registry_account_is_refused_by_name(sandbox: Path, step: str) -> None:
    rules = deploy_rules(None, healthy_swarm())
    run = swarm(sandbox, step, rules=rules)
    assert run.rc == 1
    for name in ("DOCKERHUB_USER", "REGISTRY", "API_IMAGE"):
        assert name in run.stderr
    assert not run.called(r"^build|^push|stack deploy|secret create")


def test_deploy_refuses_an_image_missing_from_its_registry(sandbox: Path) -> None:
    rules = [
        {
            "pattern": r"^manifest inspect",
            "rc": 1,
            "stderr": "no such manifest: registry.lab:5000/usersapi:9.9.9\n",
        },
        *deploy_rules(healthy_swarm(), healthy_swarm()),
    ]
    run = swarm(sandbox, "deploy", rules=rules, REGISTRY="registry.lab:5000", VERSION="9.9.9")
    assert run.rc == 1
    assert "registry.lab:5000/usersapi:9.9.9 is not in its registry" in run.stderr
    assert "VERSION=9.9.9" in run.stderr
    assert run.called(r"^manifest inspect --insecure registry\.lab:5000/usersapi:9\.9\.9$")
    assert not run.called(r"stack deploy --with|secret create|service create")


def test_a_first_deploy_sets_the_users_once_mongo_runs(sandbox: Path) -> None:
    run = deploy_from(sandbox, None, healthy_swarm(), VERSION="1.0.0")
    assert run.rc == 0, run.stderr
    assert deployed(run, "API_MONGO_USER") == "usersapi_a"
    users = run.index(r"exec -i cid123 python - users")
    assert run.index(r"stack deploy --with-registry-auth") < users
    call = [str(a) for a in run.calls[users]["args"]]
    assert call[call.index("--app") :][:4] == [
        "--app",
        "usersdb",
        "usersapi_a",
        "/run/secrets/app_password",
    ]
    assert call[call.index("--backup") :][:3] == [
        "--backup",
        "usersapi_backup",
        "/run/secrets/backup_config",
    ]
    assert "--lock-out" not in call
    assert "def users(" in run.calls[users]["stdin"]  # stack/mongo_tasks.py, fed on stdin


def test_the_backup_users_password_reaches_a_secret_on_stdin_as_yaml(sandbox: Path) -> None:
    run = steady_deploy(sandbox)
    assert run.rc == 0, run.stderr
    created = run.matching(rf"secret create .* {BACKUP_SECRET} -$")
    assert len(created) == 1
    text = created[0]["stdin"]
    assert text == tools_config(BACKUP_PASSWORD)
    assert yaml.safe_load(text) == {"password": BACKUP_PASSWORD}  # what a YAML parser finds


def test_an_unchanged_password_keeps_the_apis_user(sandbox: Path) -> None:
    now = healthy_swarm(user="usersapi_b")
    run = deploy_from(sandbox, now, now)
    assert run.rc == 0, run.stderr
    assert deployed(run, "API_MONGO_USER") == "usersapi_b"
    assert "usersapi_b (its password is unchanged)" in run.stdout
    assert not run.called(r"--lock-out")


def test_a_new_password_moves_the_api_to_the_other_user_then_locks_the_old_one_out(
    sandbox: Path,
) -> None:
    before = healthy_swarm(user="usersapi_a", app_secret=f"{STACK}_mongo_app_password_000000000000")
    after = healthy_swarm(user="usersapi_b")
    run = deploy_from(sandbox, before, after)
    assert run.rc == 0, run.stderr
    assert "moves from MongoDB user usersapi_a to usersapi_b" in run.stdout
    secret = run.index(rf"secret create .* {APP_SECRET} -$")
    assert run.calls[secret]["stdin"] == APP_PASSWORD
    first_users = run.index(r"exec -i cid123 python - users .*--app usersdb usersapi_b")
    stack_deploy = run.index(r"stack deploy --with-registry-auth")
    lock_out = run.index(r"--lock-out usersdb usersapi_a")
    assert secret < first_users < stack_deploy < lock_out
    assert deployed(run, "API_MONGO_USER") == "usersapi_b"
    assert deployed(run, "MONGO_APP_PASSWORD_HASH") == short_hash(APP_PASSWORD)


def test_a_failed_rotation_leaves_the_old_user_its_password(sandbox: Path) -> None:
    before = healthy_swarm(user="usersapi_a", app_secret=f"{STACK}_mongo_app_password_000000000000")
    after = healthy_swarm(user="usersapi_b")
    after.api["UpdateStatus"] = {"State": "rollback_completed", "Message": "rolled back"}
    run = deploy_from(sandbox, before, after)
    assert run.rc == 1
    assert "ROLLED BACK" in run.stdout
    assert not run.called(r"--lock-out")
    assert "the api still logs in as usersapi_a" in run.stdout


def test_old_secret_and_config_versions_are_pruned_and_current_ones_kept(sandbox: Path) -> None:
    old = [f"{STACK}_mongo_app_password_000000000000", f"{STACK}_tls_cert_111111111111"]
    current = [APP_SECRET, ROOT_SECRET, BACKUP_SECRET, CERT_SECRET, KEY_SECRET]
    extra: list[Rule] = [
        {
            "pattern": r"^--context fake-lab secret ls --filter "
            r"label=com\.docker\.stack\.namespace=fake --format",
            "stdout": "\n".join(old + current) + "\n",
        },
        {
            "pattern": r"^--context fake-lab config ls --filter "
            r"label=com\.docker\.stack\.namespace=fake --format",
            "stdout": f"{STACK}_nginx_conf_222222222222\n{NGINX_CONF}\n",
        },
    ]
    rules = deploy_rules(healthy_swarm(), healthy_swarm(), extra)
    run = swarm(sandbox, "deploy", rules=rules, REGISTRY="registry.lab:5000")
    assert run.rc == 0, run.stderr
    removed = {str(c["args"][-1]) for c in run.matching(r"(secret|config) rm ")}
    assert removed == {*old, f"{STACK}_nginx_conf_222222222222"}
    assert run.index(r"stack deploy --with") < run.index(r"secret rm ")


def test_deploy_ends_the_wait_with_a_failing_tasks_error(sandbox: Path) -> None:
    after = healthy_swarm()
    after.tasks.append(ended_task(after.api, "rejected", f"No such image: {IMAGE}"))
    after.tasks = [t for t in after.tasks if not (t["ServiceID"] == "svc-api" and t["Slot"] == 2)]
    run = deploy_from(sandbox, healthy_swarm(), after, WAIT_TIMEOUT="40")
    assert run.rc == 1
    assert f"FAILED: fake_api.1 on fake-worker2: Rejected: No such image: {IMAGE}" in run.stdout
    assert "converged" not in run.stdout


def test_a_rollback_ends_the_deploy_with_one_line_naming_image_and_cause(sandbox: Path) -> None:
    after = healthy_swarm()
    after.api["UpdateStatus"] = {"State": "rollback_completed", "Message": "update rolled back"}
    after.tasks.append(
        ended_task(
            after.api, "failed", "task: non-zero exit (143): dockerexec: unhealthy container"
        )
    )
    run = deploy_from(sandbox, healthy_swarm(), after, VERSION="1.1.0")
    assert run.rc == 1
    rolled = [line for line in run.stdout.splitlines() if line.startswith("ROLLED BACK")]
    assert rolled == [
        (
            f"ROLLED BACK: fake_api runs {IMAGE} again: the update to "
            "registry.lab:5000/usersapi:1.1.0 failed: fake_api.1 on fake-worker2: Failed: task: "
            "non-zero exit (143): dockerexec: unhealthy container"
        )
    ]
    assert "converged" not in run.stdout


def test_a_task_of_the_old_spec_still_running_is_not_convergence(sandbox: Path) -> None:
    after = healthy_swarm(image="registry.lab:5000/usersapi:1.1.0")
    old_spec = healthy_swarm().api["Spec"]["TaskTemplate"]
    after.tasks[1] = task(after.api, 2, node="node-3", spec=old_spec)
    run = deploy_from(sandbox, healthy_swarm(), after, VERSION="1.1.0")
    assert run.rc == 1
    assert "fake_api 1/2" in run.stdout
    assert "not converged after 6 s" in run.stdout
    assert not re.search(r"^ +converged after", run.stdout, re.MULTILINE)


def test_ctrl_c_during_docker_stack_deploy_never_ends_in_converged(sandbox: Path) -> None:
    rules = [
        {"pattern": r"stack deploy --with-registry-auth", "interrupt": True},
        *deploy_rules(healthy_swarm(), healthy_swarm()),
    ]
    run = swarm(sandbox, "deploy", rules=rules, session=True, REGISTRY="registry.lab:5000")
    assert run.rc == 130
    assert "INTERRUPTED" in run.stderr
    assert "converged" not in run.stdout
    made = {str(c["args"][c["args"].index("--name") + 1]) for c in run.matching(r"service create")}
    removed = {str(c["args"][-1]) for c in run.matching(r"service rm ")}
    assert made <= removed


# --- labels ----------------------------------------------------------------------------------
def test_labels_put_each_role_on_the_named_nodes_and_spread_the_api(sandbox: Path) -> None:
    nodes = [
        *copy.deepcopy(NODES),
        {
            "ID": "node-4",
            "Description": {"Hostname": "old-api"},
            "Spec": {"Labels": {"app": "api"}},
        },
    ]
    rules: list[Rule] = [
        {
            "pattern": r"node ls --format \{\{\.Hostname\}\}$",
            "stdout": "fake-manager\nfake-worker1\nfake-worker2\nold-api\nn5\n",
        },
        {"pattern": r"node ls -q$", "stdout": "node-1\nnode-2\nnode-3\nnode-4\n"},
        {
            "pattern": r"node inspect --format \{\{\.ID\}\}",
            "stdout": "node-1 fake-manager database\nnode-2 fake-worker1 ingress\n"
            "node-3 fake-worker2 api\nnode-4 old-api api\n",
        },
        {"pattern": r"node inspect node-1", "json": nodes},
        *endpoint_rules(OWN),
    ]
    run = swarm(sandbox, "labels", rules=rules, env=own(API_NODE="fake-worker2,n5"))
    assert run.rc == 0, run.stderr
    updates = [[str(a) for a in c["args"][4:]] for c in run.matching(r"node update")]
    assert ["--label-add", "app=database", "fake-manager"] in updates
    assert ["--label-add", "app=ingress", "fake-worker1"] in updates
    for node in ("fake-worker2", "n5"):
        assert [
            "--label-add",
            "app=api",
            "--label-add",
            f"usersapi.api-node={node}",
            node,
        ] in updates
    assert ["--label-rm", "app", "node-4"] in updates
    assert_through_the_endpoint(run, OWN)


def test_labels_refuse_a_node_the_swarm_does_not_have(sandbox: Path) -> None:
    run = swarm(sandbox, "labels", rules=endpoint_rules(OWN), env=own(API_NODE="nope"))
    assert run.rc == 1
    assert "no node nope in this swarm" in run.stderr
    assert not run.called(r"node update")


def test_the_stack_file_spreads_the_api_over_its_nodes() -> None:
    text = (SWARM_SH.parent / "docker-stack.yml").read_text()
    api = text[text.index("\n  api:") : text.index("\n  ingress:")]
    assert "- spread: node.labels.usersapi.api-node" in api
    assert "- node.labels.app == api" in api


# --- backup and restore ------------------------------------------------------------------------
def backup_rules(archive: Path | None = None, dump: Rule | None = None) -> list[Rule]:
    dump = dump or {"stdout_file": str(archive)}
    return [
        {"pattern": r"exec -i cid123 mongodump ", **dump},
        *swarm_rules(healthy_swarm()),
        *endpoint_rules(),
    ]


def test_backup_writes_a_file_only_its_owner_reads_in_a_private_ignored_folder(
    sandbox: Path,
) -> None:
    archive = sandbox / "dump.gz"
    archive.write_bytes(gzip.compress(b"archive bytes"))
    run = swarm(sandbox, "backup", rules=backup_rules(archive))
    assert run.rc == 0, run.stderr
    folder = sandbox / "backups"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert (folder / ".gitignore").read_text().splitlines()[-1] == "*"
    files = [f for f in folder.iterdir() if f.name != ".gitignore"]
    assert len(files) == 1
    assert re.fullmatch(r"fake-\d{8}T\d{6}Z\.archive\.gz", files[0].name)
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert files[0].read_bytes() == archive.read_bytes()
    dump = run.matching(r"mongodump")[0]["args"]
    assert "--collection=users" in dump
    assert "--username=usersapi_backup" in dump
    assert "--config=/run/secrets/backup_config" in dump
    made = run.matching(r"service create")[0]["args"]
    assert f"--secret=source={BACKUP_SECRET},target=backup_config,uid=999,gid=999,mode=0400" in made
    assert "node.id==node-1" in made


def test_backup_never_overwrites_a_file(sandbox: Path) -> None:
    archive = sandbox / "dump.gz"
    archive.write_bytes(gzip.compress(b"new"))
    existing = sandbox / "kept.gz"
    existing.write_bytes(b"precious")
    run = swarm(sandbox, "backup", str(existing), rules=backup_rules(archive))
    assert run.rc == 1
    assert "exists: a backup never overwrites a file" in run.stderr
    assert existing.read_bytes() == b"precious"
    assert not run.called("mongodump")


def test_a_file_that_appears_during_the_dump_is_not_overwritten(tmp_path: Path) -> None:
    target = tmp_path / "late.archive.gz"
    # The dump (task_exec) writes its archive, and meanwhile someone writes TARGET.
    script = (
        f'source "{SWARM_SH}"; trap run_deferred EXIT; '
        f'task_exec() {{ printf precious >"$3"; printf dump | gzip; }}; '
        f'dump_to cid usersdb "$1"'
    )
    done = subprocess.run(
        ["bash", "-c", script.replace('"$3"', f'"{target}"'), "_", str(target)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert "appeared meanwhile: it was not overwritten" in done.stderr
    assert target.read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_backup_leaves_no_file_when_mongodump_fails(sandbox: Path) -> None:
    run = swarm(
        sandbox,
        "backup",
        str(sandbox / "b.gz"),
        rules=backup_rules(dump={"rc": 1, "stderr": "Failed: auth\n"}),
    )
    assert run.rc == 1
    assert "mongodump failed, no backup written: Failed: auth" in run.stderr
    assert list(sandbox.glob("b.gz*")) == []
    assert list(sandbox.glob(".partial-*")) == []


def test_a_backup_inside_the_repository_must_be_ignored_by_git(sandbox: Path) -> None:
    inside = SWARM_SH.parent.parent / "docs" / "backup-test.archive.gz"
    run = swarm(sandbox, "backup", str(inside), rules=backup_rules(sandbox / "none.gz"))
    assert run.rc == 1
    assert "git does not ignore it" in run.stderr
    assert not inside.exists()
    assert run.calls == []


def test_a_relative_backup_dir_is_taken_from_the_repository_root(sandbox: Path) -> None:
    run = swarm(sandbox, "help", BACKUP_DIR="backups")
    repo = SWARM_SH.parent.parent
    assert re.search(
        rf"^  BACKUP_DIR +{re.escape(str(repo / 'backups'))} ", run.stdout, re.MULTILINE
    )


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
def test_restore_refuses_a_bad_file_before_anything_else(
    sandbox: Path, kind: str, message: str
) -> None:
    path = write_bad_archive(sandbox, kind)
    run = swarm(sandbox, "restore", str(path), rules=backup_rules(sandbox / "x"))
    assert run.rc == 1
    assert message in run.stderr
    assert run.calls == []


def restore_rules(dry_run: Rule | None = None, restore: Rule | None = None) -> list[Rule]:
    return [
        {
            "pattern": r"exec -i cid123 mongorestore .*--dryRun",
            **(dry_run or {"stderr": "reading metadata for usersdb.users from archive on stdin\n"}),
        },
        {
            "pattern": r"exec -i cid123 mongorestore .*--drop",
            **(
                restore
                or {"stderr": "finished restoring usersdb.users (3 documents, 0 failures)\n"}
            ),
        },
        {"pattern": r"exec -i cid123 python - (lock|index|unlock)", "stdout": "done\n"},
        *swarm_rules(healthy_swarm()),
        *endpoint_rules(),
    ]


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
    run = swarm(sandbox, "restore", str(path), rules=restore_rules(dry_run))
    assert run.rc == 1
    assert message in run.stderr
    assert run.called("mongorestore.*--dryRun")
    assert not run.called("--drop|python - lock")


def test_restore_holds_the_lock_while_it_replaces_the_users(sandbox: Path) -> None:
    path = sandbox / "good.archive.gz"
    path.write_bytes(gzip.compress(b"archive"))
    run = swarm(sandbox, "restore", str(path), rules=restore_rules())
    assert run.rc == 0, run.stderr
    order = [
        run.index(p)
        for p in (r"--dryRun", r"python - lock", r"--drop", r"python - index", r"python - unlock")
    ]
    assert order == sorted(order)
    restore = [str(a) for a in run.matching(r"--drop")[0]["args"]]
    assert "--nsInclude=usersdb.users" in restore
    lock = [str(a) for a in run.matching(r"python - lock")[0]["args"]]
    assert lock[lock.index("--seconds") + 1] == "900"
    assert "waiting 5 s (1 s + MONGO_OP_TIMEOUT_MS 3000 ms + 1 s)" in run.stdout


def test_a_failed_mongorestore_keeps_the_lock_and_says_so(sandbox: Path) -> None:
    path = sandbox / "good.archive.gz"
    path.write_bytes(gzip.compress(b"archive"))
    run = swarm(
        sandbox,
        "restore",
        str(path),
        rules=restore_rules(restore={"rc": 1, "stderr": "Failed: connection lost\n"}),
    )
    assert run.rc == 1
    assert "the lock stays" in run.stderr
    assert not run.called(r"python - unlock|python - index")


def test_a_database_name_with_a_quote_semicolon_and_hash_is_one_argument_everywhere(
    sandbox: Path,
) -> None:
    name = "it's;#db"
    archive = sandbox / "dump.gz"
    archive.write_bytes(gzip.compress(b"x"))
    rules = [
        {
            "pattern": r"exec -i cid123 mongorestore .*--dryRun",
            "stderr": f"reading metadata for {name}.users from archive on stdin\n",
        },
        *backup_rules(archive),
        *restore_rules(),
    ]
    first = swarm(sandbox, "backup", str(sandbox / "n.gz"), rules=rules, MONGO_DB=name)
    second = swarm(sandbox, "restore", str(archive), rules=rules, MONGO_DB=name)
    assert first.rc == 0, first.stderr
    assert second.rc == 0, second.stderr
    calls = first.calls + second.calls
    assert not [c for c in calls if {"sh", "bash"} & set(c["args"]) or "-c" in c["args"]]
    args = [str(a) for c in calls for a in c["args"]]
    assert f"--db={name}" in args
    assert f"--nsInclude={name}.users" in args
    assert ["--db", name] == args[args.index("lock") + 5 : args.index("lock") + 7]


# --- down ---------------------------------------------------------------------------------------
def down_rules(archive: Path) -> list[Rule]:
    return [
        {"pattern": r"^inspect -f \{\{\.State\.Running\}\}", "stdout": "true\n"},
        {
            "pattern": r"service ls -q --filter label=com\.docker\.stack\.namespace=fake$",
            "stdout": "svc-api\n",
            "before": "removed",
        },
        {
            "pattern": r"network ls -q --filter label=com\.docker\.stack\.namespace=fake$",
            "stdout": "",
            "before": "removed",
        },
        {"pattern": r"stack rm fake$", "mark": "removed"},
        {
            "pattern": r"ls -q --filter label=com\.docker\.stack\.namespace=fake$",
            "stdout": "",
            "after": "removed",
        },
        *backup_rules(archive),
    ]


def test_a_plain_down_in_the_lab_backs_the_users_up_first(sandbox: Path) -> None:
    archive = sandbox / "dump.gz"
    archive.write_bytes(gzip.compress(b"users"))
    run = swarm(sandbox, "down", rules=down_rules(archive))
    assert run.rc == 0, run.stderr
    backups = list((sandbox / "backups").glob("fake-*-down.archive.gz"))
    assert len(backups) == 1
    assert backups[0].read_bytes() == archive.read_bytes()
    assert f"the users are in {backups[0]}" in run.stdout
    assert run.index("mongodump") < run.index(r"stack rm fake") < run.index(r"^rm -f -v")
    assert run.called(r"^context rm -f fake-lab$")


def test_a_down_that_cannot_back_up_removes_nothing(sandbox: Path) -> None:
    rules = [
        {"pattern": r"exec -i cid123 mongodump ", "rc": 1, "stderr": "Failed: x\n"},
        *down_rules(sandbox / "x"),
    ]
    run = swarm(sandbox, "down", rules=rules)
    assert run.rc == 1
    assert "nothing was removed" in run.stderr
    assert "'down --purge'" in run.stderr
    assert not run.called(r"stack rm|^rm -f")


def test_down_purge_in_the_lab_removes_everything_without_a_backup(sandbox: Path) -> None:
    run = swarm(sandbox, "down", "--purge", rules=down_rules(sandbox / "x"))
    assert run.rc == 0, run.stderr
    assert not run.called("mongodump")
    assert run.called(r"^rm -f -v fake-manager fake-worker1 fake-worker2$")


def test_down_on_ones_own_swarm_removes_the_stack_and_nothing_else(sandbox: Path) -> None:
    run = swarm(sandbox, "down", rules=down_rules(sandbox / "x"), env=own())
    assert run.rc == 0, run.stderr
    assert run.called(r"^--context prod stack rm fake$")
    assert not run.called(r"mongodump|volume rm|node rm|^rm |^inspect ")
    assert "kept: the volume fake_mongo-data on the node labelled app=database" in run.stdout
    assert_through_the_endpoint(run, OWN)


def test_down_purge_on_ones_own_swarm_empties_the_database_volume(sandbox: Path) -> None:
    rules = [
        {
            "pattern": r"service ps --format \{\{\.CurrentState\}\} fake-purge",
            "stdout": "Complete 1 second ago\n",
        },
        *down_rules(sandbox / "x"),
    ]
    run = swarm(sandbox, "down", "--purge", rules=rules, env=own())
    assert run.rc == 0, run.stderr
    purge = [str(a) for a in run.matching(r"service create .*--name fake-purge")[0]["args"]]
    assert "node.labels.app==database" in purge
    assert "type=volume,source=fake_mongo-data,target=/data/db" in purge
    assert purge[-4:] == ["/data/db", "-mindepth", "1", "-delete"]
    assert run.index("stack rm fake") < run.index("name fake-purge")


# --- verify's bounds ----------------------------------------------------------------------------
def test_a_hanging_service_logs_is_a_fail_line_with_its_cause(sandbox: Path) -> None:
    rules = [{"pattern": r"service logs", "sleep": 30}, *endpoint_rules()]
    done = subprocess.run(
        ["bash", "-c", f'source "{SWARM_SH}"; service_log_line api some-id || echo " rc=$?"'],
        env={**os.environ, **fake_docker_env(sandbox, rules, sandbox / "log"), "CALL_TIMEOUT": "2"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stdout.strip() == "none: docker service logs gave no answer within 2 s rc=1"


def test_all_says_when_verify_failed() -> None:
    script = (
        f'source "{SWARM_SH}"; for s in nodes swarm labels secrets build push deploy; do '
        'eval "cmd_$s() { :; }"; done; cmd_verify() { FAILED=2; CHECKS=9; return 1; }; '
        'cmd_all || echo "rc=$?"'
    )
    done = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "SWARM_CONTEXT": ""},
    )
    assert "all: FAILED: the stack is deployed but verify failed (2 of 9 checks)" in done.stdout
    assert done.stdout.strip().endswith("rc=1")


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
        {"pattern": r"^inspect -f \{\{\.State\.Running\}\}", "stdout": "true\n"},
        {"pattern": r"docker info -f \{\{\.Swarm\.LocalNodeState\}\}", "stdout": "inactive\n"},
        {"pattern": r"^inspect -f \{\{\(index", "stdout": "10.0.0.2\n"},
        {
            "pattern": r"swarm init",
            "stdout": "Swarm initialized: current node (abc) is now a manager.\n\nTo add a worker "
            "to this swarm, run the following command:\n\n"
            "    docker swarm join --token SWMTKN-1-secret 10.0.0.2:2377\n",
        },
        {"pattern": r"join-token -q worker", "stdout": "SWMTKN-1-secret\n"},
    ]
    run = swarm(sandbox, "swarm", rules=rules)
    assert run.rc == 0, run.stderr
    assert "Swarm initialized: current node (abc) is now a manager." in run.stdout
    assert "SWMTKN" not in run.stdout + run.stderr


def test_nodes_give_the_lab_manager_a_plain_tcp_endpoint_and_a_context(sandbox: Path) -> None:
    rules: list[Rule] = [
        {"pattern": r"^inspect -f \{\{\.State\.Running\}\}", "rc": 1, "before": "made"},
        {"pattern": r"^run -d .*--name fake-worker2", "mark": "made"},
        {"pattern": r"^inspect -f \{\{\.State\.Running\}\}", "stdout": "true\n"},
        {
            "pattern": r"^port fake-worker1$",
            "stdout": "39080/tcp -> 0.0.0.0:39080\n39443/tcp -> 0.0.0.0:39443\n",
        },
        {
            "pattern": r"^inspect -f \{\{range \.Config\.Env\}\}",
            "stdout": "PATH=/usr/bin\nDOCKER_TLS_CERTDIR=\n",
        },
        {"pattern": r"^inspect -f \{\{\(index", "stdout": "10.0.0.2\n"},
        {"pattern": r"^network inspect", "rc": 1},
        {"pattern": r"^context inspect", "rc": 1},
    ]
    run = swarm(sandbox, "nodes", rules=rules, HTTP_PORT="39080", HTTPS_PORT="39443")
    assert run.rc == 0, run.stderr
    manager = [str(a) for a in run.matching(r"^run -d .*--name fake-manager")[0]["args"]]
    assert manager[manager.index("-e") + 1] == "DOCKER_TLS_CERTDIR="
    assert "-p" not in manager
    ingress = [str(a) for a in run.matching(r"^run -d .*--name fake-worker1")[0]["args"]]
    assert ingress[ingress.index("-p") : ingress.index("-p") + 4] == [
        "-p",
        "39080:39080",
        "-p",
        "39443:39443",
    ]
    assert run.called(
        r"^context create --description .* --docker host=tcp://10\.0\.0\.2:2375 fake-lab$"
    )


# --- the Python the scripts run -----------------------------------------------------------------
def snapshot(folder: Path, swarm_: Swarm) -> Path:
    (folder / "services.json").write_text(json.dumps(swarm_.services))
    (folder / "tasks.json").write_text(json.dumps(swarm_.tasks))
    (folder / "nodes.json").write_text(json.dumps(NODES))
    return folder


def expectations() -> list[tuple[str, str, str]]:
    return [
        ("api", "image", IMAGE),
        ("api", "env", "MONGO_USER=usersapi_a"),
        ("ingress", "port", "28443"),
    ]


def test_convergence_wants_every_service_to_hold_this_deploys_spec(tmp_path: Path) -> None:
    stack = swarm_state.Stack.read(STACK, snapshot(tmp_path, healthy_swarm()))
    assert swarm_state.convergence(stack, IMAGE, expectations(), set()).startswith("converged ")
    other = swarm_state.Stack.read(STACK, snapshot(tmp_path, healthy_swarm(user="usersapi_b")))
    verdict = swarm_state.convergence(other, IMAGE, expectations(), set())
    assert (
        verdict
        == "pending fake_api: its spec does not hold this deploy's env MONGO_USER=usersapi_a"
    )


def test_convergence_wants_every_running_task_made_from_the_current_spec(tmp_path: Path) -> None:
    now = healthy_swarm()
    old = copy.deepcopy(now.api["Spec"]["TaskTemplate"])
    old["ContainerSpec"]["Env"] = ["MONGO_USER=usersapi_b"]
    now.tasks[0] = task(now.api, 1, spec=old)
    stack = swarm_state.Stack.read(STACK, snapshot(tmp_path, now))
    assert swarm_state.convergence(stack, IMAGE, expectations(), set()) == "pending fake_api 1/2"


def test_a_task_that_failed_before_this_deploy_is_not_its_failure(tmp_path: Path) -> None:
    now = healthy_swarm()
    failed = task(now.api, 1, state="failed", desired="shutdown", err="old")
    now.tasks.append(failed)
    stack = swarm_state.Stack.read(STACK, snapshot(tmp_path, now))
    assert swarm_state.convergence(stack, IMAGE, expectations(), {failed["ID"]}).startswith(
        "converged"
    )
    assert swarm_state.convergence(stack, IMAGE, expectations(), set()).startswith(
        "failed fake_api.1"
    )


def test_verify_spec_checks_fail_on_a_root_password_given_to_the_api(tmp_path: Path) -> None:
    now = healthy_swarm()
    now.api["Spec"]["TaskTemplate"]["ContainerSpec"]["Secrets"].append(
        {"File": {"Name": "mongo_root_password"}, "SecretName": ROOT_SECRET}
    )
    now.tasks[:2] = [task(now.api, 1, node="node-3"), task(now.api, 2, node="node-3")]
    stack = swarm_state.Stack.read(STACK, snapshot(tmp_path, now))
    lines = swarm_state.spec_checks(stack, 28080, 28443)
    assert [line[:4] for line in lines[:5]] == ["PASS", "PASS", "PASS", "PASS", "FAIL"]
    assert all(line.startswith("PASS") for line in lines[5:])


def test_a_log_line_is_found_by_its_request_id_as_json() -> None:
    lines = ["noise", '{"request_id": "other"}', 'x | {"request_id": "abc", "status": 200}']
    assert swarm_state.log_line("abc", lines) == '{"request_id": "abc", "status": 200}'
    assert swarm_state.log_line("ab", lines) == ""


# --- the race through a real HTTP server ------------------------------------------------------
class PatchServer(http.server.ThreadingHTTPServer):
    """PATCH /users/<id> with If-Match: a compare-and-set, or none (mode 'no-cas'), or an
    answer before the body is read (mode 'early'), as servers that break the race would."""

    daemon_threads = True
    version = 1
    mode = "cas"
    lock = threading.Lock()


class PatchHandler(http.server.BaseHTTPRequestHandler):
    server: PatchServer

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.version = 1  # a new user
        self.reply(201, {"id": "u1"})

    def do_DELETE(self) -> None:
        self.reply(204, None)

    def do_PATCH(self) -> None:
        if self.server.mode == "early":
            self.reply(412, {})
            return
        self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(0.05)  # the API reads the user, then writes it
        with self.server.lock:
            won = self.server.mode == "no-cas" or self.server.version == 1
            self.server.version += 1
        self.reply(200 if won else 412, {})

    def reply(self, status: int, body: object) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_args: object) -> None:
        return


@pytest.fixture
def patch_server() -> Iterator[PatchServer]:
    server = PatchServer(("127.0.0.1", 0), PatchHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def race_line(server: PatchServer, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(api_checks, "RACE_ROUNDS", 2)
    server.version = 1
    return api_checks.race(f"http://127.0.0.1:{server.server_address[1]}")[0]


def test_the_race_passes_when_one_patch_wins_and_all_overlapped(
    patch_server: PatchServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    line = race_line(patch_server, monkeypatch)
    assert line.startswith(
        "PASS  24 concurrent PATCHes with one If-Match, each round: 1 x 200, 23 x 412; in round 1"
    )


def test_the_race_fails_without_the_compare_and_set(
    patch_server: PatchServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_server.mode = "no-cas"
    assert race_line(patch_server, monkeypatch).startswith(
        "FAIL  24 concurrent PATCHes with one If-Match, each round: 24 x 200, 0 x 412"
    )


def test_the_race_fails_when_answers_come_before_every_request_is_sent(
    patch_server: PatchServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_server.mode = "early"
    line = race_line(patch_server, monkeypatch)
    assert line.startswith("FAIL  ")
    assert "in none of 2 rounds were all 24 complete before the first answer" in line


def test_every_request_gets_its_headers_from_one_place(
    patch_server: PatchServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[str, str]] = []
    original = api_checks.request_headers

    def spy(
        extra: Any = None, *, json_body: bool = False, key: str | None = None
    ) -> dict[str, str]:
        headers = original(extra, json_body=json_body, key=key)
        seen.append(headers)
        return headers

    monkeypatch.setattr(api_checks, "request_headers", spy)
    monkeypatch.setattr(api_checks, "KEY", ADMIN_KEY)
    monkeypatch.setattr(api_checks, "RACE_ROUNDS", 1)
    api_checks.race(f"http://127.0.0.1:{patch_server.server_address[1]}")
    assert len(seen) == 2 + api_checks.RACERS  # the POST, 24 PATCHes, the DELETE
    assert {h.get("Authorization") for h in seen} == {f"Bearer {ADMIN_KEY}"}


# --- more refusals ------------------------------------------------------------------------------
def test_all_on_ones_own_swarm_starts_at_labels(sandbox: Path) -> None:
    rules: list[Rule] = [{"pattern": r"node ls --format", "rc": 1}, *endpoint_rules(OWN)]
    run = swarm(sandbox, "all", rules=rules, env=own())
    assert run.rc == 1
    assert run.stdout.lstrip().startswith("==> labels:")
    assert "cannot list the swarm's nodes" in run.stderr
    assert not run.called(r"^run |^network create")


def test_nodes_refuse_an_ingress_node_that_is_not_a_lab_node(sandbox: Path) -> None:
    run = swarm(sandbox, "nodes", INGRESS_NODE="elsewhere")
    assert run.rc == 1
    assert "INGRESS_NODE=elsewhere is not a lab node" in run.stderr
    assert run.calls == []


def test_nodes_refuse_a_host_port_in_use(sandbox: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        rules: list[Rule] = [{"pattern": r"^inspect -f \{\{\.State\.Running\}\}", "rc": 1}]
        run = swarm(sandbox, "nodes", rules=rules, HTTP_PORT=port, HTTPS_PORT="39443")
    assert run.rc == 1
    assert f"host port {port} is in use" in run.stderr
    assert not run.called(r"^run |^network create")


def test_nodes_refuse_a_manager_made_without_its_endpoint(sandbox: Path) -> None:
    rules: list[Rule] = [
        {"pattern": r"^inspect -f \{\{\.State\.Running\}\}", "stdout": "true\n"},
        {
            "pattern": r"^port fake-worker1$",
            "stdout": "28080/tcp -> 0.0.0.0:28080\n28443/tcp -> 0.0.0.0:28443\n",
        },
        {
            "pattern": r"^inspect -f \{\{range \.Config\.Env\}\}",
            "stdout": "DOCKER_TLS_CERTDIR=/certs\n",
        },
    ]
    run = swarm(sandbox, "nodes", rules=rules)
    assert run.rc == 1
    assert "made without an endpoint for this machine" in run.stderr
    assert "swarm.sh down' then" in run.stderr
    assert not run.called(r"^context (create|update)")


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        ("mongo_backup_password", None, "run '"),
        ("mongo_app_password", "two\nlines", "holds control characters"),
        ("api_keys", None, "no API key file"),
        # A key file the API would refuse (its own rules, named by line; never a key echoed).
        ("api_keys", "admin write sha256:" + "A" * 64 + "\n", "line 1: key admin: the third"),
        ("api_keys", KEY_LINES + "admin read sha256:" + "b" * 64, "line 4: the name admin is"),
        ("api_keys", "usersapi_" + "k" * 43 + "\n", "line 1: expected NAME SCOPE sha256:HEX"),
    ],
)
def test_deploy_refuses_missing_or_garbled_secrets_before_anything(
    sandbox: Path, file: str, content: str | None, message: str
) -> None:
    path = sandbox / "secrets" / file
    if content is None:
        path.unlink()
    else:
        path.write_text(content)
    run = steady_deploy(sandbox)
    assert run.rc == 1
    assert message in run.stderr
    assert "k" * 43 not in run.stderr
    assert not run.called(r"manifest|secret create|service create|stack deploy")


def test_a_task_the_swarm_rejects_ends_the_step_with_its_cause(sandbox: Path) -> None:
    rules: list[Rule] = [
        {
            "pattern": r"inspect --type task --format .* tsk1$",
            "stdout": "rejected||No such image: mongo:8.0\n",
        },
        *backup_rules(sandbox / "x"),
    ]
    run = swarm(sandbox, "backup", str(sandbox / "b.gz"), rules=rules)
    assert run.rc == 1
    assert re.search(
        r"task fake-tools-\w+ rejected before it ran: No such image: mongo:8\.0", run.stderr
    )
    made = {str(c["args"][c["args"].index("--name") + 1]) for c in run.matching(r"service create")}
    removed = {str(c["args"][-1]) for c in run.matching(r"service rm ")}
    assert made
    assert made <= removed
    assert not (sandbox / "b.gz").exists()


def test_only_labels_needs_the_node_names_on_ones_own_swarm(sandbox: Path) -> None:
    rules = [*swarm_rules(healthy_swarm()), *endpoint_rules(OWN)]
    run = swarm(sandbox, "status", rules=rules, SWARM_CONTEXT=OWN)
    assert run.rc == 0, run.stderr
    assert run.called(r"^--context prod stack ps --filter desired-state=running fake$")


# --- API keys -----------------------------------------------------------------------------------
KEY_FILE_CASES = [
    "admin write sha256:" + "a" * 64,
    "# a comment\n\nadmin write sha256:" + "a" * 64 + "\nci read sha256:" + "b" * 64,
    "admin write sha256:" + "A" * 64,
    "admin admin sha256:" + "a" * 64,
    "admin write " + "a" * 64,
    "admin write",
    "admin write sha256:" + "a" * 64 + " extra",
    "a b write sha256:" + "a" * 64,
    "x" * 65 + " read sha256:" + "a" * 64,
    "admin write sha256:" + "a" * 64 + "\nadmin read sha256:" + "b" * 64,
    "usersapi_" + "k" * 43,
    "",
]


@pytest.mark.parametrize("text", KEY_FILE_CASES)
def test_the_key_file_is_checked_by_the_apis_own_rules(text: str, tmp_path: Path) -> None:
    """stack/api_keys.py check, run by a Python without the API's requirements (no
    site-packages), accepts exactly what the API accepts and names the same line."""
    try:
        keys = usersapi_keys.parse_keys(text)
        their_error = ""
    except usersapi_keys.KeyFileError as exc:
        keys, their_error = (), str(exc)
    (tmp_path / "keys").write_text(text, encoding="utf-8")
    script = str(SWARM_SH.parent / "api_keys.py")
    done = subprocess.run(
        [sys.executable, "-S", script, "check", str(tmp_path / "keys")],
        capture_output=True,
        text=True,
        check=False,
    )
    if their_error:
        assert done.returncode == 1
        assert their_error in done.stderr
    else:
        assert done.returncode == 0, done.stderr
        names = " ".join(f"{key.name} ({key.scope})" for key in keys)
        assert done.stdout.rstrip("\n").endswith(f"{len(keys)} keys: {names}")
    assert "k" * 43 not in done.stderr + done.stdout


def test_a_generated_key_and_its_line_follow_the_contract() -> None:
    done = subprocess.run(
        [sys.executable, "-S", str(SWARM_SH.parent / "api_keys.py"), "new", "ci", "read"],
        capture_output=True,
        text=True,
        check=True,
    )
    line, key = done.stdout.splitlines()
    assert re.fullmatch(r"usersapi_[A-Za-z0-9_-]{43}", key)
    assert line == f"ci read sha256:{hashlib.sha256(key.encode()).hexdigest()}"


def test_api_keys_new_names_the_bad_scope_or_name_not_another_word() -> None:
    def new(name: str, scope: str) -> subprocess.CompletedProcess[str]:
        script = str(SWARM_SH.parent / "api_keys.py")
        return subprocess.run(
            [sys.executable, "-S", script, "new", name, scope],
            capture_output=True,
            text=True,
            check=False,
        )

    # A name holding the word "name" once got a wrong ", not 'rename'" suffix.
    scope = new("rename", "admin")
    assert scope.returncode == 1
    assert (
        scope.stderr
        == "api_keys.py new: key rename: the scope must be read or write, not 'admin'\n"
    )
    name = new("a b", "read")
    assert name.returncode == 1
    assert "not 'a b'" in name.stderr


def test_secrets_makes_the_stacks_two_keys_once(sandbox: Path) -> None:
    folder = sandbox / "secrets"
    for name in ("api_keys", "api_key", "verify_key", "tls.crt", "tls.key"):
        (folder / name).unlink()
    first = swarm(sandbox, "secrets")
    assert first.rc == 0, first.stderr
    admin = (folder / "api_key").read_text().strip()
    verify = (folder / "verify_key").read_text().strip()
    lines = (folder / "api_keys").read_text()
    for name in ("api_keys", "api_key", "verify_key"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600, name
    assert f"admin write sha256:{hashlib.sha256(admin.encode()).hexdigest()}" in lines
    assert f"verify read sha256:{hashlib.sha256(verify.encode()).hexdigest()}" in lines
    assert admin not in first.stdout + first.stderr
    second = swarm(sandbox, "secrets")
    assert second.rc == 0, second.stderr
    assert (folder / "api_key").read_text().strip() == admin
    assert (folder / "api_keys").read_text() == lines
    assert "admin (write) is in" in second.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["api-key", "ci", "reed"], "scope is read or write, not 'reed'"),
        (["api-key", "ci"], "api-key needs a name and a scope"),
        (["api-key"], "api-key needs a name and a scope"),
        (["api-key", "a b", "read"], "name is 1 to 64 letters"),
        (["api-key", "--revoke"], "api-key --revoke needs the key's name"),
        (["api-key", "ci", "read", "status"], "api-key runs alone"),
        (["status", "api-key", "--revoke", "ci"], "api-key runs alone"),
    ],
)
def test_api_key_refuses_bad_words_before_anything(
    sandbox: Path, args: list[str], message: str
) -> None:
    before = (sandbox / "secrets" / "api_keys").read_text()
    run = swarm(sandbox, *args)
    assert run.rc == 2
    assert message in run.stderr
    assert run.calls == []
    assert (sandbox / "secrets" / "api_keys").read_text() == before


def api_key_rules(extra: list[Rule] | None = None) -> list[Rule]:
    """A stack whose deploy converges on the key file the run wrote."""
    after = healthy_swarm(keys_secret=f"{STACK}_api_keys_@API_KEYS_HASH@")
    rules = deploy_rules(healthy_swarm(), after, extra)
    rules.insert(
        len(extra or []),
        {
            "pattern": r"stack deploy --with-registry-auth",
            "mark": "deployed",
            "save_env": ["API_KEYS_HASH"],
        },
    )
    return rules


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["api-key", "--revoke", "nobody"], "no key named nobody in"),
        (["api-key", "--revoke", "admin"], "admin is one of the stack's own keys"),
        (["api-key", "--revoke", "verify"], "verify is one of the stack's own keys"),
        (["api-key", "admin", "read"], "a key named admin exists already"),
    ],
)
def test_api_key_refuses_an_unknown_own_or_taken_name_with_nothing_changed(
    sandbox: Path, args: list[str], message: str
) -> None:
    run = swarm(sandbox, *args, rules=api_key_rules(), REGISTRY="registry.lab:5000")
    assert run.rc == 1
    assert message in run.stderr
    assert not run.called(r"stack deploy|secret create|service create|manifest")
    assert (sandbox / "secrets" / "api_keys").read_text() == KEY_LINES


def test_api_key_adds_a_line_rolls_the_api_out_and_prints_the_key_last(sandbox: Path) -> None:
    run = swarm(
        sandbox,
        "api-key",
        "ci-reader",
        "read",
        rules=api_key_rules(),
        VERSION="9.9.9",
        REGISTRY="registry.lab:5000",
    )
    assert run.rc == 0, run.stderr
    key = run.stdout.splitlines()[-1]
    assert re.fullmatch(r"usersapi_[A-Za-z0-9_-]{43}", key)
    lines = (sandbox / "secrets" / "api_keys").read_text()
    assert lines.startswith(KEY_LINES)
    assert lines[len(KEY_LINES) :] == (
        f"ci-reader read sha256:{hashlib.sha256(key.encode()).hexdigest()}\n"
    )
    assert stat.S_IMODE((sandbox / "secrets" / "api_keys").stat().st_mode) == 0o600
    assert run.stdout.count(key) == 1
    assert key not in run.stderr
    assert not [c for c in run.calls if key in json.dumps(c)]
    assert not [p for p in (sandbox / "secrets").iterdir() if key in p.read_text()]
    assert deployed(run, "API_KEYS_HASH") == short_hash(lines)
    assert deployed(run, "API_IMAGE") == IMAGE  # the running image, whatever VERSION says


def test_api_key_revoke_removes_the_line_and_rolls_the_api_out(sandbox: Path) -> None:
    extra = "ci read sha256:" + "c" * 64 + "\n"
    (sandbox / "secrets" / "api_keys").write_text(KEY_LINES + extra)
    run = swarm(
        sandbox, "api-key", "--revoke", "ci", rules=api_key_rules(), REGISTRY="registry.lab:5000"
    )
    assert run.rc == 0, run.stderr
    assert (sandbox / "secrets" / "api_keys").read_text() == KEY_LINES
    assert deployed(run, "API_KEYS_HASH") == short_hash(KEY_LINES)
    assert run.stdout.splitlines()[-1].startswith("api-key: ci revoked")


@pytest.mark.parametrize("how", ["rolled back", "Ctrl-C"])
def test_api_key_that_does_not_reach_the_api_gives_no_key_and_restores_the_file(
    sandbox: Path, how: str
) -> None:
    if how == "Ctrl-C":
        extra: list[Rule] = [{"pattern": r"stack deploy --with-registry-auth", "interrupt": True}]
        rules = api_key_rules(extra)
    else:
        after = healthy_swarm()
        after.api["UpdateStatus"] = {"State": "rollback_completed", "Message": "rolled back"}
        rules = deploy_rules(healthy_swarm(), after)
    run = swarm(
        sandbox, "api-key", "ci", "write", rules=rules, session=True, REGISTRY="registry.lab:5000"
    )
    assert run.rc == (130 if how == "Ctrl-C" else 1)
    assert not re.search(r"usersapi_[A-Za-z0-9_-]{43}", run.stdout + run.stderr)
    assert (sandbox / "secrets" / "api_keys").read_text() == KEY_LINES
    assert "the API key file is as it was" in run.stdout


def test_deploy_gives_the_api_its_key_file_as_a_versioned_secret(sandbox: Path) -> None:
    run = steady_deploy(sandbox)
    assert run.rc == 0, run.stderr
    assert deployed(run, "API_KEYS_HASH") == short_hash(KEY_LINES)
    stack = (SWARM_SH.parent / "docker-stack.yml").read_text()
    assert "API_KEYS_FILE: /run/secrets/api_keys" in stack
    assert "name: ${STACK_NAME:-semana4}_api_keys_${API_KEYS_HASH:-v1}" in stack


# --- the ingress's limits (their bounds: test_a_bad_setting_is_refused_before_any_step) -------
def test_deploy_passes_the_limits_and_waits_for_the_ingress_to_hold_them(sandbox: Path) -> None:
    limits = {"RATE_LIMIT": "50", "RATE_BURST": "80", "CONN_LIMIT": "64"}
    stale = healthy_swarm()  # the ingress still has the defaults: never converged
    run = deploy_from(sandbox, healthy_swarm(), stale, **limits)
    assert run.rc == 1
    for name, value in limits.items():
        assert deployed(run, name) == value
    assert "fake_ingress: its spec does not hold this deploy's env RATE_LIMIT=50" in run.stdout
    default = steady_deploy(sandbox)
    assert default.rc == 0, default.stderr
    assert {n: deployed(default, n) for n in limits} == LIMITS


# --- your own certificate -------------------------------------------------------------------------
def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Certificates for the deploy's checks, made with openssl: good.crt (localhost, a year,
    with its CA's certificate after it, as fullchain.pem), soon.crt (10 days), other.crt (for
    api.example.com), expired.crt (2020, signed with `openssl ca`, which takes dates in the
    past where `req -days` cannot), and a second key, other.key."""
    d = tmp_path_factory.mktemp("certificates")
    (d / "index.txt").write_text("")
    (d / "serial").write_text("01\n")
    (d / "ca.cnf").write_text(
        "[ca]\ndefault_ca = test\n[test]\ndir = .\ndatabase = index.txt\nnew_certs_dir = .\n"
        "serial = serial\ndefault_md = sha256\npolicy = any\ncopy_extensions = copy\n"
        "unique_subject = no\n[any]\ncommonName = supplied\n"
    )
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj", "/CN=CA",
            "-keyout", "ca.key", "-out", "ca.crt", cwd=d)  # fmt: skip
    openssl("genpkey", "-algorithm", "RSA", "-out", "leaf.key", cwd=d)
    openssl("genpkey", "-algorithm", "RSA", "-out", "other.key", cwd=d)
    for name, host, dates in [
        ("good", "localhost", ["-days", "365"]),
        ("soon", "localhost", ["-days", "10"]),
        ("other", "api.example.com", ["-days", "365"]),
        ("expired", "localhost", ["-startdate", "20200101000000Z", "-enddate", "20210101000000Z"]),
    ]:
        openssl("req", "-new", "-key", "leaf.key", "-subj", f"/CN={host}", "-addext",
                f"subjectAltName=DNS:{host}", "-out", f"{name}.csr", cwd=d)  # fmt: skip
        openssl("ca", "-batch", "-config", "ca.cnf", "-cert", "ca.crt", "-keyfile", "ca.key",
                "-in", f"{name}.csr", "-out", f"{name}.pem", "-notext", *dates, cwd=d)  # fmt: skip
        (d / f"{name}.crt").write_text((d / f"{name}.pem").read_text() + (d / "ca.crt").read_text())
    return d


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.exists() else "none"


def own_certificate_run(sandbox: Path, crt: Path, key: Path, **env: str) -> Run:
    after = healthy_swarm(
        cert_secret=f"{STACK}_tls_cert_{file_hash(crt)}",
        key_secret=f"{STACK}_tls_key_{file_hash(key)}",
    )
    files = {"TLS_CERT_FILE": str(crt), "TLS_KEY_FILE": str(key)}
    return deploy_from(sandbox, healthy_swarm(), after, **{**files, **env})


@pytest.mark.parametrize(
    ("files", "host", "message"),
    [
        (("good.crt", "other.key"), "localhost", "is not the key of the certificate"),
        (("expired.crt", "leaf.key"), "localhost", "expired on Jan  1 00:00:00 2021 GMT"),
        (("other.crt", "leaf.key"), "localhost", "does not cover PUBLIC_HOST=localhost"),
        (("good.crt", "leaf.key"), "users.example.com", "does not cover PUBLIC_HOST=users.example"),
        (("good.crt", "leaf.key"), "10.1.2.3", "does not cover PUBLIC_HOST=10.1.2.3"),
        (("ca.cnf", "leaf.key"), "localhost", "holds no PEM certificate"),
        (("good.crt", "good.crt"), "localhost", "holds no PEM private key"),
        (("missing.crt", "leaf.key"), "localhost", "no such readable file"),
    ],
)
def test_deploy_refuses_a_certificate_it_cannot_serve_with_nothing_changed(
    sandbox: Path, certificates: Path, files: tuple[str, str], host: str, message: str
) -> None:
    crt, key = (certificates / name for name in files)
    run = own_certificate_run(sandbox, crt, key, PUBLIC_HOST=host)
    assert run.rc == 1
    assert message in run.stderr
    assert "nothing changed" in run.stderr
    assert run.calls == []


@pytest.mark.parametrize("given", ["TLS_CERT_FILE", "TLS_KEY_FILE"])
def test_one_of_the_certificate_files_without_the_other_is_refused(
    sandbox: Path, given: str
) -> None:
    run = swarm(sandbox, "deploy", env={given: "/etc/hostname"})
    assert run.rc == 2
    assert f"{given} is set without" in run.stderr
    assert run.calls == []


def test_a_certificate_of_ones_own_is_deployed_with_a_warning_when_it_expires_soon(
    sandbox: Path, certificates: Path
) -> None:
    crt, key = certificates / "soon.crt", certificates / "leaf.key"
    run = own_certificate_run(sandbox, crt, key)
    assert run.rc == 0, run.stderr
    assert "WARNING: the certificate in TLS_CERT_FILE" in run.stderr
    assert "in less than 30 days: renew it soon" in run.stderr
    assert deployed(run, "TLS_CERT_FILE") == str(crt)
    assert deployed(run, "TLS_KEY_FILE") == str(key)
    assert deployed(run, "TLS_CERT_HASH") == file_hash(crt)
    good = own_certificate_run(sandbox, certificates / "good.crt", key)
    assert good.rc == 0, good.stderr
    assert "WARNING" not in good.stderr
    assert "DNS:localhost; until" in good.stdout


def test_without_a_certificate_of_ones_own_the_self_signed_one_is_deployed(sandbox: Path) -> None:
    run = steady_deploy(sandbox)
    assert run.rc == 0, run.stderr
    assert deployed(run, "TLS_CERT_FILE") == str(sandbox / "secrets" / "tls.crt")
    assert deployed(run, "TLS_KEY_FILE") == str(sandbox / "secrets" / "tls.key")


# --- locked-down containers -----------------------------------------------------------------------
def test_every_service_of_the_stack_file_is_locked_down_as_verify_expects() -> None:
    stack = yaml.safe_load((SWARM_SH.parent / "docker-stack.yml").read_text())
    assert set(stack["services"]) == set(swarm_state.LOCKDOWN)
    for name, spec in stack["services"].items():
        assert spec["read_only"] is True, name
        assert spec["cap_drop"] == ["ALL"], name
        assert set(spec.get("cap_add", [])) == swarm_state.LOCKDOWN[name], name
        assert int(spec["deploy"]["resources"]["limits"]["pids"]) > 0, name
        assert spec["logging"] == {
            "driver": "json-file",
            "options": {"max-size": "10m", "max-file": "3"},
        }, name
    text = (SWARM_SH.parent / "docker-stack.yml").read_text()
    for capability in set().union(*swarm_state.LOCKDOWN.values()):
        reason = rf"#[^\n]*\b{capability}\b[^\n]*: "  # "# CHOWN: why" or "# SETGID, SETUID: why"
        assert re.search(reason, text), f"{capability} has no reason given"


def test_short_lived_tasks_rotate_their_logs(sandbox: Path) -> None:
    archive = sandbox / "dump.gz"
    archive.write_bytes(gzip.compress(b"x"))
    run = swarm(sandbox, "backup", str(sandbox / "b.gz"), rules=backup_rules(archive))
    assert run.rc == 0, run.stderr
    for call in run.matching(r"service create"):
        args = [str(a) for a in call["args"]]
        at = args.index("--log-driver")
        assert args[at : at + 6] == [
            "--log-driver",
            "json-file",
            "--log-opt",
            "max-size=10m",
            "--log-opt",
            "max-file=3",
        ]


def test_lockdown_options_give_a_task_the_services_settings() -> None:
    spec = healthy_swarm().ingress
    assert swarm_state.lockdown_options(spec) == [
        "--read-only",
        "--cap-drop=ALL",
        "--cap-add=CHOWN",
        "--cap-add=SETGID",
        "--cap-add=SETUID",
        "--mount=type=tmpfs,target=/scratch,tmpfs-size=1024",
        "--limit-pids=128",
    ]


API_PROBE = "write / {write}\n10001\nCapPrm:\t0\nCapEff:\t0\nCapBnd:\t{bounding}"
INGRESS_PROBE = "write / refused\n0\nCapPrm:\t{mask}\nCapEff:\t{mask}\nCapBnd:\t{mask}"


@pytest.mark.parametrize(
    ("service", "probe", "verdict"),
    [
        ("api", API_PROBE.format(write="refused", bounding="0000000000000000"), "PASS"),
        ("ingress", INGRESS_PROBE.format(mask="00000000000000c1"), "PASS"),
        ("api", API_PROBE.format(write="ok", bounding="0"), "FAIL"),
        ("api", API_PROBE.format(write="refused", bounding="00000000a80425fb"), "FAIL"),
        ("ingress", INGRESS_PROBE.format(mask="00000000000004c1"), "FAIL"),
        ("api", "sh: grep: not found", "FAIL"),
    ],
)  # fmt: skip
def test_lockdown_from_inside_fails_on_a_writable_root_or_a_capability_too_many(
    service: str, probe: str, verdict: str
) -> None:
    svc = {"api": healthy_swarm().api, "ingress": healthy_swarm().ingress}[service]
    assert swarm_state.lockdown_check(svc, probe).startswith(verdict)


def test_spec_checks_fail_on_a_service_that_is_not_locked_down(tmp_path: Path) -> None:
    now = healthy_swarm()
    now.api["Spec"]["TaskTemplate"]["ContainerSpec"]["CapabilityAdd"] = ["CAP_NET_RAW"]
    now.tasks[:2] = [task(now.api, 1, node="node-3"), task(now.api, 2, node="node-3")]
    now.ingress["Spec"]["UpdateConfig"]["Order"] = "stop-first"
    stack = swarm_state.Stack.read(STACK, snapshot(tmp_path, now))
    lines = {line.split()[1]: line for line in swarm_state.spec_checks(stack, 28080, 28443)}
    assert lines["api"].startswith("FAIL  api locked down in its spec")
    assert "cap_add NET_RAW (allowed: none)" in lines["api"]
    assert lines["ingress"].startswith("PASS")
    assert lines["mongo"].startswith("PASS")
    now.api["Spec"]["UpdateConfig"]["Order"] = "stop-first"
    stack = swarm_state.Stack.read(STACK, snapshot(tmp_path, now))
    rolling = swarm_state.check_rolling_update(stack)
    assert rolling.startswith("FAIL  the api rolls over start-first (UpdateConfig.Order stop-first")


def test_a_deploy_without_the_certificate_never_swaps_the_one_the_ingress_serves(
    sandbox: Path,
) -> None:
    yours = healthy_swarm(cert_secret=f"{STACK}_tls_cert_ffffffffffff")
    run = deploy_from(sandbox, yours, healthy_swarm())
    assert run.rc == 1
    assert "the ingress serves a certificate other than the self-signed one" in run.stderr
    assert f"secret {STACK}_tls_cert_ffffffffffff" in run.stderr
    assert "nothing changed" in run.stderr
    assert not run.called(r"secret create|stack deploy|service create")


def test_secrets_replaces_an_own_key_whose_file_was_deleted(sandbox: Path) -> None:
    folder = sandbox / "secrets"
    for name in ("api_key", "tls.crt", "tls.key"):  # the fake certificate: a real one is made
        (folder / name).unlink()
    run = swarm(sandbox, "secrets")
    assert run.rc == 0, run.stderr
    admin = (folder / "api_key").read_text().strip()
    assert admin != ADMIN_KEY
    lines = (folder / "api_keys").read_text().splitlines()
    assert f"admin write sha256:{hashlib.sha256(admin.encode()).hexdigest()}" in lines
    assert f"verify read sha256:{hashlib.sha256(VERIFY_KEY.encode()).hexdigest()}" in lines
    assert sum(line.startswith("admin ") for line in lines) == 1
    assert "set the line of admin (write)" in run.stdout
