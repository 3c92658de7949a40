#!/usr/bin/env python3
"""What the swarm says, read from Docker's JSON for stack/swarm.sh (deploy and verify).

  swarm_state.py convergence --stack S --image IMAGE --before FILE
                             [--expect SERVICE KIND VALUE]... DIR
  swarm_state.py spec-checks --stack S --http-port P --https-port P DIR
  swarm_state.py env SERVICE_JSON NAME            a variable of the service's environment
  swarm_state.py secret-name SERVICE_JSON TARGET  the secret the service mounts as TARGET
  swarm_state.py image SERVICE_JSON [--digest]    the service's image (without its digest)
  swarm_state.py networks SERVICE_JSON            the service's networks, one id a line
  swarm_state.py task-options SERVICE_JSON [--env-prefix P] [--lockdown]
                                                  `docker service create` options giving a
                                                  task the service's networks (and its
                                                  environment variables named P*; with
                                                  --lockdown its read-only root, capabilities,
                                                  tmpfs mounts and process limit instead),
                                                  one a line
  swarm_state.py lockdown-check SERVICE_JSON      a PASS/FAIL line from what a task with the
                                                  service's settings found inside (stdin:
                                                  verify.sh's LOCKDOWN_PROBE)
  swarm_state.py log-line REQUEST_ID              the first JSON log line on stdin with it

DIR holds what `docker service inspect`, `docker inspect --type task` and `docker node
inspect` printed for the stack (services.json, tasks.json, nodes.json). SERVICE_JSON is one
`docker service inspect` output. Exit status 1 with a message when the input is not what
Docker prints.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Json = dict[str, Any]
Expectation = tuple[str, str, str]  # service, kind (image secret config env replicas port), value
# The stack's services and the node label each is placed by.
PLACEMENT = {"mongo": "database", "api": "api", "ingress": "ingress"}
UPDATING = {"updating", "paused", "rollback_started", "rollback_paused"}
# The capabilities each service of the stack file adds back after dropping ALL (its comments
# say why); verify fails on a spec or a container that holds any other.
LOCKDOWN = {
    "api": frozenset[str](),
    "ingress": frozenset({"CHOWN", "SETGID", "SETUID"}),
    "mongo": frozenset({"CHOWN", "DAC_READ_SEARCH", "SETGID", "SETUID"}),
}
# Linux capability names in the order of their numbers (linux/capability.h).
CAPABILITIES = (  # noqa: SIM905 - one string, as a list literal would take a line per name
    "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP "
    "LINUX_IMMUTABLE NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER "
    "SYS_MODULE SYS_RAWIO SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE "
    "SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP "
    "MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF "
    "CHECKPOINT_RESTORE"
).split()
# What a task carries of its service's spec, compared to tell a task of this spec from an
# older one (the task's JSON leaves out some fields the service's has, such as RestartPolicy).
CONTAINER_FIELDS = (
    "Image",
    "Env",
    "Args",
    "Command",
    "User",
    "Secrets",
    "Configs",
    "Mounts",
    "Healthcheck",
)


class InputError(Exception):
    """Docker's output was not what this program reads."""


def load(path: Path) -> list[Json]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror}") from None
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InputError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, list):
        raise InputError(f"{path}: not a JSON array")
    return [item for item in data if isinstance(item, dict)]


def one(path: Path) -> Json:
    items = load(path)
    if len(items) != 1:
        raise InputError(f"{path}: {len(items)} objects, expected one service")
    return items[0]


def dig(data: Any, *keys: str) -> Any:
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def without_digest(image: str) -> str:
    return image.split("@", 1)[0]


@dataclass
class Stack:
    name: str
    services: list[Json]
    tasks: list[Json]
    nodes: list[Json]

    @classmethod
    def read(cls, name: str, folder: Path) -> Stack:
        return cls(
            name,
            load(folder / "services.json"),
            load(folder / "tasks.json"),
            load(folder / "nodes.json"),
        )

    def service(self, short: str) -> Json | None:
        return next((s for s in self.services if dig(s, "Spec", "Name") == self.full(short)), None)

    def full(self, short: str) -> str:
        return f"{self.name}_{short}"

    def tasks_of(self, service: Json) -> list[Json]:
        return [t for t in self.tasks if t.get("ServiceID") == service.get("ID")]

    def running_tasks(self, service: Json) -> list[Json]:
        return [t for t in self.tasks_of(service) if t.get("DesiredState") == "running"]

    def hostname(self, node_id: str) -> str:
        node = next((n for n in self.nodes if n.get("ID") == node_id), None)
        return str(dig(node, "Description", "Hostname") or node_id or "no node")

    def node_label(self, node_id: str, label: str) -> str:
        node = next((n for n in self.nodes if n.get("ID") == node_id), None)
        labels = dig(node, "Spec", "Labels") or {}
        return str(labels.get(label, ""))

    def task_name(self, task: Json) -> str:
        service = next((s for s in self.services if s.get("ID") == task.get("ServiceID")), None)
        return f"{dig(service, 'Spec', 'Name') or task.get('ServiceID')}.{task.get('Slot', '?')}"


def replicas(service: Json) -> int:
    return int(dig(service, "Spec", "Mode", "Replicated", "Replicas") or 0)


def update_state(service: Json) -> str:
    return str(dig(service, "UpdateStatus", "State") or "none")


def spec_fields(task_spec: Json) -> Json:
    container = task_spec.get("ContainerSpec") or {}
    return {
        "container": {f: container.get(f) for f in CONTAINER_FIELDS},
        "resources": task_spec.get("Resources") or {},
        "networks": sorted(str(n.get("Target")) for n in task_spec.get("Networks") or []),
        "force": task_spec.get("ForceUpdate", 0),
    }


def runs_spec(task: Json, service: Json) -> bool:
    """The task was made from the service's current spec."""
    return spec_fields(task.get("Spec") or {}) == spec_fields(
        dig(service, "Spec", "TaskTemplate") or {}
    )


def short_state(task: Json) -> str:
    return str(dig(task, "Status", "State") or "unknown")


def failure_line(stack: Stack, task: Json) -> str:
    state = short_state(task).capitalize()
    error = dig(task, "Status", "Err") or dig(task, "Status", "Message") or "no error given"
    node = stack.hostname(str(task.get("NodeID", "")))
    return f"{stack.task_name(task)} on {node}: {state}: {error}"


# --- convergence ------------------------------------------------------------------------------
def progress(stack: Stack, service: Json) -> tuple[int, int, bool]:
    """How many of the service's tasks run its current spec, how many replicas it wants, and
    whether it has settled there: no update in flight and exactly its replicas running, each
    made from that spec."""
    tasks = stack.running_tasks(service)
    running = sum(1 for t in tasks if runs_spec(t, service) and short_state(t) == "running")
    want = replicas(service)
    settled = want > 0 and running == want == len(tasks) and update_state(service) not in UPDATING
    return running, want, settled


def convergence(stack: Stack, image: str, expected: list[Expectation], before: set[str]) -> str:
    """One line: converged | pending | failed | rolled-back, then what it is about.

    Converged: every service's spec holds what this deploy asked for (EXPECTED), no update is
    in flight, and exactly its replicas run, each task made from that spec."""
    done: list[str] = []
    pending: list[str] = []
    for short in PLACEMENT:
        service = stack.service(short)
        name = stack.full(short)
        if service is None:
            pending.append(f"{name}: no such service yet")
            continue
        state = update_state(service)
        if state in {"rollback_completed", "rollback_paused"}:
            return "rolled-back " + rolled_back(stack, service, image)
        if state == "paused":
            message = dig(service, "UpdateStatus", "Message") or "no message"
            return f"failed {name}: its update is paused: {message}"
        missing = [
            f"{kind} {value}"
            for svc, kind, value in expected
            if svc == short and not holds(service, kind, value)
        ]
        if missing:
            pending.append(f"{name}: its spec does not hold this deploy's {', '.join(missing)}")
            continue
        running, want, settled = progress(stack, service)
        summary = f"{name} {running}/{want}"
        if settled:
            done.append(summary)
        else:
            pending.append(f"{summary} ({state})" if state in UPDATING else summary)
    failures = [
        failure_line(stack, t)
        for t in stack.tasks
        if str(t.get("ID")) not in before and short_state(t) in {"rejected", "failed"}
    ]
    rolling = [s for s in stack.services if update_state(s) == "rollback_started"]
    if rolling:
        return f"pending {dig(rolling[0], 'Spec', 'Name')} is rolling back"
    if failures:
        return "failed " + failures[0]
    if pending:
        return "pending " + ", ".join(pending)
    return "converged " + ", ".join(done)


def holds(service: Json, kind: str, value: str) -> bool:
    """Whether the service's spec holds VALUE as its KIND."""
    container = dig(service, "Spec", "TaskTemplate", "ContainerSpec") or {}
    if kind == "image":
        return without_digest(spec_image(service)) == value
    if kind == "secret":
        return value in [s.get("SecretName") for s in container.get("Secrets") or []]
    if kind == "config":
        return value in [c.get("ConfigName") for c in container.get("Configs") or []]
    if kind == "env":
        return value in (container.get("Env") or [])
    if kind == "replicas":
        return str(replicas(service)) == value
    if kind == "port":
        ports = dig(service, "Spec", "EndpointSpec", "Ports") or []
        return value in [str(p.get("PublishedPort")) for p in ports]
    raise InputError(f"unknown expectation {kind}")


def spec_image(service: Json) -> str:
    return str(dig(service, "Spec", "TaskTemplate", "ContainerSpec", "Image") or "")


def rolled_back(stack: Stack, service: Json, image: str) -> str:
    name = dig(service, "Spec", "Name")
    failed = [t for t in stack.tasks_of(service) if short_state(t) in {"rejected", "failed"}]
    failed.sort(key=lambda t: str(t.get("CreatedAt", "")), reverse=True)
    reason = (
        failure_line(stack, failed[0])
        if failed
        else dig(service, "UpdateStatus", "Message") or "no reason given"
    )
    now = without_digest(spec_image(service))
    return f"{name} runs {now} again: the update to {image or 'a new spec'} failed: {reason}"


# --- verify's checks of the specs -------------------------------------------------------------
def spec_checks(stack: Stack, http_port: int, https_port: int) -> list[str]:
    return [
        check_converged(stack),
        check_placement(stack),
        check_ports(stack, http_port, https_port),
        check_limits(stack),
        check_api_secrets(stack),
        check_rolling_update(stack),
        *(check_lockdown(stack, short) for short in PLACEMENT),
    ]


def line(text: str, *, ok: bool) -> str:
    return f"{'PASS' if ok else 'FAIL'}  {text}"


def check_converged(stack: Stack) -> str:
    parts, ok = [], True
    for short in PLACEMENT:
        service = stack.service(short)
        if service is None:
            parts.append(f"{stack.full(short)} missing")
            ok = False
            continue
        running, want, settled = progress(stack, service)
        parts.append(f"{stack.full(short)} {running}/{want}")
        ok = ok and settled
    verdict = "services converged" if ok else "services not converged"
    return line(f"{verdict}, every task on its service's current spec: {', '.join(parts)}", ok=ok)


def check_placement(stack: Stack) -> str:
    ok, detail = True, []
    for short, want in PLACEMENT.items():
        service = stack.service(short)
        tasks = stack.running_tasks(service) if service else []
        if not tasks:
            ok = False
            detail.append(f"{short}:no-tasks")
        for task in tasks:
            node = str(task.get("NodeID", ""))
            label = stack.node_label(node, "app")
            ok = ok and label == want
            detail.append(f"{short}@{stack.hostname(node)}(app={label})")
    return line("placement by label: " + " ".join(detail), ok=ok)


def check_ports(stack: Stack, http_port: int, https_port: int) -> str:
    ok, detail = True, []
    for short in PLACEMENT:
        service = stack.service(short)
        ports = dig(service, "Spec", "EndpointSpec", "Ports") or []
        shown = [f"{p.get('PublishedPort')}/{p.get('PublishMode')}" for p in ports]
        detail.append(f"{short}=[{' '.join(shown)}]")
        want = [f"{http_port}/host", f"{https_port}/host"] if short == "ingress" else []
        ok = ok and shown == want
    verdict = "only ingress publishes ports" if ok else "published ports"
    return line(f"{verdict}: {' '.join(detail)}", ok=ok)


def check_limits(stack: Stack) -> str:
    service = stack.service("mongo")
    limits = dig(service, "Spec", "TaskTemplate", "Resources", "Limits") or {}
    tasks = stack.running_tasks(service) if service else []
    running = [dig(t, "Spec", "Resources", "Limits") or {} for t in tasks]
    cpus, memory = int(limits.get("NanoCPUs", 0)), int(limits.get("MemoryBytes", 0))
    ok = cpus > 0 and memory > 0 and bool(running) and all(r == limits for r in running)
    return line(
        f"mongo resource limits: cpus {cpus / 1e9:g}, memory {memory // 1048576} MiB in the "
        f"service's spec; its running task has {'the same' if ok else running or 'none'}",
        ok=ok,
    )


def check_api_secrets(stack: Stack) -> str:
    secrets = dig(stack.service("api"), "Spec", "TaskTemplate", "ContainerSpec", "Secrets") or []
    names = [str(dig(s, "File", "Name")) for s in secrets]
    ok = bool(names) and "mongo_root_password" not in names
    text = f"the api service gets no MongoDB root password: its secrets are [{' '.join(names)}]"
    return line(text if ok else f"api secrets: [{' '.join(names)}]", ok=ok)


def check_rolling_update(stack: Stack) -> str:
    """A new api task is healthy before an old one stops: a new key file, image or password
    reaches the clients without a lost request."""
    update = dig(stack.service("api"), "Spec", "UpdateConfig") or {}
    order = str(update.get("Order", "?"))
    return line(
        f"the api rolls over start-first (UpdateConfig.Order {order}, parallelism "
        f"{update.get('Parallelism', '?')}, on failure {update.get('FailureAction', '?')})",
        ok=order == "start-first",
    )


def capability_names(names: list[Any] | None) -> set[str]:
    return {str(n).upper().removeprefix("CAP_") for n in names or []}


def lockdown_of(spec: Json) -> tuple[bool, set[str], set[str], int, str]:
    """A task template's read-only flag, dropped and added capabilities, process limit and
    log rotation."""
    container = spec.get("ContainerSpec") or {}
    pids = int(dig(spec, "Resources", "Limits", "Pids") or 0)
    options = dig(spec, "LogDriver", "Options") or {}
    driver = dig(spec, "LogDriver", "Name") or "default"
    logs = f"{driver} {options.get('max-size', '?')} x {options.get('max-file', '?')}"
    return (
        bool(container.get("ReadOnly")),
        capability_names(container.get("CapabilityDrop")),
        capability_names(container.get("CapabilityAdd")),
        pids,
        logs,
    )


def check_lockdown(stack: Stack, short: str) -> str:
    """The service's spec, and each running task's, is read-only, drops every capability but
    those LOCKDOWN lists, limits its processes and rotates its logs."""
    service = stack.service(short)
    if service is None:
        return line(f"{stack.full(short)}: no such service", ok=False)
    spec = dig(service, "Spec", "TaskTemplate") or {}
    wanted = lockdown_of(spec)
    read_only, dropped, added, pids, logs = wanted
    tasks = stack.running_tasks(service)
    same = bool(tasks) and all(lockdown_of(t.get("Spec") or {}) == wanted for t in tasks)
    ok = (
        read_only
        and dropped == {"ALL"}
        and added == LOCKDOWN[short]
        and pids > 0
        and logs.startswith("json-file")
        and "?" not in logs
        and same
    )
    return line(
        f"{short} locked down in its spec: read-only root {'yes' if read_only else 'NO'}, "
        f"cap_drop {names(dropped)}, cap_add {names(added)} (allowed: "
        f"{names(LOCKDOWN[short])}), pids {pids or 'unlimited'}, logs {logs}; its {len(tasks)} "
        "running task(s) " + ("the same" if same else "differ"),
        ok=ok,
    )


def names(capabilities: set[str] | frozenset[str]) -> str:
    return ",".join(sorted(capabilities)) or "none"


def decode_capabilities(mask: str) -> set[str]:
    bits = int(mask, 16)
    return {name for number, name in enumerate(CAPABILITIES) if bits >> number & 1}


def lockdown_check(service: Json, probe: str) -> str:
    """What a task with the service's settings found from inside: a write to / refused, and
    no capability beyond those the service lists, in its bounding set or held."""
    name = str(dig(service, "Spec", "Name"))
    short = name.split("_", 1)[-1]
    lines = probe.splitlines()
    status = {k: v.strip() for k, _, v in (entry.partition(":") for entry in lines) if v}
    uid = next((entry for entry in lines if entry.strip().isdigit()), "?")
    allowed = LOCKDOWN.get(short, frozenset())
    try:
        bounding = decode_capabilities(status["CapBnd"])
        held = decode_capabilities(status["CapEff"]) | decode_capabilities(status["CapPrm"])
    except (KeyError, ValueError):
        return line(f"{short}: from inside, no capability sets in {probe!r}", ok=False)
    refused = "write / refused" in lines
    ok = refused and bounding <= allowed and held <= allowed
    return line(
        f"{short} from inside (a task of its image with its settings, uid {uid}): a write to / "
        f"is {'refused' if refused else 'ALLOWED'}; capabilities it can ever have: "
        f"{names(bounding)}, held: {names(held)} (allowed: {names(allowed)})",
        ok=ok,
    )


# --- one service ------------------------------------------------------------------------------
def env_value(service: Json, name: str) -> str:
    for entry in dig(service, "Spec", "TaskTemplate", "ContainerSpec", "Env") or []:
        key, _, value = str(entry).partition("=")
        if key == name:
            return value
    raise InputError(f"the service sets no {name}")


def secret_name(service: Json, target: str) -> str:
    for secret in dig(service, "Spec", "TaskTemplate", "ContainerSpec", "Secrets") or []:
        if dig(secret, "File", "Name") == target:
            return str(secret.get("SecretName"))
    raise InputError(f"the service mounts no secret as {target}")


def log_line(request_id: str, lines: list[str]) -> str:
    """The first line that is a JSON object whose request_id is REQUEST_ID."""
    for text in lines:
        match = re.search(r"\{.*\}", text)
        if not match:
            continue
        try:
            entry = json.loads(match.group(0))
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("request_id") == request_id:
            return match.group(0)
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", maxsplit=1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convergence")
    conv.add_argument("--stack", required=True)
    conv.add_argument("--expect", nargs=3, action="append", default=[])
    conv.add_argument("--image", required=True)
    conv.add_argument("--before", type=Path, required=True)
    conv.add_argument("dir", type=Path)
    checks = sub.add_parser("spec-checks")
    checks.add_argument("--stack", required=True)
    checks.add_argument("--http-port", type=int, required=True)
    checks.add_argument("--https-port", type=int, required=True)
    checks.add_argument("dir", type=Path)
    env = sub.add_parser("env")
    env.add_argument("service", type=Path)
    env.add_argument("name")
    secret = sub.add_parser("secret-name")
    secret.add_argument("service", type=Path)
    secret.add_argument("target")
    image = sub.add_parser("image")
    image.add_argument("service", type=Path)
    image.add_argument("--digest", action="store_true")
    networks = sub.add_parser("networks")
    networks.add_argument("service", type=Path)
    options = sub.add_parser("task-options")
    options.add_argument("service", type=Path)
    options.add_argument("--env-prefix", default="")
    options.add_argument("--lockdown", action="store_true")
    lockdown = sub.add_parser("lockdown-check")
    lockdown.add_argument("service", type=Path)
    logs = sub.add_parser("log-line")
    logs.add_argument("request_id")
    args = parser.parse_args(argv)
    try:
        print(run(args))
    except InputError as exc:
        print(f"swarm_state.py {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> str:  # noqa: PLR0911 - one answer per subcommand
    command: str = args.command
    if command == "convergence":
        before_text = args.before.read_text() if args.before.exists() else ""
        expected = [(str(a), str(b), str(c)) for a, b, c in args.expect]
        return convergence(
            Stack.read(args.stack, args.dir), args.image, expected, set(before_text.split())
        )
    if command == "spec-checks":
        stack = Stack.read(args.stack, args.dir)
        return "\n".join(spec_checks(stack, args.http_port, args.https_port))
    if command == "log-line":
        return log_line(args.request_id, sys.stdin.read().splitlines())
    service = one(args.service)
    if command == "lockdown-check":
        return lockdown_check(service, sys.stdin.read())
    if command == "env":
        return env_value(service, args.name)
    if command == "secret-name":
        return secret_name(service, args.target)
    if command == "image":
        return spec_image(service) if args.digest else without_digest(spec_image(service))
    networks = [
        str(n.get("Target")) for n in dig(service, "Spec", "TaskTemplate", "Networks") or []
    ]
    if command == "networks":
        return "\n".join(networks)
    if args.lockdown:
        return "\n".join(lockdown_options(service))
    return "\n".join(task_options(service, networks, args.env_prefix))


def task_options(service: Json, networks: list[str], env_prefix: str) -> list[str]:
    options = [f"--network={network}" for network in networks]
    if env_prefix:
        env = dig(service, "Spec", "TaskTemplate", "ContainerSpec", "Env") or []
        options += [f"--env={entry}" for entry in env if str(entry).startswith(env_prefix)]
    return options


def lockdown_options(service: Json) -> list[str]:
    """`docker service create` options for the service's read-only root, capabilities,
    tmpfs mounts and process limit."""
    spec = dig(service, "Spec", "TaskTemplate") or {}
    read_only, dropped, added, pids, _ = lockdown_of(spec)
    options = ["--read-only"] if read_only else []
    options += [f"--cap-drop={name}" for name in sorted(dropped)]
    options += [f"--cap-add={name}" for name in sorted(added)]
    for mount in dig(spec, "ContainerSpec", "Mounts") or []:
        if mount.get("Type") == "tmpfs":
            size = dig(mount, "TmpfsOptions", "SizeBytes")
            options.append(
                f"--mount=type=tmpfs,target={mount.get('Target')}"
                + (f",tmpfs-size={size}" if size else "")
            )
    if pids:
        options.append(f"--limit-pids={pids}")
    return options


if __name__ == "__main__":
    sys.exit(main())
