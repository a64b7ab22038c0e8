"""Roll a new image out to the ECS service.

Renders deploy/ecs/task-definition.json (task-definition-cpu.json for COMPUTE=cpu) for an image
tag (placeholders `${NAME}` filled from a vars file, normally `terraform output -json
task_template_vars`, plus `--var NAME=VALUE`) and registers it as a new revision. Then:

1. runs the revision once as a one-off task, `image-worker selfcheck` (model loads, database,
   queue, DLQ and buckets reachable with the task role), placed like the service's tasks; if it
   does not exit 0 the service is left untouched. At desiredCount 0 a rollout starts no task, so
   without this a broken image would be reported as deployed;
2. points the service at the revision and waits until its deployment's rolloutState is COMPLETED;
3. on FAILED, a circuit-breaker rollback, or a timeout: restores the previous revision and waits
   for that rollout too.

The recovery sweep ships with the same tag: its image is `<tag>-sweep` (the Dockerfile's `sweep`
target). First (before the selfcheck), a revision of the sweep's task definition (the one its
EventBridge Scheduler schedule runs, `--sweep-schedule` or RECOVERY_SCHEDULE_NAME in the vars)
with that image is registered, refused if ECR does not hold the image; the schedule is pointed at
it together with the service, and a rollback restores both.

The metrics sidecar (metrics-sidecar.json) is added when ADOT_CONFIG is set. `--revision` points
the service at an existing revision instead; a revision that has run before (a completed rollout
tags it ROLLED_OUT_TAG) skips the selfcheck unless `--force-selfcheck`: a rollback at peak must
not wait for a spare GPU. Every wait is bounded. Any failure ends with one `deploy: error: ...`
line and exit status 1.

    python -m deploy.ecs.deploy --cluster image-worker --service image-worker \\
        --image-tag 3f2c1ab --vars deploy/ecs/vars.json

AWS_ENDPOINT_URL (e.g. a moto server) and the usual AWS_* variables are honoured.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from jobcore.aws import AwsOptions, sync_aws_client
from jobcore.env import EnvError

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "task-definition.json"
CPU_TEMPLATE = HERE / "task-definition-cpu.json"
SIDECAR_TEMPLATE = HERE / "metrics-sidecar.json"
PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")
EXIT_FAILED = 1
# Set on a worker revision once a rollout of it completed (or it was the service's completed
# revision when a deploy started): a rollback to it needs no selfcheck.
ROLLED_OUT_TAG = "image-worker:rolled-out"
SWEEP_SUFFIX = "-sweep"
T = TypeVar("T")


class DeployError(RuntimeError):
    """A failure to report as one line."""


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------
def load_vars(path: Path | None, overrides: Sequence[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DeployError(f"cannot read vars file {path}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise DeployError(f"vars file {path} must hold a JSON object")
        # `terraform output -json` (all outputs) nests values: {"task_template_vars": {"value": {}}}
        if "task_template_vars" in loaded and isinstance(loaded["task_template_vars"], dict):
            loaded = loaded["task_template_vars"].get("value", loaded["task_template_vars"])
        values.update(loaded)
    for item in overrides:
        name, sep, value = item.partition("=")
        if not sep or not PLACEHOLDER.fullmatch("${" + name + "}"):
            raise DeployError(f"--var {item!r}: expected NAME=VALUE with NAME in upper case")
        values[name] = value
    return values


def _substitute(node: Any, values: Mapping[str, Any], missing: set[str]) -> Any:
    if isinstance(node, dict):
        return {key: _substitute(value, values, missing) for key, value in node.items()}
    if isinstance(node, list):
        return [_substitute(value, values, missing) for value in node]
    if not isinstance(node, str):
        return node
    whole = PLACEHOLDER.fullmatch(node)
    if whole is not None:  # keep the value's JSON type; the model decides the final type
        name = whole.group(1)
        if name not in values:
            missing.add(name)
            return node
        return values[name]

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            missing.add(name)
            return match.group(0)
        return str(values[name])

    return PLACEHOLDER.sub(one, node)


def _input_shape() -> Any:
    import botocore.session

    model = botocore.session.get_session().get_service_model("ecs")
    return model.operation_model("RegisterTaskDefinition").input_shape


def _coerce(shape: Any, value: Any) -> Any:
    """Bring rendered scalars to the type the ECS model wants (placeholders render as strings or
    as the vars file's numbers: `"cpu": "${TASK_CPU}"` must be an integer, an environment value a
    string)."""
    kind = shape.type_name
    if kind == "structure" and isinstance(value, dict):
        return {
            key: _coerce(shape.members[key], item) if key in shape.members else item
            for key, item in value.items()
        }
    if kind == "list" and isinstance(value, list):
        return [_coerce(shape.member, item) for item in value]
    if kind == "map" and isinstance(value, dict):
        return {key: _coerce(shape.value, item) for key, item in value.items()}
    if kind in ("integer", "long") and isinstance(value, str) and re.fullmatch(r"-?\d+", value):
        return int(value)
    if kind in ("integer", "long") and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind == "boolean" and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if kind == "string" and isinstance(value, bool):
        return "true" if value else "false"
    if kind == "string" and isinstance(value, int | float):
        return f"{value:g}" if isinstance(value, float) else str(value)
    return value


def render(
    image_tag: str,
    values: Mapping[str, Any],
    *,
    template: Path = TEMPLATE,
    sidecar_template: Path = SIDECAR_TEMPLATE,
) -> dict[str, Any]:
    """The RegisterTaskDefinition input for `image_tag`, validated against botocore's model."""
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", image_tag):
        raise DeployError(f"--image-tag {image_tag!r} is not a valid image tag")
    values = {**values, "IMAGE_TAG": image_tag}
    try:
        document = json.loads(template.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DeployError(f"cannot read template {template}: {exc}") from exc
    missing: set[str] = set()
    rendered = _substitute(document, values, missing)
    extra_env = values.get("EXTRA_ENVIRONMENT") or {}
    if not isinstance(extra_env, dict):
        raise DeployError("EXTRA_ENVIRONMENT must be a JSON object of NAME: value")
    if extra_env:
        worker = _container(rendered, str(values.get("CONTAINER_NAME", "worker")))
        managed = {item["name"] for item in worker.get("environment", [])}
        clash = sorted(managed & set(extra_env))
        if clash:
            raise DeployError(f"EXTRA_ENVIRONMENT may not override {', '.join(clash)}")
        worker["environment"] = sorted(
            [
                *worker.get("environment", []),
                *({"name": k, "value": str(v)} for k, v in extra_env.items()),
            ],
            key=lambda item: str(item["name"]),
        )
    if values.get("ADOT_CONFIG"):
        try:
            sidecar = json.loads(sidecar_template.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DeployError(f"cannot read template {sidecar_template}: {exc}") from exc
        rendered["containerDefinitions"].append(_substitute(sidecar, values, missing))
    if missing:
        raise DeployError(
            f"template placeholders without a value: {', '.join(sorted(missing))} "
            "(pass --vars FILE from `terraform output -json task_template_vars`, "
            "or --var NAME=VALUE)"
        )
    shape = _input_shape()
    task: dict[str, Any] = _coerce(shape, rendered)
    validate(task, shape)
    return task


def _container(task: dict[str, Any], name: str) -> dict[str, Any]:
    for container in task.get("containerDefinitions", []):
        if isinstance(container, dict) and container.get("name") == name:
            return container
    raise DeployError(f"the template has no container named {name!r}")


def validate(task: Mapping[str, Any], shape: Any | None = None) -> None:
    from botocore.exceptions import ParamValidationError
    from botocore.validate import validate_parameters

    try:
        validate_parameters(dict(task), shape if shape is not None else _input_shape())
    except ParamValidationError as exc:
        detail = " ".join(str(exc).split())
        raise DeployError(f"rendered task definition is invalid: {detail}") from exc


# ---------------------------------------------------------------------------------------------
# Deploying
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Outcome:
    task_definition_arn: str
    previous_task_definition_arn: str | None
    sweep_task_definition_arn: str | None = None
    previous_sweep_task_definition_arn: str | None = None


@dataclass(frozen=True, slots=True)
class Timing:
    """Bounds of every wait: poll every `delay` seconds, give up after `timeout` seconds."""

    delay: float = 15.0
    timeout: float = 1200.0
    selfcheck_timeout: float = 900.0


@dataclass(frozen=True, slots=True)
class Selfcheck:
    """The one-off run of the new revision before the service is switched to it."""

    container: str = "worker"
    source_bucket: str | None = None
    source_prefix: str = ""

    def command(self) -> list[str]:
        command = ["selfcheck"]
        if self.source_bucket:
            command += [
                "--source-bucket",
                self.source_bucket,
                "--source-prefix",
                self.source_prefix,
            ]
        return command


@dataclass(frozen=True, slots=True)
class Sweep:
    """The recovery sweep's EventBridge Scheduler schedule (its ECS target runs the sweep)."""

    scheduler: Any
    schedule: str
    group: str = "default"
    ecr: Any = None  # checks that the sweep image was pushed (an ECR repository URL)

    def read(self) -> dict[str, Any]:
        return dict[str, Any](self.scheduler.get_schedule(Name=self.schedule, GroupName=self.group))

    def task_definition(self) -> str:
        schedule = self.read()
        arn = schedule.get("Target", {}).get("EcsParameters", {}).get("TaskDefinitionArn")
        if not arn:
            raise DeployError(f"schedule {self.schedule!r} has no ECS task target")
        return str(arn)

    def point_at(self, task_definition_arn: str) -> None:
        """UpdateSchedule replaces the whole schedule: send it back as read, the target's task
        definition changed."""
        schedule = self.read()
        writable = (
            "ActionAfterCompletion", "Description", "EndDate", "FlexibleTimeWindow", "KmsKeyArn",
            "ScheduleExpression", "ScheduleExpressionTimezone", "StartDate", "State", "Target",
        )  # fmt: skip
        update = {key: schedule[key] for key in writable if schedule.get(key) is not None}
        update["Target"]["EcsParameters"]["TaskDefinitionArn"] = task_definition_arn
        self.scheduler.update_schedule(Name=self.schedule, GroupName=self.group, **update)


def sweep_image(worker_image: str) -> str:
    """`<repository>:<tag>` of the worker -> `<repository>:<tag>-sweep`."""
    repository, sep, tag = worker_image.rpartition(":")
    if not sep or "/" in tag or not tag:
        raise DeployError(f"worker image {worker_image!r} has no tag to derive the sweep's from")
    return f"{repository}:{tag}{SWEEP_SUFFIX}"


def check_pushed(ecr: Any, image: str) -> None:
    """Refuse an image an ECR repository does not hold: the scheduled sweep would fail with
    CannotPullContainer every run, and nothing would say so but its alarm."""
    registry, _, rest = image.partition("/")
    repository, _, tag = rest.rpartition(":")
    if ".dkr.ecr." not in registry:
        return  # another registry: not checked
    from botocore.exceptions import ClientError

    try:
        ecr.describe_images(repositoryName=repository, imageIds=[{"imageTag": tag}])
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ImageNotFoundException":
            raise
        raise DeployError(
            f"{image} is not in the repository: push the Dockerfile's `sweep` target under that "
            "tag with the worker's (docs/deploy.md); nothing was changed"
        ) from exc


def register_sweep(ecs: Any, current_arn: str, image: str, ecr: Any = None) -> str:
    """A revision of the sweep's task definition `current_arn` running `image` (the current one
    if it already does)."""
    described = ecs.describe_task_definition(taskDefinition=current_arn, include=["TAGS"])
    task = described["taskDefinition"]
    if all(c.get("image") == image for c in task.get("containerDefinitions", [])):
        return current_arn
    if ecr is not None:
        check_pushed(ecr, image)
    members = _input_shape().members
    register = {key: value for key, value in task.items() if key in members}
    for container in register["containerDefinitions"]:
        container["image"] = image
    if described.get("tags"):
        register["tags"] = [
            tag if tag.get("key") != "image-tag" else {**tag, "value": image.rpartition(":")[2]}
            for tag in described["tags"]
        ]
    registered = ecs.register_task_definition(**register)
    arn = str(registered["taskDefinition"]["taskDefinitionArn"])
    print(f"registered sweep {arn} ({image})", file=sys.stderr)
    return arn


def ran_before(ecs: Any, task_definition_arn: str) -> bool:
    described = ecs.describe_task_definition(taskDefinition=task_definition_arn, include=["TAGS"])
    return any(tag.get("key") == ROLLED_OUT_TAG for tag in described.get("tags") or [])


def mark_rolled_out(ecs: Any, task_definition_arn: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    ecs.tag_resource(
        resourceArn=task_definition_arn, tags=[{"key": ROLLED_OUT_TAG, "value": stamp}]
    )


class RolloutFailed(DeployError):
    """The new revision did not roll out (the message says whether the previous one is back)."""


def _client(service: str, region: str | None) -> Any:
    try:
        options = AwsOptions.from_env(region=region)
    except EnvError as exc:
        raise DeployError("; ".join(exc.problems)) from None
    if not options.region:
        raise DeployError("no AWS region: pass --region, AWS_REGION in --vars, or set AWS_REGION")
    return sync_aws_client(service, options)


def _describe_service(ecs: Any, cluster: str, service: str) -> dict[str, Any]:
    response = ecs.describe_services(cluster=cluster, services=[service])
    services = [s for s in response.get("services", []) if s.get("status") == "ACTIVE"]
    if not services:
        reasons = "; ".join(
            f"{f.get('arn', service)}: {f.get('reason', 'unknown')}"
            for f in response.get("failures", [])
        )
        raise DeployError(
            f"service {service!r} not found (or not ACTIVE) in cluster {cluster!r}"
            + (f" ({reasons})" if reasons else "")
        )
    return dict[str, Any](services[0])


def deploy(
    ecs: Any,
    *,
    cluster: str,
    service: str,
    task_definition: Mapping[str, Any] | None = None,
    revision: str | None = None,
    wait: bool = True,
    timing: Timing = Timing(),
    selfcheck: Selfcheck | None = Selfcheck(),
    force_selfcheck: bool = False,
    sweep: Sweep | None = None,
    container: str = "worker",
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Outcome:
    """Register `task_definition` (or use `revision`), run it once as `image-worker selfcheck`
    (stop there if it fails; skipped for a revision that ran before unless `force_selfcheck`),
    register the sweep's revision for the same tag, switch the service and the sweep's schedule
    to them and wait for the rollout to complete. A rollout that fails or times out is rolled
    back: the previous revisions are restored and the service's is waited for. Every wait is
    bounded by `timing`."""
    current = _describe_service(ecs, cluster, service)
    previous = current.get("taskDefinition")
    primary = [d for d in current.get("deployments", []) if d.get("status") == "PRIMARY"]
    if previous and primary and primary[0].get("rolloutState") == "COMPLETED":
        mark_rolled_out(ecs, previous)  # what the service runs now is a safe rollback target
    if revision is None:
        if task_definition is None:
            raise DeployError("nothing to deploy: give a task definition or a revision")
        registered = ecs.register_task_definition(**task_definition)
        target = str(registered["taskDefinition"]["taskDefinitionArn"])
        print(f"registered {target}", file=sys.stderr)
        worker_task: Mapping[str, Any] = task_definition
    else:
        described = ecs.describe_task_definition(taskDefinition=revision)
        target = str(described["taskDefinition"]["taskDefinitionArn"])
        worker_task = described["taskDefinition"]
        if selfcheck is not None and not force_selfcheck and ran_before(ecs, target):
            print(
                f"{target} ran before: selfcheck skipped (--force-selfcheck runs it)",
                file=sys.stderr,
            )
            selfcheck = None
    sweep_previous = sweep_target = None
    if sweep is not None:  # first: a sweep image never pushed stops the deploy before the gate
        sweep_previous = sweep.task_definition()
        image = sweep_image(_worker_image(worker_task, container))
        sweep_target = register_sweep(ecs, sweep_previous, image, sweep.ecr)
    if selfcheck is not None:
        # At desiredCount 0 the rollout "completes" without starting a task: only this run
        # proves that the revision starts, loads the model and reaches its dependencies.
        run_selfcheck(ecs, cluster, current, target, selfcheck, timing, sleep=sleep, clock=clock)
    ecs.update_service(cluster=cluster, service=service, taskDefinition=target)
    print(f"service {service} -> {target} (was {previous})", file=sys.stderr)
    if sweep is not None and sweep_target is not None and sweep_target != sweep_previous:
        sweep.point_at(sweep_target)
        print(f"sweep schedule {sweep.schedule} -> {sweep_target}", file=sys.stderr)
    outcome = Outcome(target, previous, sweep_target, sweep_previous)
    if not wait:
        return outcome
    problem = wait_for_rollout(ecs, cluster, service, target, timing, sleep=sleep, clock=clock)
    if problem is None:
        mark_rolled_out(ecs, target)
        return outcome
    if sweep is not None and sweep_previous is not None and sweep_target != sweep_previous:
        sweep.point_at(sweep_previous)
        print(f"sweep schedule {sweep.schedule} restored to {sweep_previous}", file=sys.stderr)
    if previous is None or previous == target:
        raise RolloutFailed(f"rollout of {target} failed: {problem}; nothing to roll back to")
    rolled = _describe_service(ecs, cluster, service).get("taskDefinition")
    if rolled != previous:
        ecs.update_service(cluster=cluster, service=service, taskDefinition=previous)
    print(f"rollout of {target} failed ({problem}): restoring {previous}", file=sys.stderr)
    again = wait_for_rollout(ecs, cluster, service, previous, timing, sleep=sleep, clock=clock)
    if again is None:
        raise RolloutFailed(f"rollout of {target} failed: {problem}; rolled back to {previous}")
    raise RolloutFailed(
        f"rollout of {target} failed: {problem}; the service is back on {previous} but that "
        f"rollout did not complete either: {again}"
    )


def _worker_image(task: Mapping[str, Any], container: str) -> str:
    for definition in task.get("containerDefinitions", []):
        if isinstance(definition, dict) and definition.get("name") == container:
            return str(definition["image"])
    raise DeployError(f"the task definition has no container named {container!r}")


@dataclass(frozen=True, slots=True)
class Finished:
    problem: str | None  # None: it went well


def poll_until(
    probe: Callable[[], T | None],
    timeout: float,
    delay: float,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T | None:
    """Call `probe` every `delay` seconds until it returns something other than None, and return
    that; None once `timeout` seconds have passed (the last probe is made at or after it)."""
    deadline = clock() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if clock() >= deadline:
            return None
        sleep(delay)


def wait_for_rollout(
    ecs: Any,
    cluster: str,
    service: str,
    target: str,
    timing: Timing,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> str | None:
    """None once the service's PRIMARY deployment of `target` is COMPLETED; otherwise why not
    (FAILED, replaced by a circuit-breaker rollback, or still IN_PROGRESS at the timeout)."""
    state = "no deployment yet"

    def finished() -> Finished | None:
        nonlocal state
        described = _describe_service(ecs, cluster, service)
        if described.get("taskDefinition") != target:
            return Finished(
                f"the service moved to {described.get('taskDefinition')} "
                "(the deployment circuit breaker rolled back)"
            )
        primary = [d for d in described.get("deployments", []) if d.get("status") == "PRIMARY"]
        if primary:
            rollout = str(primary[0].get("rolloutState", ""))
            reason = str(primary[0].get("rolloutStateReason", "")).strip()
            state = f"rollout {rollout or 'state unknown'}" + (f": {reason}" if reason else "")
            if rollout == "COMPLETED":
                return Finished(None)
            if rollout == "FAILED":
                return Finished(state)
        return None

    outcome = poll_until(finished, timing.timeout, timing.delay, sleep=sleep, clock=clock)
    if outcome is None:
        return f"not COMPLETED within {timing.timeout:g}s ({state})"
    return outcome.problem


def run_selfcheck(
    ecs: Any,
    cluster: str,
    service: Mapping[str, Any],
    task_definition_arn: str,
    selfcheck: Selfcheck,
    timing: Timing,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Run the revision once, placed like the service's tasks, as `image-worker selfcheck`;
    raise DeployError unless its container exits 0 within timing.selfcheck_timeout."""
    task_arn = start_selfcheck(ecs, cluster, service, task_definition_arn, selfcheck)

    def stopped() -> Mapping[str, Any] | None:
        described = ecs.describe_tasks(cluster=cluster, tasks=[task_arn]).get("tasks", [])
        if described and described[0].get("lastStatus") == "STOPPED":
            return dict[str, Any](described[0])
        return None

    task = poll_until(stopped, timing.selfcheck_timeout, timing.delay, sleep=sleep, clock=clock)
    if task is None:
        ecs.stop_task(cluster=cluster, task=task_arn, reason="deploy selfcheck timed out")
        raise DeployError(
            f"selfcheck of {task_definition_arn} did not finish within "
            f"{timing.selfcheck_timeout:g}s (task {task_arn} stopped); the service was not "
            "changed"
        )
    problem = selfcheck_problem(task, selfcheck.container)
    if problem is not None:
        raise DeployError(
            f"selfcheck of {task_definition_arn} failed: {problem}; the service was "
            "not changed (the task's log stream has one line per failing check)"
        )
    print(f"selfcheck {task_arn} passed", file=sys.stderr)


def start_selfcheck(
    ecs: Any,
    cluster: str,
    service: Mapping[str, Any],
    task_definition_arn: str,
    selfcheck: Selfcheck,
) -> str:
    """Start the one-off selfcheck task, placed like the service's tasks; its ARN."""
    placement: dict[str, Any] = {}
    if service.get("capacityProviderStrategy"):
        placement["capacityProviderStrategy"] = service["capacityProviderStrategy"]
    elif service.get("launchType"):
        placement["launchType"] = service["launchType"]
    if service.get("networkConfiguration"):
        placement["networkConfiguration"] = service["networkConfiguration"]
    started = ecs.run_task(
        cluster=cluster,
        taskDefinition=task_definition_arn,
        count=1,
        startedBy="deploy-selfcheck",
        overrides={
            "containerOverrides": [{"name": selfcheck.container, "command": selfcheck.command()}]
        },
        **placement,
    )
    if not started.get("tasks"):
        reasons = "; ".join(str(f.get("reason", f)) for f in started.get("failures", []))
        raise DeployError(f"selfcheck of {task_definition_arn} could not start: {reasons}")
    task_arn = str(started["tasks"][0]["taskArn"])
    print(f"selfcheck {task_arn} started", file=sys.stderr)
    return task_arn


def selfcheck_problem(task: Mapping[str, Any], container_name: str) -> str | None:
    """Why a STOPPED selfcheck task failed (None: its container exited 0)."""
    containers = [c for c in task.get("containers", []) if c.get("name") == container_name]
    exit_code = containers[0].get("exitCode") if containers else None
    if exit_code == 0:
        return None
    reasons = [
        str(part)
        for part in (
            task.get("stopCode"),
            task.get("stoppedReason"),
            containers[0].get("reason") if containers else f"no container {container_name!r}",
        )
        if part
    ]
    status = "never started" if exit_code is None else f"exit {exit_code}"
    return status + (f" ({'; '.join(reasons)})" if reasons else "")


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.ecs.deploy",
        description="Register a task definition revision for an image tag, check it with a "
        "one-off `image-worker selfcheck` task, roll it out, and roll back if the rollout fails.",
    )
    parser.add_argument("--cluster", required=True, help="ECS cluster name or ARN")
    parser.add_argument("--service", required=True, help="ECS service name or ARN")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--image-tag", help="image tag in the repository (REPOSITORY_URL)")
    target.add_argument(
        "--revision", help="existing task definition (family:revision or ARN) to roll back to"
    )
    parser.add_argument(
        "--vars", type=Path, help="JSON object of template values (terraform output -json ...)"
    )
    parser.add_argument(
        "--var", action="append", default=[], metavar="NAME=VALUE", help="override one value"
    )
    parser.add_argument(
        "--template",
        type=Path,
        help="task definition template (default: task-definition.json, or "
        "task-definition-cpu.json when COMPUTE is cpu)",
    )
    parser.add_argument(
        "--region", help="AWS region (default: AWS_REGION of --vars, then the environment)"
    )
    parser.add_argument("--no-wait", action="store_true", help="do not wait for the rollout")
    parser.add_argument(
        "--skip-selfcheck", action="store_true", help="switch the service without a selfcheck run"
    )
    parser.add_argument(
        "--force-selfcheck",
        action="store_true",
        help="run the selfcheck for a --revision that ran before too (skipped by default)",
    )
    parser.add_argument(
        "--sweep-schedule",
        help="EventBridge Scheduler schedule of the recovery sweep (default: "
        "RECOVERY_SCHEDULE_NAME of --vars); its task gets the image <tag>-sweep",
    )
    parser.add_argument(
        "--sweep-schedule-group", default="default", help="the schedule's group (default: default)"
    )
    parser.add_argument("--delay", type=int, default=15, help="seconds between status checks")
    parser.add_argument(
        "--max-attempts",
        type=int,
        default=80,
        help="rollout wait = delay x max-attempts seconds, then roll back (bounded)",
    )
    parser.add_argument(
        "--selfcheck-timeout",
        type=int,
        default=900,
        help="seconds the selfcheck task may take (placement, image pull, model load)",
    )
    parser.add_argument(
        "--render-only", action="store_true", help="print the rendered task definition and exit"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.skip_selfcheck and args.force_selfcheck:
        parser.error("--skip-selfcheck and --force-selfcheck exclude each other")
    if args.delay < 1 or args.max_attempts < 1 or args.selfcheck_timeout < 1:
        parser.error("--delay, --max-attempts and --selfcheck-timeout must be at least 1")

    from botocore.exceptions import BotoCoreError, ClientError

    try:
        values = load_vars(args.vars, args.var)
        task_definition = _rendered(args, values)
        if args.render_only:
            print(json.dumps(task_definition, indent=2))
            return 0
        region = args.region or (str(values["AWS_REGION"]) if values.get("AWS_REGION") else None)
        sweep = _sweep(args, values, region)
        outcome = deploy(
            _client("ecs", region),
            cluster=args.cluster,
            service=args.service,
            task_definition=task_definition,
            revision=args.revision,
            wait=not args.no_wait,
            timing=Timing(
                delay=args.delay,
                timeout=args.delay * args.max_attempts,
                selfcheck_timeout=args.selfcheck_timeout,
            ),
            selfcheck=None if args.skip_selfcheck else _selfcheck(values),
            force_selfcheck=args.force_selfcheck,
            sweep=sweep,
            container=str(values.get("CONTAINER_NAME", "worker")),
        )
    except DeployError as exc:
        print(f"deploy: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except ClientError as exc:
        error = exc.response.get("Error", {})
        print(
            f"deploy: error: {exc.operation_name} failed: {error.get('Code', '?')}: "
            f"{error.get('Message', exc)}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except BotoCoreError as exc:
        print(f"deploy: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if sweep is None and "RECOVERY_SCHEDULE_NAME" not in values:
        print(
            "deploy: warning: no --sweep-schedule and no RECOVERY_SCHEDULE_NAME in --vars: "
            "the recovery sweep's image was not updated",
            file=sys.stderr,
        )
    print(
        json.dumps(
            {
                "taskDefinitionArn": outcome.task_definition_arn,
                "previous": outcome.previous_task_definition_arn,
                "sweepTaskDefinitionArn": outcome.sweep_task_definition_arn,
                "previousSweep": outcome.previous_sweep_task_definition_arn,
            }
        )
    )
    return 0


def _rendered(args: argparse.Namespace, values: dict[str, Any]) -> dict[str, Any] | None:
    """The new revision's task definition for --image-tag; None to roll back to --revision."""
    if args.image_tag is None:
        if args.render_only:
            raise DeployError("--render-only needs --image-tag")
        return None
    template = args.template or (CPU_TEMPLATE if values.get("COMPUTE") == "cpu" else TEMPLATE)
    return render(args.image_tag, values, template=template)


def _selfcheck(values: dict[str, Any]) -> Selfcheck:
    return Selfcheck(
        container=str(values.get("CONTAINER_NAME", "worker")),
        source_bucket=str(values["SOURCE_BUCKET"]) if values.get("SOURCE_BUCKET") else None,
        source_prefix=str(values.get("SOURCE_PREFIX") or ""),
    )


def _sweep(args: argparse.Namespace, values: dict[str, Any], region: str | None) -> Sweep | None:
    schedule = args.sweep_schedule or values.get("RECOVERY_SCHEDULE_NAME")
    if not schedule:
        return None
    return Sweep(
        _client("scheduler", region),
        str(schedule),
        args.sweep_schedule_group,
        ecr=_client("ecr", region),
    )


if __name__ == "__main__":
    sys.exit(main())
