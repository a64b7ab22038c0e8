"""terraform/recovery.tf, read with python-hcl2 (checkov scans it with the rest of the module in
tests/test_deploy_terraform.py): the schedule runs `image-jobs sweep --emf` as a Fargate task in
this cluster; the scheduler's role may run only that task family and pass only its two roles; the
sweep's task role grants exactly the SQS operations a real sweep calls (recorded from botocore
against moto, not read from the source); its environment names are the producer's settings; the
alarms watch the metrics the sweep's EMF line declares."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from api_client.client import ClientSettings, JobClient
from api_client.recovery import EMF_NAMESPACE, SweepReport, SweepSettings
from jobcore.recovery_queries import UnsentBacklog
from tests.conftest import Aws
from tests.helpers import setting_names
from tests.terraform_module import REPO, TERRAFORM, Module, block, policy_statements, resolve


@pytest.fixture(scope="module")
def module() -> Module:
    return Module(TERRAFORM)


def container(module: Module) -> dict[str, Any]:
    container: dict[str, Any] = module.locals["recovery_container"]
    return container


def test_recovery_lives_in_its_own_file_with_its_variables_and_outputs(module: Module) -> None:
    content = module.files["recovery.tf"]
    names = {name for variable in content["variable"] for name in variable}
    assert {
        "enable_recovery_sweep", "recovery_schedule_minutes", "recovery_grace_seconds",
        "recovery_pending_after_seconds", "recovery_max_per_pass", "recovery_max_per_second",
        "sweep_image", "recovery_alarm_queue_failed_seconds",
    } == names  # fmt: skip
    for name in names:
        body = module.variables[name]
        if "number" in str(body["type"]) or name == "sweep_image":
            assert body.get("validation"), name
    outputs = {name for output in content["output"] for name in output}
    assert outputs == {
        "recovery_schedule_name", "recovery_task_definition_arn", "recovery_task_role_arn",
        "recovery_task_definition_family",
    }  # fmt: skip


def test_defaults_match_the_library(module: Module) -> None:
    defaults = SweepSettings()
    assert module.variables["recovery_grace_seconds"]["default"] == defaults.grace_seconds
    assert (
        module.variables["recovery_pending_after_seconds"]["default"]
        == defaults.pending_after_seconds
    )
    assert module.variables["recovery_max_per_pass"]["default"] == defaults.max_per_pass
    assert module.variables["recovery_max_per_second"]["default"] == defaults.max_per_second


def test_the_schedule_runs_the_sweep_task_on_fargate_in_this_cluster(module: Module) -> None:
    schedule = module.resource("aws_scheduler_schedule", "recovery")
    assert "rate(" in schedule["schedule_expression"]
    assert "var.recovery_schedule_minutes" in schedule["schedule_expression"]
    assert block(schedule, "flexible_time_window")["mode"] == "OFF"
    target = block(schedule, "target")
    assert target["arn"] == "${aws_ecs_cluster.this.arn}"
    assert target["role_arn"] == "${aws_iam_role.scheduler[0].arn}"
    ecs = block(target, "ecs_parameters")
    # Terraform's own revision at first; deploy.py then moves the target to each release's sweep
    # revision (image <tag>-sweep) and back on a rollback, which a later apply must not undo.
    assert ecs["task_definition_arn"] == "${aws_ecs_task_definition.recovery[0].arn}"
    assert block(schedule, "lifecycle")["ignore_changes"] == [
        "${target[0].ecs_parameters[0].task_definition_arn}"
    ]
    assert ecs["launch_type"] == "FARGATE"
    assert ecs["task_count"] == 1
    network = block(ecs, "network_configuration")
    assert network["subnets"] == "${var.subnet_ids}"
    assert network["security_groups"] == ["${aws_security_group.tasks.id}"]
    assert network["assign_public_ip"] is False
    assert block(target, "retry_policy")["maximum_retry_attempts"] == 0


def test_the_task_runs_image_jobs_sweep_with_the_sweep_image_and_its_own_database_secret(
    module: Module,
) -> None:
    task = module.resource("aws_ecs_task_definition", "recovery")
    assert task["requires_compatibilities"] == ["FARGATE"]
    assert task["network_mode"] == "awsvpc"
    assert (task["cpu"], task["memory"]) == ("256", "512")
    assert task["execution_role_arn"] == "${aws_iam_role.execution.arn}"
    assert task["task_role_arn"] == "${aws_iam_role.recovery[0].arn}"
    assert task["container_definitions"] == "${jsonencode([local.recovery_container])}"
    worker = container(module)
    # The image's ENTRYPOINT is tini -> image-worker(-entrypoint): replaced, tini kept as PID 1.
    assert worker["entryPoint"] == ["/usr/bin/tini", "--", "image-jobs"]
    dockerfile = (REPO / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["/usr/bin/tini", "--", "image-worker-entrypoint"]' in dockerfile
    assert worker["command"] == ["sweep", "--emf"]
    assert worker["readonlyRootFilesystem"] is True
    assert worker["secrets"] == "${local.sweep_database_secrets}"
    # Hardened like the worker; Fargate takes no dockerSecurityOptions (no-new-privileges).
    assert worker["linuxParameters"] == {"capabilities": {"drop": ["ALL"]}}
    assert "dockerSecurityOptions" not in worker
    options = worker["logConfiguration"]["options"]
    assert options["awslogs-group"] == "${aws_cloudwatch_log_group.worker.name}"
    assert worker["logConfiguration"]["logDriver"] == "awslogs"  # EMF lines become metrics
    # The producer image deploy.py ships with each release, not the worker's CPU build.
    assert worker["image"] == "${local.sweep_image}"
    image = module.locals["sweep_image"]
    assert image == (
        '${coalesce(var.sweep_image, "${aws_ecr_repository.this.repository_url}:'
        '${trimsuffix(var.image_tag, "-cpu")}-sweep")}'
    )


def test_environment_names_are_the_producers_settings(module: Module) -> None:
    names = setting_names(ClientSettings.from_env, SweepSettings.from_env)
    assert {"SQS_QUEUE_URL", "DATABASE_URL", "SWEEP_GRACE_SECONDS", "SWEEP_MAX_PER_SECOND"} <= names
    merged = module.locals["recovery_environment"]
    assert merged.startswith("${merge(local.database_environment, {")
    set_here = set(re.findall(r"(\w+)\s*=", merged))
    assert set_here, merged
    assert set_here <= names, f"not read by the producer: {sorted(set_here - names)}"
    assert {
        "SQS_QUEUE_URL", "AWS_REGION", "SWEEP_GRACE_SECONDS", "SWEEP_PENDING_AFTER_SECONDS",
        "SWEEP_MAX_PER_PASS", "SWEEP_MAX_PER_SECOND",
    } <= set_here  # fmt: skip


async def sqs_operations_of_a_sweep(database_url: str, aws: Aws, db: asyncpg.Pool) -> set[str]:
    """Run one real sweep that takes both paths (a queue_failed row, a lost pending message) and
    record every AWS operation its clients call."""
    for status, idle in (("queue_failed", timedelta(minutes=5)), ("pending", timedelta(hours=1))):
        await db.execute(
            """INSERT INTO image_processing_jobs (id, source_bucket, source_key, status, updated_at)
               VALUES ($1, 'b', 'k', $2, now() - $3::interval)""",
            uuid.uuid4(),
            status,
            idle,
        )
    settings = ClientSettings(
        database_url=database_url,
        queue_url=aws.queue_url,
        source_bucket=None,
        aws_region="us-east-1",
        aws_endpoint_url=aws.endpoint,
    )
    called: set[str] = set()

    def record(model: Any, **_: Any) -> None:
        called.add(f"{model.service_model.service_name}:{model.name}")

    async with JobClient.connect(settings) as client:
        client.sqs.meta.events.register("before-call.*.*", record)
        assert client.s3 is not None
        client.s3.meta.events.register("before-call.*.*", record)
        report = await client.sweep(SweepSettings())
    assert (len(report.queue_failed_sent), len(report.pending_resent)) == (1, 1)
    return called


async def test_task_role_grants_exactly_what_a_real_sweep_calls(
    module: Module, database_url: str, aws: Aws, db: asyncpg.Pool
) -> None:
    called = await sqs_operations_of_a_sweep(database_url, aws, db)
    needed = {"sqs:" + name.split(":", 1)[1].removesuffix("Batch") for name in called}
    assert needed == {"sqs:SendMessage", "sqs:GetQueueAttributes"}, called
    document = module.data["aws_iam_policy_document"]["recovery"]
    statements = {s["sid"]: s for s in policy_statements(document)}
    assert set(statements) == {"ResendJobs", "QueueKey"}
    granted = set(resolve(module, statements["ResendJobs"]["actions"]))
    assert granted == needed
    assert statements["ResendJobs"]["resources"] == ["${aws_sqs_queue.jobs.arn}"]
    assert statements["QueueKey"]["resources"] == ["${var.queue_kms_key_arn}"]
    role = module.resource("aws_iam_role", "recovery")
    assert role["assume_role_policy"] == "${data.aws_iam_policy_document.ecs_tasks_assume.json}"


def test_scheduler_role_runs_only_this_task_and_passes_only_its_roles(module: Module) -> None:
    assume = module.data["aws_iam_policy_document"]["scheduler_assume"]
    (trust,) = list(policy_statements(assume))
    assert block(trust, "principals")["identifiers"] == ["scheduler.amazonaws.com"]
    assert block(trust, "condition")["variable"] == "aws:SourceAccount"
    policy = module.data["aws_iam_policy_document"]["scheduler"]
    statements = {s["sid"]: s for s in policy_statements(policy)}
    assert set(statements) == {"RunTheSweepTask", "TagTheSweepTask", "PassTheSweepRoles"}
    # propagate_tags: RunTask tags the task, authorised as ecs:TagResource on it.
    schedule = module.resource("aws_scheduler_schedule", "recovery")
    assert block(block(schedule, "target"), "ecs_parameters")["propagate_tags"] == (
        "TASK_DEFINITION"
    )
    tag = statements["TagTheSweepTask"]
    assert tag["actions"] == ["ecs:TagResource"]
    assert tag["resources"] == [
        "arn:${local.partition}:ecs:${local.region}:${local.account_id}:task/"
        "${aws_ecs_cluster.this.name}/*"
    ]
    assert block(tag, "condition")["values"] == ["RunTask"]
    run = statements["RunTheSweepTask"]
    assert run["actions"] == ["ecs:RunTask"]
    assert run["resources"] == ["${aws_ecs_task_definition.recovery[0].arn_without_revision}:*"]
    assert block(run, "condition")["values"] == ["${aws_ecs_cluster.this.arn}"]
    passing = statements["PassTheSweepRoles"]
    assert passing["actions"] == ["iam:PassRole"]
    assert passing["resources"] == [
        "${aws_iam_role.execution.arn}",
        "${aws_iam_role.recovery[0].arn}",
    ]
    assert block(passing, "condition")["values"] == ["ecs-tasks.amazonaws.com"]
    attached = module.resource("aws_iam_role_policy", "scheduler")
    assert attached["role"] == "${aws_iam_role.scheduler[0].id}"
    for statement in statements.values():
        assert "*" not in statement["resources"]


def test_alarms_watch_the_metrics_the_sweep_logs(module: Module) -> None:
    assert module.locals["recovery_metric_namespace"] == EMF_NAMESPACE
    report = SweepReport(backlog=UnsentBacklog(0, None, 0, None))
    document = report.emf("image-worker-jobs")
    (directive,) = document["_aws"]["CloudWatchMetrics"]
    declared = {metric["Name"] for metric in directive["Metrics"]}
    assert directive["Dimensions"] == [["QueueName"]]

    stuck = module.resource("aws_cloudwatch_metric_alarm", "queue_failed_stuck")
    running = module.resource("aws_cloudwatch_metric_alarm", "sweep_not_running")
    for alarm in (stuck, running):
        assert alarm["namespace"] == "${local.recovery_metric_namespace}"
        assert alarm["metric_name"] in declared
        assert alarm["dimensions"] == {"QueueName": "${aws_sqs_queue.jobs.name}"}
        assert alarm["alarm_actions"] == "${local.alarm_actions}"
    assert stuck["metric_name"] == "OldestQueueFailedAgeSeconds"
    assert stuck["threshold"] == "${var.recovery_alarm_queue_failed_seconds}"
    assert stuck["comparison_operator"] == "GreaterThanThreshold"
    # No sweep report at all (schedule broken, task failing to start) is the other alarm.
    assert running["metric_name"] == "SweepPasses"
    assert (running["statistic"], running["comparison_operator"]) == ("Sum", "LessThanThreshold")
    assert running["treat_missing_data"] == "breaching"


def test_checkov_skips_in_recovery_are_justified() -> None:
    text = (TERRAFORM / "recovery.tf").read_text()
    skips = re.findall(r"#checkov:skip=(CKV2?_AWS_\d+):(.*)", text)
    assert [check for check, _ in skips] == ["CKV_AWS_297"]
    assert all(len(reason.strip()) >= 30 for _, reason in skips)
