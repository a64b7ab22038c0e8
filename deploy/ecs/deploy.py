"""Roll a new image out to the ECS service.

Renders deploy/ecs/task-definition.json for an image tag (placeholders `${NAME}` filled from a vars
file, normally `terraform output -json task_template_vars`, plus `--var NAME=VALUE`), registers it
as a new revision, points the service at it and waits until the service is stable. The metrics
sidecar (metrics-sidecar.json) is added when ADOT_CONFIG is set. `--revision` points the service
at an existing revision instead (rollback). Any failure ends with one `deploy: error: ...` line
and exit status 1.

    python -m deploy.ecs.deploy --cluster image-worker --service image-worker \\
        --image-tag 3f2c1ab --vars deploy/ecs/vars.json

AWS_ENDPOINT_URL (e.g. a moto server) and the usual AWS_* variables are honoured.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "task-definition.json"
SIDECAR_TEMPLATE = HERE / "metrics-sidecar.json"
PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")
EXIT_FAILED = 1


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


def _ecs_client(region: str | None) -> Any:
    import boto3

    endpoint = os.environ.get("AWS_ENDPOINT_URL", "").strip() or None
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return boto3.client("ecs", endpoint_url=endpoint, region_name=region or "us-east-1")


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
    delay_seconds: int = 15,
    max_attempts: int = 80,
) -> Outcome:
    """Register `task_definition` (or use `revision`), update the service, wait until stable."""
    from botocore.exceptions import WaiterError

    current = _describe_service(ecs, cluster, service)
    previous = current.get("taskDefinition")
    if revision is None:
        if task_definition is None:
            raise DeployError("nothing to deploy: give a task definition or a revision")
        registered = ecs.register_task_definition(**task_definition)
        target = str(registered["taskDefinition"]["taskDefinitionArn"])
        print(f"registered {target}", file=sys.stderr)
    else:
        described = ecs.describe_task_definition(taskDefinition=revision)
        target = str(described["taskDefinition"]["taskDefinitionArn"])
    ecs.update_service(cluster=cluster, service=service, taskDefinition=target)
    print(f"service {service} -> {target} (was {previous})", file=sys.stderr)
    if not wait:
        return Outcome(target, previous)
    waiter = ecs.get_waiter("services_stable")
    try:
        waiter.wait(
            cluster=cluster,
            services=[service],
            WaiterConfig={"Delay": delay_seconds, "MaxAttempts": max_attempts},
        )
    except WaiterError as exc:
        state = _rollout_state(ecs, cluster, service, target)
        raise DeployError(
            f"service {service} did not become stable on {target} within "
            f"{delay_seconds * max_attempts}s ({state or exc})"
        ) from exc
    now = _describe_service(ecs, cluster, service).get("taskDefinition")
    if now != target:
        raise DeployError(
            f"service {service} is stable on {now}, not {target}: the deployment circuit breaker "
            "rolled back (see `aws ecs describe-services` events and the task's stopped reason)"
        )
    return Outcome(target, previous)


def _rollout_state(ecs: Any, cluster: str, service: str, target: str) -> str:
    try:
        described = _describe_service(ecs, cluster, service)
    except DeployError as exc:
        return str(exc)
    for deployment in described.get("deployments", []):
        if deployment.get("taskDefinition") == target:
            state = deployment.get("rolloutState", "")
            reason = deployment.get("rolloutStateReason", "")
            return f"rollout {state}: {reason}".strip(": ")
    return "the new deployment is gone: the circuit breaker rolled it back"


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.ecs.deploy",
        description="Register a task definition revision for an image tag and roll it out.",
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
    parser.add_argument("--template", type=Path, default=TEMPLATE, help="task definition template")
    parser.add_argument("--region", help="AWS region (default: AWS_REGION or us-east-1)")
    parser.add_argument("--no-wait", action="store_true", help="do not wait for a stable service")
    parser.add_argument("--delay", type=int, default=15, help="seconds between stability checks")
    parser.add_argument("--max-attempts", type=int, default=80, help="stability checks (bounded)")
    parser.add_argument(
        "--render-only", action="store_true", help="print the rendered task definition and exit"
    )
    args = parser.parse_args(argv)
    if args.delay < 1 or args.max_attempts < 1:
        parser.error("--delay and --max-attempts must be at least 1")

    from botocore.exceptions import BotoCoreError, ClientError

    try:
        task_definition = None
        if args.image_tag is not None:
            values = load_vars(args.vars, args.var)
            task_definition = render(args.image_tag, values, template=args.template)
            if args.render_only:
                print(json.dumps(task_definition, indent=2))
                return 0
        elif args.render_only:
            raise DeployError("--render-only needs --image-tag")
        outcome = deploy(
            _ecs_client(args.region),
            cluster=args.cluster,
            service=args.service,
            task_definition=task_definition,
            revision=args.revision,
            wait=not args.no_wait,
            delay_seconds=args.delay,
            max_attempts=args.max_attempts,
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
    print(
        json.dumps(
            {
                "taskDefinitionArn": outcome.task_definition_arn,
                "previous": outcome.previous_task_definition_arn,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
