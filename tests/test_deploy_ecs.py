"""deploy/ecs: the rendered task definition is valid for botocore's ECS model and speaks the
worker's settings; the deploy script rolls a new revision out on moto's ECS server, rolls back,
and fails with one clear line."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import botocore.session
import pytest
from botocore.validate import validate_parameters

from deploy.ecs.deploy import DeployError, render
from devstack.stack import FAKE_CREDENTIALS, moto_server
from tests.helpers import setting_names
from worker.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_ecs.type_defs import NetworkConfigurationTypeDef

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
    "SECRETS": [
        {
            "name": "DATABASE_URL",
            "valueFrom": f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:db-url-AbCdEf",
        }
    ],
    "COMPUTE": "gpu",
    "SOURCE_BUCKET": "book-photos",
    "SOURCE_PREFIX": "books/",
    "SQS_QUEUE_URL": f"https://sqs.us-east-1.amazonaws.com/{ACCOUNT}/image-worker-jobs",
    "RESULT_BUCKET": "book-photos",
    "RESULT_PREFIX": "cutouts/",
    "EVENTS_TOPIC_ARN": "",  # events_topic_enabled = false
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
    "FARGATE_CPU": 2048,
    "FARGATE_MEMORY": 4096,
    "ADOT_IMAGE": "public.ecr.aws/aws-observability/aws-otel-collector:v0.43.3",
    "ADOT_CONFIG": "",
    "EXTRA_ENVIRONMENT": {},
}


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
    names = setting_names(Settings.from_env)
    assert set(env) <= names, sorted(set(env) - names)
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


def test_cpu_template_is_a_fargate_task_with_the_same_settings() -> None:
    values = {**TEMPLATE_VARS, "COMPUTE": "cpu"}
    task = render("v1-cpu", values, template=REPO / "deploy/ecs/task-definition-cpu.json")
    validate_parameters(task, register_shape())
    assert task["requiresCompatibilities"] == ["FARGATE"]
    assert (task["cpu"], task["memory"]) == ("2048", "4096")
    container = worker_container(task)
    assert "resourceRequirements" not in container
    assert container["linuxParameters"] == {"capabilities": {"drop": ["ALL"]}}  # no tmpfs
    assert "dockerSecurityOptions" not in container  # Fargate rejects it
    assert container["mountPoints"] == [
        {"sourceVolume": "tmp", "containerPath": "/tmp", "readOnly": False}
    ]
    env = {item["name"]: item["value"] for item in container["environment"]}
    assert (env["EXECUTION_PROVIDER"], env["REQUIRE_GPU"]) == ("cpu", "false")
    gpu = {i["name"] for i in worker_container(render("v1", TEMPLATE_VARS))["environment"]}
    assert set(env) == gpu


def test_rds_json_secret_renders_one_variable_per_json_key() -> None:
    arn = TEMPLATE_VARS["DATABASE_URL_SECRET_ARN"]
    values = {
        **TEMPLATE_VARS,
        "SECRETS": [
            {"name": "PGPASSWORD", "valueFrom": f"{arn}:password::"},
            {"name": "PGUSER", "valueFrom": f"{arn}:username::"},
        ],
        "EXTRA_ENVIRONMENT": {"DATABASE_URL": "postgresql://db.internal:5432/images"},
    }
    task = render("v1", values)
    validate_parameters(task, register_shape())
    container = worker_container(task)
    assert [s["name"] for s in container["secrets"]] == ["PGPASSWORD", "PGUSER"]
    env = {item["name"]: item["value"] for item in container["environment"]}
    assert env["DATABASE_URL"] == "postgresql://db.internal:5432/images"


def test_selfcheck_verdict_reads_the_container_exit_code() -> None:
    """A pure unit on describe_tasks-shaped data: moto always reports exit code 0."""
    from deploy.ecs.deploy import selfcheck_problem

    passed = {"lastStatus": "STOPPED", "containers": [{"name": "worker", "exitCode": 0}]}
    assert selfcheck_problem(passed, "worker") is None
    failed = {
        "lastStatus": "STOPPED",
        "stopCode": "EssentialContainerExited",
        "stoppedReason": "Essential container in task exited",
        "containers": [{"name": "worker", "exitCode": 3}],
    }
    assert selfcheck_problem(failed, "worker") == (
        "exit 3 (EssentialContainerExited; Essential container in task exited)"
    )
    never = {
        "lastStatus": "STOPPED",
        "stopCode": "TaskFailedToStart",
        "stoppedReason": "CannotPullContainerError: image not found",
        "containers": [{"name": "worker"}],
    }
    assert selfcheck_problem(never, "worker") == (
        "never started (TaskFailedToStart; CannotPullContainerError: image not found)"
    )


class ScriptedEcs:
    """A pure-unit stand-in for the ECS calls deploy() makes, replaying rollout states.
    (moto computes rolloutState once, at create_service, so it cannot show FAILED.)"""

    def __init__(self, rollouts: dict[str, list[str]]) -> None:
        self.task_definition = "family:1"
        self.rollouts = rollouts
        self.updates: list[str] = []
        self.tagged: list[str] = []

    def describe_services(self, cluster: str, services: list[str]) -> dict[str, Any]:
        states = self.rollouts[self.task_definition]
        state = states.pop(0) if len(states) > 1 else states[0]
        deployment = {"status": "PRIMARY", "taskDefinition": self.task_definition,
                      "rolloutState": state, "rolloutStateReason": f"{state} reason"}  # fmt: skip
        return {"services": [{"status": "ACTIVE", "taskDefinition": self.task_definition,
                              "deployments": [deployment]}]}  # fmt: skip

    def register_task_definition(self, **task: Any) -> dict[str, Any]:
        return {"taskDefinition": {"taskDefinitionArn": "family:2"}}

    def update_service(self, cluster: str, service: str, taskDefinition: str) -> None:
        self.updates.append(taskDefinition)
        self.task_definition = taskDefinition

    def tag_resource(self, resourceArn: str, tags: list[dict[str, str]]) -> None:
        self.tagged.append(resourceArn)


def test_failed_rollout_restores_the_previous_revision_and_waits_for_it() -> None:
    from deploy.ecs.deploy import RolloutFailed, Timing, deploy

    ecs = ScriptedEcs({"family:2": ["IN_PROGRESS", "FAILED"],
                       "family:1": ["IN_PROGRESS", "COMPLETED"]})  # fmt: skip
    with pytest.raises(
        RolloutFailed, match=r"rollout FAILED: FAILED reason; rolled back to family:1$"
    ):
        deploy(ecs, cluster="c", service="s", task_definition={"family": "family"},
               selfcheck=None, timing=Timing(delay=0, timeout=5), sleep=lambda _: None)  # fmt: skip
    assert ecs.updates == ["family:2", "family:1"]
    assert ecs.task_definition == "family:1"


def test_rollout_timeout_rolls_back_and_says_when_the_rollback_is_stuck_too() -> None:
    from deploy.ecs.deploy import RolloutFailed, Timing, deploy

    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    ecs = ScriptedEcs({"family:2": ["IN_PROGRESS"], "family:1": ["IN_PROGRESS"]})
    with pytest.raises(RolloutFailed, match="back on family:1 but that rollout did not complete"):
        deploy(ecs, cluster="c", service="s", task_definition={"family": "family"},
               selfcheck=None, timing=Timing(delay=10, timeout=60), sleep=sleep,
               clock=lambda: now[0])  # fmt: skip
    assert ecs.updates == ["family:2", "family:1"]
    assert now[0] == 120  # two bounded waits of 60 s


# ---------------------------------------------------------------------------------------------
# End to end on moto's server
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_server() as url:
        yield url


CPU_VARS = {**TEMPLATE_VARS, "COMPUTE": "cpu"}
# moto's container instances register 7482 MiB whatever the type: a GPU task that fits.
GPU_VARS = {**TEMPLATE_VARS, "TASK_MEMORY": 4096}


@dataclass
class Service:
    ecs: Any
    cluster: str
    name: str
    first: str


def make_service(endpoint: str, *, desired: int, compute: str) -> Service:
    """A cluster with a service on a first revision, placed like the module's (awsvpc)."""
    ecs = boto3.client("ecs", endpoint_url=endpoint, region_name="us-east-1")
    ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name="us-east-1")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})  # moto's ENI needs it
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName=f"t{os.urandom(3).hex()}", Description="t",
                                      VpcId=vpc)["GroupId"]  # fmt: skip
    cluster = f"cluster-{os.urandom(3).hex()}"
    ecs.create_cluster(clusterName=cluster)
    if compute == "gpu":  # one container instance for EC2 placement (moto registers 7482 MiB)
        instance = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1,
                                     InstanceType="g4dn.xlarge", SubnetId=subnet)  # fmt: skip
        instance_id = instance["Instances"][0]["InstanceId"]
        # moto's own identity-document helper fails on its InstancePlacement: write it here.
        document = {"instanceId": instance_id, "region": "us-east-1",
                    "availabilityZone": "us-east-1a", "instanceType": "g4dn.xlarge"}  # fmt: skip
        ecs.register_container_instance(
            cluster=cluster, instanceIdentityDocument=json.dumps(document)
        )
    values = CPU_VARS if compute == "cpu" else GPU_VARS
    template = REPO / ("deploy/ecs/task-definition-cpu.json" if compute == "cpu"
                       else "deploy/ecs/task-definition.json")  # fmt: skip
    first = ecs.register_task_definition(**render("first", values, template=template))
    first_arn = first["taskDefinition"]["taskDefinitionArn"]
    network: NetworkConfigurationTypeDef = {
        "awsvpcConfiguration": {
            "subnets": [subnet], "securityGroups": [group], "assignPublicIp": "DISABLED"
        }
    }  # fmt: skip
    # moto sets rolloutState once, here: COMPLETED when MOTO_ECS_SERVICE_RUNNING (0) covers the
    # desired count, IN_PROGRESS for ever otherwise.
    ecs.create_service(
        cluster=cluster, serviceName="image-worker", taskDefinition=first_arn,
        desiredCount=desired, launchType="FARGATE" if compute == "cpu" else "EC2",
        networkConfiguration=network,
    )  # fmt: skip
    return Service(ecs, cluster, "image-worker", first_arn)


@pytest.fixture
def ecs_service(endpoint: str) -> Iterator[tuple[Any, str, str, str]]:
    """A GPU service at 0 tasks; yields (client, cluster, service, first revision)."""
    service = make_service(endpoint, desired=0, compute="gpu")
    yield service.ecs, service.cluster, service.name, service.first
    service.ecs.delete_service(cluster=service.cluster, service=service.name, force=True)


@pytest.fixture
def cpu_service(endpoint: str) -> Iterator[Service]:
    """A Fargate service at 0 tasks."""
    service = make_service(endpoint, desired=0, compute="cpu")
    yield service
    service.ecs.delete_service(cluster=service.cluster, service=service.name, force=True)


@pytest.fixture
def busy_cpu_service(endpoint: str) -> Iterator[Service]:
    """A Fargate service whose deployments never complete (2 desired, none running)."""
    service = make_service(endpoint, desired=2, compute="cpu")
    yield service
    service.ecs.delete_service(cluster=service.cluster, service=service.name, force=True)


def run_deploy(
    endpoint: str, *args: str, vars_file: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        **FAKE_CREDENTIALS,
        "AWS_ENDPOINT_URL": endpoint,
    }
    env.pop("AWS_REGION", None)  # the region comes from the vars file (or --region)
    env.pop("AWS_DEFAULT_REGION", None)
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
    path.write_text(json.dumps({"task_template_vars": {"value": GPU_VARS, "type": "object"}}))
    return path


@pytest.fixture
def cpu_vars_file(tmp_path: Path) -> Path:
    path = tmp_path / "cpu-vars.json"
    path.write_text(json.dumps(CPU_VARS))
    return path


@pytest.mark.slow  # a rollout waited on through moto's ECS
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
    # The selfcheck ran that revision once on the EC2 capacity, like the service's tasks.
    (check,) = selfcheck_tasks(Service(ecs, cluster, service, first))
    assert check["taskDefinitionArn"] == new
    assert check["launchType"] == "EC2"
    assert check["containerInstanceArn"]

    # Rollback: point the service back at the first revision.
    completed = run_deploy(
        endpoint, "--cluster", cluster, "--service", service, "--revision", first,
        "--delay", "1", "--max-attempts", "10", "--skip-selfcheck",
    )  # fmt: skip
    assert completed.returncode == 1
    assert completed.stderr.strip() == (
        "deploy: error: no AWS region: pass --region, AWS_REGION in --vars, or set AWS_REGION"
    )
    completed = run_deploy(
        endpoint, "--cluster", cluster, "--service", service, "--revision", first,
        "--delay", "1", "--max-attempts", "10", "--skip-selfcheck", "--region", "us-east-1",
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


def selfcheck_tasks(service: Service) -> list[dict[str, Any]]:
    arns = service.ecs.list_tasks(cluster=service.cluster, startedBy="deploy-selfcheck")
    if not arns["taskArns"]:
        return []
    described = service.ecs.describe_tasks(cluster=service.cluster, tasks=arns["taskArns"])
    return list(described["tasks"])


@pytest.mark.slow  # a selfcheck task run and waited on through moto's ECS
def test_selfcheck_runs_the_new_revision_once_before_the_service_switches(
    endpoint: str, cpu_service: Service, cpu_vars_file: Path
) -> None:
    completed = run_deploy(
        endpoint, "--cluster", cpu_service.cluster, "--service", cpu_service.name,
        "--image-tag", "v2-cpu", "--delay", "1", "--max-attempts", "10", vars_file=cpu_vars_file,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    new = json.loads(completed.stdout)["taskDefinitionArn"]
    log = completed.stderr
    assert (
        log.index("selfcheck") < log.index("passed") < log.index(f"service image-worker -> {new}")
    )
    (task,) = selfcheck_tasks(cpu_service)
    assert task["taskDefinitionArn"] == new
    assert task["overrides"]["containerOverrides"] == [
        {"name": "worker",
         "command": ["selfcheck", "--source-bucket", "book-photos", "--source-prefix", "books/"]}
    ]  # fmt: skip
    assert task["lastStatus"] == "STOPPED"
    assert task["launchType"] == "FARGATE"  # placed like the service's tasks
    described = cpu_service.ecs.describe_task_definition(taskDefinition=new)["taskDefinition"]
    assert described["requiresCompatibilities"] == ["FARGATE"]
    assert described["containerDefinitions"][0]["image"].endswith(":v2-cpu")


@pytest.fixture
def tasks_never_stop(endpoint: str) -> Iterator[None]:
    """moto's tasks advance one state per DescribeTasks; hold them in RUNNING instead."""
    hold = {"model_name": "ecs::task", "transition": {"progression": "manual", "times": 10_000}}
    assert moto_api(endpoint, "set-transition", hold) == 201
    yield
    moto_api(endpoint, "unset-transition", {"model_name": "ecs::task"})


def moto_api(endpoint: str, action: str, body: dict[str, Any]) -> int:
    request = urllib.request.Request(  # noqa: S310 - the loopback moto server
        f"{endpoint}/moto-api/state-manager/{action}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback moto
        return int(response.status)


@pytest.mark.slow  # waits out the selfcheck timeout
def test_a_selfcheck_that_does_not_finish_leaves_the_service_alone(
    endpoint: str, cpu_service: Service, cpu_vars_file: Path, tasks_never_stop: None
) -> None:
    completed = run_deploy(
        endpoint, "--cluster", cpu_service.cluster, "--service", cpu_service.name,
        "--image-tag", "hangs-cpu", "--delay", "1", "--selfcheck-timeout", "2",
        vars_file=cpu_vars_file,
    )  # fmt: skip
    assert completed.returncode == 1
    last = completed.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r"deploy: error: selfcheck of \S+ did not finish within 2s \(task \S+ stopped\); "
        r"the service was not changed",
        last,
    ), last
    described = cpu_service.ecs.describe_services(
        cluster=cpu_service.cluster, services=[cpu_service.name]
    )["services"][0]
    assert described["taskDefinition"] == cpu_service.first
    (task,) = selfcheck_tasks(cpu_service)
    assert task["desiredStatus"] == "STOPPED"  # the hung check is not left running


@pytest.mark.slow  # a rollout waited out, then its rollback
def test_a_rollout_that_never_completes_is_rolled_back_to_the_previous_revision(
    endpoint: str, busy_cpu_service: Service, cpu_vars_file: Path
) -> None:
    service = busy_cpu_service
    completed = run_deploy(
        endpoint, "--cluster", service.cluster, "--service", service.name,
        "--image-tag", "stuck-cpu", "--delay", "1", "--max-attempts", "2",
        vars_file=cpu_vars_file,
    )  # fmt: skip
    assert completed.returncode == 1
    last = completed.stderr.strip().splitlines()[-1]
    assert last.startswith("deploy: error: rollout of "), last
    assert "not COMPLETED within 2s (rollout IN_PROGRESS" in last
    # moto never moves rolloutState after create_service, so the restored revision's rollout
    # is reported as not completing either; what matters here is that it was restored.
    assert f"the service is back on {service.first}" in last
    described = service.ecs.describe_services(cluster=service.cluster, services=[service.name])
    assert described["services"][0]["taskDefinition"] == service.first


# ---------------------------------------------------------------------------------------------
# The recovery sweep ships with the worker; rollbacks to a revision that ran skip the selfcheck
# ---------------------------------------------------------------------------------------------
SWEEP_FAMILY = "image-worker-recovery"


@dataclass
class SweepSchedule:
    scheduler: Any
    name: str
    first: str

    def task_definition(self) -> str:
        schedule = self.scheduler.get_schedule(Name=self.name)
        return str(schedule["Target"]["EcsParameters"]["TaskDefinitionArn"])


def push(endpoint: str, *tags: str) -> None:
    """Images in moto's ECR repository `image-worker` (what `podman push` would leave)."""
    ecr = boto3.client("ecr", endpoint_url=endpoint, region_name="us-east-1")
    with contextlib.suppress(ecr.exceptions.RepositoryAlreadyExistsException):
        ecr.create_repository(repositoryName="image-worker")
    for tag in tags:
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution."
                    "manifest.v2+json", "config": {"digest": f"sha256:{os.urandom(32).hex()}",
                    "size": 1, "mediaType": "application/vnd.docker.container.image.v1+json"},
                    "layers": []}  # fmt: skip
        ecr.put_image(repositoryName="image-worker", imageTag=tag,
                      imageManifest=json.dumps(manifest))  # fmt: skip


def make_sweep(endpoint: str, service: Service, tag: str = "first") -> SweepSchedule:
    """The sweep's task definition and schedule as recovery.tf makes them (image <tag>-sweep)."""
    push(endpoint, f"{tag}-sweep")
    scheduler = boto3.client("scheduler", endpoint_url=endpoint, region_name="us-east-1")
    repository = TEMPLATE_VARS["REPOSITORY_URL"]
    registered = service.ecs.register_task_definition(
        family=SWEEP_FAMILY, requiresCompatibilities=["FARGATE"], networkMode="awsvpc",
        cpu="256", memory="512", executionRoleArn=TEMPLATE_VARS["EXECUTION_ROLE_ARN"],
        containerDefinitions=[{
            "name": "recovery", "image": f"{repository}:{tag}-sweep", "essential": True,
            "entryPoint": ["/usr/bin/tini", "--", "image-jobs"], "command": ["sweep", "--emf"],
        }],
        tags=[{"key": "app", "value": SWEEP_FAMILY}],
    )  # fmt: skip
    first = registered["taskDefinition"]["taskDefinitionArn"]
    name = f"sweep-{os.urandom(3).hex()}"
    cluster_arn = service.ecs.describe_clusters(clusters=[service.cluster])["clusters"][0][
        "clusterArn"
    ]
    scheduler.create_schedule(
        Name=name, ScheduleExpression="rate(5 minutes)", FlexibleTimeWindow={"Mode": "OFF"},
        Description="image-jobs sweep",
        Target={
            "Arn": cluster_arn, "RoleArn": f"arn:aws:iam::{ACCOUNT}:role/sched",
            "EcsParameters": {"TaskDefinitionArn": first, "LaunchType": "FARGATE",
                              "TaskCount": 1, "PropagateTags": "TASK_DEFINITION"},
            "RetryPolicy": {"MaximumEventAgeInSeconds": 300, "MaximumRetryAttempts": 0},
        },
    )  # fmt: skip
    return SweepSchedule(scheduler, name, first)


def sweep_vars(tmp_path: Path, values: dict[str, Any], schedule: SweepSchedule) -> Path:
    path = tmp_path / "sweep-vars.json"
    path.write_text(json.dumps({**values, "RECOVERY_SCHEDULE_NAME": schedule.name}))
    return path


@pytest.mark.slow  # a rollout waited on through moto's ECS
def test_the_sweep_gets_the_same_tag_and_the_schedule_moves_with_the_service(
    endpoint: str, cpu_service: Service, tmp_path: Path
) -> None:
    sweep = make_sweep(endpoint, cpu_service)
    push(endpoint, "v2-cpu-sweep")
    completed = run_deploy(
        endpoint, "--cluster", cpu_service.cluster, "--service", cpu_service.name,
        "--image-tag", "v2-cpu", "--delay", "1", "--max-attempts", "10",
        vars_file=sweep_vars(tmp_path, CPU_VARS, sweep),
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    outcome = json.loads(completed.stdout)
    assert outcome["previousSweep"] == sweep.first
    assert sweep.task_definition() == outcome["sweepTaskDefinitionArn"] != sweep.first
    described = cpu_service.ecs.describe_task_definition(
        taskDefinition=outcome["sweepTaskDefinitionArn"], include=["TAGS"]
    )
    (container,) = described["taskDefinition"]["containerDefinitions"]
    assert container["image"] == f"{TEMPLATE_VARS['REPOSITORY_URL']}:v2-cpu-sweep"
    assert container["entryPoint"] == ["/usr/bin/tini", "--", "image-jobs"]
    assert described["taskDefinition"]["family"] == SWEEP_FAMILY
    assert {"key": "app", "value": SWEEP_FAMILY} in described["tags"]
    # The rest of the schedule is as it was (UpdateSchedule replaces the whole schedule).
    schedule = sweep.scheduler.get_schedule(Name=sweep.name)
    assert schedule["ScheduleExpression"] == "rate(5 minutes)"
    assert schedule["Target"]["EcsParameters"]["PropagateTags"] == "TASK_DEFINITION"
    assert schedule["Target"]["RetryPolicy"]["MaximumRetryAttempts"] == 0

    # Deploying the same tag again registers no new sweep revision.
    again = run_deploy(
        endpoint, "--cluster", cpu_service.cluster, "--service", cpu_service.name,
        "--image-tag", "v2-cpu", "--delay", "1", "--max-attempts", "10", "--skip-selfcheck",
        vars_file=sweep_vars(tmp_path, CPU_VARS, sweep),
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["sweepTaskDefinitionArn"] == outcome["sweepTaskDefinitionArn"]


@pytest.mark.slow  # a rollout waited out, then its rollback
def test_a_failed_rollout_rolls_the_sweep_back_with_the_service(
    endpoint: str, busy_cpu_service: Service, tmp_path: Path
) -> None:
    service = busy_cpu_service
    sweep = make_sweep(endpoint, service)
    push(endpoint, "stuck-cpu-sweep")
    completed = run_deploy(
        endpoint, "--cluster", service.cluster, "--service", service.name,
        "--image-tag", "stuck-cpu", "--delay", "1", "--max-attempts", "2",
        vars_file=sweep_vars(tmp_path, CPU_VARS, sweep),
    )  # fmt: skip
    assert completed.returncode == 1
    assert "sweep schedule" in completed.stderr
    assert f"restored to {sweep.first}" in completed.stderr
    assert sweep.task_definition() == sweep.first
    described = service.ecs.describe_services(cluster=service.cluster, services=[service.name])
    assert described["services"][0]["taskDefinition"] == service.first


@pytest.mark.slow  # three rollouts on moto's ECS
def test_a_rollback_to_a_revision_that_ran_skips_the_selfcheck_unless_forced(
    endpoint: str, cpu_service: Service, tmp_path: Path
) -> None:
    sweep = make_sweep(endpoint, cpu_service)
    push(endpoint, "v2-cpu-sweep", "never-cpu-sweep")
    vars_file = sweep_vars(tmp_path, CPU_VARS, sweep)
    common = ("--cluster", cpu_service.cluster, "--service", cpu_service.name,
              "--delay", "1", "--max-attempts", "10")  # fmt: skip
    deployed = run_deploy(endpoint, *common, "--image-tag", "v2-cpu", vars_file=vars_file)
    assert deployed.returncode == 0, deployed.stderr
    v2 = json.loads(deployed.stdout)["taskDefinitionArn"]
    assert len(selfcheck_tasks(cpu_service)) == 1

    # The first revision was the service's completed one when that deploy started: it ran.
    back = run_deploy(endpoint, *common, "--revision", cpu_service.first, vars_file=vars_file)
    assert back.returncode == 0, back.stderr
    assert f"{cpu_service.first} ran before: selfcheck skipped" in back.stderr
    assert len(selfcheck_tasks(cpu_service)) == 1  # no new one-off task
    # The sweep follows the worker's tag: back to `first-sweep` (a new revision with that image).
    image = cpu_service.ecs.describe_task_definition(taskDefinition=sweep.task_definition())[
        "taskDefinition"
    ]["containerDefinitions"][0]["image"]
    assert image.endswith(":first-sweep")

    forced = run_deploy(
        endpoint, *common, "--revision", v2, "--force-selfcheck", vars_file=vars_file
    )
    assert forced.returncode == 0, forced.stderr
    assert "selfcheck skipped" not in forced.stderr
    assert len(selfcheck_tasks(cpu_service)) == 2

    # A revision that was registered but never rolled out gets the selfcheck.
    never = cpu_service.ecs.register_task_definition(
        **render("never-cpu", CPU_VARS, template=REPO / "deploy/ecs/task-definition-cpu.json")
    )["taskDefinition"]["taskDefinitionArn"]
    checked = run_deploy(endpoint, *common, "--revision", never, vars_file=vars_file)
    assert checked.returncode == 0, checked.stderr
    assert "selfcheck skipped" not in checked.stderr
    assert len(selfcheck_tasks(cpu_service)) == 3


def test_a_deploy_without_a_sweep_schedule_says_the_sweep_is_not_updated(
    endpoint: str, cpu_service: Service, cpu_vars_file: Path
) -> None:
    completed = run_deploy(
        endpoint, "--cluster", cpu_service.cluster, "--service", cpu_service.name,
        "--image-tag", "v3-cpu", "--delay", "1", "--max-attempts", "10", "--skip-selfcheck",
        vars_file=cpu_vars_file,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert "the recovery sweep's image was not updated" in completed.stderr
    assert json.loads(completed.stdout)["sweepTaskDefinitionArn"] is None


def test_a_sweep_image_never_pushed_stops_the_deploy_before_anything_changes(
    endpoint: str, cpu_service: Service, tmp_path: Path
) -> None:
    sweep = make_sweep(endpoint, cpu_service)
    completed = run_deploy(
        endpoint, "--cluster", cpu_service.cluster, "--service", cpu_service.name,
        "--image-tag", "unpushed-cpu", "--delay", "1", "--max-attempts", "10",
        vars_file=sweep_vars(tmp_path, CPU_VARS, sweep),
    )  # fmt: skip
    assert completed.returncode == 1
    lines = completed.stderr.strip().splitlines()
    assert lines[-1] == (
        f"deploy: error: {TEMPLATE_VARS['REPOSITORY_URL']}:unpushed-cpu-sweep is not in the "
        "repository: push the Dockerfile's `sweep` target under that tag with the worker's "
        "(docs/deploy.md); nothing was changed"
    )
    assert selfcheck_tasks(cpu_service) == []  # stopped before the gate
    assert sweep.task_definition() == sweep.first
    described = cpu_service.ecs.describe_services(
        cluster=cpu_service.cluster, services=[cpu_service.name]
    )["services"][0]
    assert described["taskDefinition"] == cpu_service.first
