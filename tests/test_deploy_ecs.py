"""deploy/ecs: the rendered task definition is valid for botocore's ECS model and speaks the
worker's settings; the deploy script rolls a new revision out on moto's ECS server, rolls back,
and fails with one clear line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import pytest
from botocore.validate import validate_parameters

from deploy.ecs.deploy import DeployError, render
from devstack.stack import FAKE_CREDENTIALS, moto_server

REPO = Path(__file__).resolve().parents[1]
ACCOUNT = "123456789012"

# What `terraform output -json task_template_vars` gives (numbers stay numbers).
TEMPLATE_VARS: dict[str, Any] = {
    "FAMILY": "image-worker",
    "CONTAINER_NAME": "worker",
    "REPOSITORY_URL": f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/image-worker",
    "EXECUTION_ROLE_ARN": f"arn:aws:iam::{ACCOUNT}:role/image-worker-exec-1",
    "TASK_ROLE_ARN": f"arn:aws:iam::{ACCOUNT}:role/image-worker-task-1",
    "LOG_GROUP": "/ecs/image-worker",
    "AWS_REGION": "us-east-1",
    "DATABASE_URL_SECRET_ARN": f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:db-url-AbCdEf",
    "SQS_QUEUE_URL": f"https://sqs.us-east-1.amazonaws.com/{ACCOUNT}/image-worker-jobs",
    "RESULT_BUCKET": "book-photos",
    "RESULT_PREFIX": "cutouts/",
    "WORKER_CONCURRENCY": 4,
    "INFERENCE_THREADS": 1,
    "MAX_ATTEMPTS": 5,
    "VISIBILITY_TIMEOUT_SECONDS": 60,
    "HEARTBEAT_INTERVAL_SECONDS": 20,
    "DRAIN_SECONDS": 90,
    "STOP_TIMEOUT_SECONDS": 120,
    "METRICS_PORT": 9100,
    "LOG_LEVEL": "info",
    "TASK_CPU": 3072,
    "TASK_MEMORY": 12288,
    "GPU_COUNT": 1,
    "ADOT_IMAGE": "public.ecr.aws/aws-observability/aws-otel-collector:v0.43.3",
    "ADOT_CONFIG": "",
    "EXTRA_ENVIRONMENT": {},
}


def settings_names() -> set[str]:
    source = (REPO / "worker" / "settings.py").read_text()
    return set(re.findall(r"reader\.\w+\(\s*\"([A-Z][A-Z0-9_]*)\"", source))


def register_shape() -> Any:
    model = botocore.session.get_session().get_service_model("ecs")
    return model.operation_model("RegisterTaskDefinition").input_shape


def worker_container(task: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in task["containerDefinitions"] if c["name"] == "worker"]
    return dict(container)


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------
def test_rendered_task_definition_validates_against_the_ecs_model() -> None:
    task = render("3f2c1ab", TEMPLATE_VARS)
    validate_parameters(task, register_shape())  # raises ParamValidationError when invalid
    container = worker_container(task)
    assert container["image"] == f"{TEMPLATE_VARS['REPOSITORY_URL']}:3f2c1ab"
    assert container["cpu"] == 3072
    assert container["memory"] == 12288
    assert container["resourceRequirements"] == [{"type": "GPU", "value": "1"}]
    assert container["healthCheck"]["command"] == ["CMD", "image-worker", "healthcheck"]
    assert container["logConfiguration"]["logDriver"] == "awslogs"
    assert task["executionRoleArn"] != task["taskRoleArn"]


def test_rendered_environment_names_are_worker_settings() -> None:
    container = worker_container(render("v1", TEMPLATE_VARS))
    env = {item["name"]: item["value"] for item in container["environment"]}
    assert set(env) <= settings_names(), sorted(set(env) - settings_names())
    assert all(isinstance(value, str) for value in env.values())
    assert env["MAX_ATTEMPTS"] == "5"
    assert env["REQUIRE_GPU"] == "true"
    assert env["LOG_FORMAT"] == "json"
    assert "DATABASE_URL" not in env
    assert container["secrets"] == [
        {"name": "DATABASE_URL", "valueFrom": TEMPLATE_VARS["DATABASE_URL_SECRET_ARN"]}
    ]
    assert container["stopTimeout"] > float(env["DRAIN_SECONDS"])
    assert float(env["HEARTBEAT_INTERVAL_SECONDS"]) < float(env["VISIBILITY_TIMEOUT_SECONDS"])


def test_sidecar_and_extra_environment_are_added_only_when_asked() -> None:
    assert len(render("v1", TEMPLATE_VARS)["containerDefinitions"]) == 1
    values = {
        **TEMPLATE_VARS,
        "ADOT_CONFIG": "receivers: {}\n",
        "EXTRA_ENVIRONMENT": {"PNG_COMPRESS_LEVEL": 3},
    }
    task = render("v1", values)
    validate_parameters(task, register_shape())
    sidecar = task["containerDefinitions"][1]
    assert sidecar["essential"] is False
    assert sidecar["environment"] == [{"name": "AOT_CONFIG_CONTENT", "value": "receivers: {}\n"}]
    env = {item["name"]: item["value"] for item in worker_container(task)["environment"]}
    assert env["PNG_COMPRESS_LEVEL"] == "3"
    with pytest.raises(DeployError, match="may not override MAX_ATTEMPTS"):
        render("v1", {**TEMPLATE_VARS, "EXTRA_ENVIRONMENT": {"MAX_ATTEMPTS": "9"}})


def test_missing_and_invalid_values_are_named() -> None:
    partial = {k: v for k, v in TEMPLATE_VARS.items() if k not in ("SQS_QUEUE_URL", "TASK_CPU")}
    with pytest.raises(DeployError, match="without a value: SQS_QUEUE_URL, TASK_CPU"):
        render("v1", partial)
    with pytest.raises(DeployError, match=r"rendered task definition is invalid.*cpu"):
        render("v1", {**TEMPLATE_VARS, "TASK_CPU": "lots"})
    with pytest.raises(DeployError, match="not a valid image tag"):
        render("bad tag!", TEMPLATE_VARS)


# ---------------------------------------------------------------------------------------------
# End to end on moto's server
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture
def ecs_service(endpoint: str) -> Iterator[tuple[Any, str, str, str]]:
    """A cluster and a service on a first revision; yields (client, cluster, service, first)."""
    ecs = boto3.client("ecs", endpoint_url=endpoint, region_name="us-east-1")
    cluster = f"cluster-{os.urandom(3).hex()}"
    ecs.create_cluster(clusterName=cluster)
    first = ecs.register_task_definition(**render("first", TEMPLATE_VARS))
    first_arn = first["taskDefinition"]["taskDefinitionArn"]
    ecs.create_service(
        cluster=cluster, serviceName="image-worker", taskDefinition=first_arn, desiredCount=0
    )
    yield ecs, cluster, "image-worker", first_arn
    ecs.delete_service(cluster=cluster, service="image-worker", force=True)


def run_deploy(
    endpoint: str, *args: str, vars_file: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        **FAKE_CREDENTIALS,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": "us-east-1",
    }
    command = [sys.executable, "-m", "deploy.ecs.deploy", *args]
    if vars_file is not None:
        command += ["--vars", str(vars_file)]
    return subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def vars_file(tmp_path: Path) -> Path:
    path = tmp_path / "vars.json"
    # The shape of `terraform output -json` (all outputs) is accepted as well as the bare map.
    path.write_text(json.dumps({"task_template_vars": {"value": TEMPLATE_VARS, "type": "object"}}))
    return path


def test_deploy_registers_a_revision_and_points_the_service_at_it(
    endpoint: str, ecs_service: tuple[Any, str, str, str], vars_file: Path
) -> None:
    ecs, cluster, service, first = ecs_service
    completed = run_deploy(
        endpoint, "--cluster", cluster, "--service", service, "--image-tag", "4d5e6f7",
        "--delay", "1", "--max-attempts", "10", vars_file=vars_file,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    outcome = json.loads(completed.stdout)
    assert outcome["previous"] == first
    new = outcome["taskDefinitionArn"]
    assert new != first
    assert new.startswith("arn:aws:ecs:us-east-1:")
    assert int(new.rsplit(":", 1)[1]) > int(first.rsplit(":", 1)[1])
    described = ecs.describe_services(cluster=cluster, services=[service])["services"][0]
    assert described["taskDefinition"] == new
    task = ecs.describe_task_definition(taskDefinition=new)["taskDefinition"]
    worker = next(c for c in task["containerDefinitions"] if c["name"] == "worker")
    assert worker["image"].endswith(":4d5e6f7")
    assert worker["resourceRequirements"] == [{"type": "GPU", "value": "1"}]

    # Rollback: point the service back at the first revision.
    completed = run_deploy(
        endpoint, "--cluster", cluster, "--service", service, "--revision", first,
        "--delay", "1", "--max-attempts", "10",
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    described = ecs.describe_services(cluster=cluster, services=[service])["services"][0]
    assert described["taskDefinition"] == first


def test_deploy_fails_with_one_clear_line(
    endpoint: str, ecs_service: tuple[Any, str, str, str], vars_file: Path
) -> None:
    ecs, cluster, _service, first = ecs_service
    completed = run_deploy(
        endpoint, "--cluster", cluster, "--service", "no-such-service", "--image-tag", "v2",
        vars_file=vars_file,
    )  # fmt: skip
    assert completed.returncode == 1
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("deploy: error: service 'no-such-service'")
    family = ecs.list_task_definitions(familyPrefix="image-worker")["taskDefinitionArns"]
    assert first in family

    completed = run_deploy(
        endpoint, "--cluster", cluster, "--service", "image-worker", "--image-tag", "v2"
    )
    assert completed.returncode == 1
    assert completed.stderr.strip().startswith("deploy: error: template placeholders without")
    assert "Traceback" not in completed.stderr
