"""terraform/: checkov finds nothing (skips justified inline), and python-hcl2 reads the wiring:
redrive targets the DLQ, autoscaling reads this queue, the task role covers every SQS call the
worker makes, the container environment speaks the worker's settings names, and the deploy
template agrees with the module."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import setting_names
from tests.terraform_module import (
    DEPLOY_TEMPLATES,
    EXAMPLE,
    REPO,
    TERRAFORM,
    Module,
    block,
    blocks,
    policy_statements,
    resolve,
)
from worker.settings import Settings

CHECKOV = REPO / ".tools" / "checkov" / "bin" / "checkov"


@pytest.fixture(scope="module")
def module() -> Module:
    return Module(TERRAFORM)


# ---------------------------------------------------------------------------------------------
# What the worker actually reads and calls
# ---------------------------------------------------------------------------------------------
def worker_sqs_calls() -> set[str]:
    """`sqs.<method>(` calls in worker/*.py and in the jobcore modules the worker imports (the
    daemon; the dev stack's queue setup lives outside both)."""
    sources = sorted((REPO / "worker").glob("*.py"))
    core = {
        m for p in sources for m in re.findall(r"^from jobcore\.(\w+) import", p.read_text(), re.M)
    }
    assert "queues" in core, core  # DLQ discovery and queue depth
    sources += [REPO / "jobcore" / f"{module}.py" for module in sorted(core)]
    calls: set[str] = set()
    for path in sources:
        calls.update(re.findall(r"\bsqs\.([a-z_]+)\(", path.read_text()))
    assert {"receive_message", "get_queue_url"} <= calls, calls
    return calls


def iam_action(method: str) -> str:
    """boto3 method -> the IAM action that authorises it. SQS batch calls are authorised by the
    single-message action (there is no sqs:DeleteMessageBatch in IAM)."""
    action = "".join(part.capitalize() for part in method.split("_"))
    return "sqs:" + action.removesuffix("Batch")


def test_iam_action_mapping() -> None:
    assert iam_action("delete_message_batch") == "sqs:DeleteMessage"
    assert iam_action("change_message_visibility_batch") == "sqs:ChangeMessageVisibility"
    assert iam_action("get_queue_attributes") == "sqs:GetQueueAttributes"


# ---------------------------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------------------------
def test_standard_module_layout() -> None:
    for name in (
        "versions.tf", "variables.tf", "outputs.tf", "main.tf", "sqs.tf", "ecr.tf",
        "ecs_cluster.tf", "capacity.tf", "task.tf", "service.tf", "autoscaling.tf", "iam.tf",
        "security.tf", "logs.tf", "alarms.tf",
    ):  # fmt: skip
        assert (TERRAFORM / name).is_file(), name
    for name in ("main.tf", "variables.tf", "outputs.tf", "versions.tf"):
        assert (EXAMPLE / name).is_file(), f"examples/complete/{name}"


def test_every_variable_is_typed_described_and_ranges_validated(module: Module) -> None:
    for name, body in module.variables.items():
        assert "type" in body, f"variable {name} has no type"
        assert len(str(body.get("description", ""))) > 10, f"variable {name} has no description"
        if "number" in str(body["type"]):
            assert body.get("validation"), f"number variable {name} has no validation block"


def test_example_calls_the_module_with_every_required_variable(module: Module) -> None:
    example = Module(EXAMPLE)
    call = example.modules["image_worker"]
    assert call["source"] == "../.."
    required = {name for name, body in module.variables.items() if "default" not in body}
    assert required, "expected required variables (vpc_id, subnet_ids, ...)"
    assert required <= set(call), f"example misses {sorted(required - set(call))}"
    assert set(call) - {"source"} <= set(module.variables), "example passes unknown variables"


# ---------------------------------------------------------------------------------------------
# Queue
# ---------------------------------------------------------------------------------------------
def test_redrive_targets_the_dlq_with_the_max_receive_count_variable(module: Module) -> None:
    jobs = module.resource("aws_sqs_queue", "jobs")
    policy = jobs["redrive_policy"]
    assert re.search(r"deadLetterTargetArn\s*=\s*aws_sqs_queue\.dlq\.arn", policy), policy
    assert re.search(r"maxReceiveCount\s*=\s*var\.max_receive_count", policy), policy
    allow = module.resource("aws_sqs_queue_redrive_allow_policy", "dlq")
    assert allow["queue_url"] == "${aws_sqs_queue.dlq.id}"
    assert "aws_sqs_queue.jobs.arn" in allow["redrive_allow_policy"]


def test_queues_are_encrypted_and_long_polled(module: Module) -> None:
    for name in ("jobs", "dlq"):
        queue = module.resource("aws_sqs_queue", name)
        assert queue["receive_wait_time_seconds"] == 20
        assert "sqs_managed_sse_enabled" in queue
        assert "kms_master_key_id" in queue


def test_visibility_timeout_exceeds_heartbeat(module: Module) -> None:
    variables = module.variables
    assert (
        variables["visibility_timeout_seconds"]["default"]
        > variables["heartbeat_interval_seconds"]["default"]
    )
    jobs = module.resource("aws_sqs_queue", "jobs")
    assert jobs["visibility_timeout_seconds"] == "${var.visibility_timeout_seconds}"
    conditions = [p["condition"] for p in blocks(block(jobs, "lifecycle"), "precondition")]
    assert any(
        "var.visibility_timeout_seconds > var.heartbeat_interval_seconds" in c for c in conditions
    )


def test_alarms_watch_dlq_depth_and_oldest_message(module: Module) -> None:
    dlq = module.resource("aws_cloudwatch_metric_alarm", "dlq_depth")
    assert dlq["metric_name"] == "ApproximateNumberOfMessagesVisible"
    assert dlq["dimensions"] == {"QueueName": "${aws_sqs_queue.dlq.name}"}
    age = module.resource("aws_cloudwatch_metric_alarm", "oldest_message_age")
    assert age["metric_name"] == "ApproximateAgeOfOldestMessage"
    assert age["dimensions"] == {"QueueName": "${aws_sqs_queue.jobs.name}"}


# ---------------------------------------------------------------------------------------------
# Capacity, task, service
# ---------------------------------------------------------------------------------------------
def test_gpu_capacity_can_reach_zero_with_managed_scaling_and_protection(module: Module) -> None:
    ami = module.data["aws_ssm_parameter"]["ecs_gpu_ami"]
    # Amazon Linux 2023: the AL2 ECS GPU AMI went end of life on 2026-06-30.
    assert (
        ami["name"] == "/aws/service/ecs/optimized-ami/amazon-linux-2023/gpu/recommended/image_id"
    )
    # The recommended AMI is read once and kept (no launch-template roll on every plan) unless
    # gpu_ami_id pins one.
    kept = module.resource("terraform_data", "gpu_ami")
    assert kept["input"] == "${nonsensitive(data.aws_ssm_parameter.ecs_gpu_ami[0].value)}"
    assert block(kept, "lifecycle")["ignore_changes"] == ["input"]
    template = module.resource("aws_launch_template", "gpu")
    assert template["image_id"] == (
        "${coalesce(var.gpu_ami_id, one(terraform_data.gpu_ami[*].output))}"
    )
    assert "instance_type" not in template, "the types come from the mixed instances policy"
    asg = module.resource("aws_autoscaling_group", "gpu")
    assert asg["min_size"] == 0
    assert asg["protect_from_scale_in"] is True
    assert asg["force_delete"] is True, "destroy must not hang on protected instances"
    provider = block(
        module.resource("aws_ecs_capacity_provider", "gpu"), "auto_scaling_group_provider"
    )
    assert provider["auto_scaling_group_arn"] == "${aws_autoscaling_group.gpu[0].arn}"
    assert provider["managed_termination_protection"] == "ENABLED"
    assert block(provider, "managed_scaling")["status"] == "ENABLED"


def test_gpu_resources_exist_only_with_compute_gpu(module: Module) -> None:
    assert module.locals["gpu"] == '${var.compute == "gpu"}'
    for rtype, name in (
        ("aws_launch_template", "gpu"), ("aws_autoscaling_group", "gpu"),
        ("aws_ecs_capacity_provider", "gpu"), ("aws_iam_role", "instance"),
        ("aws_iam_instance_profile", "instance"), ("aws_security_group", "instances"),
    ):  # fmt: skip
        assert module.resource(rtype, name)["count"] == "${local.gpu ? 1 : 0}", f"{rtype}.{name}"


def test_instance_types_are_x86_64_like_the_ami_and_the_image(module: Module) -> None:
    condition = block(module.variables["instance_types"], "validation")["condition"]
    pattern = re.search(r'regex\("([^"]+)"', condition)
    assert pattern is not None, condition
    regex = pattern.group(1).replace("\\\\", "\\")
    for good in ("g4dn.xlarge", "g5.2xlarge", "g6.xlarge", "p4d.24xlarge"):
        assert re.fullmatch(regex, good), good
    for bad in ("g5g.xlarge", "g5g.16xlarge", "m7g.large", "c7i.large"):
        assert not re.fullmatch(regex, bad), bad


def test_rollout_at_full_scale_can_place_new_tasks(module: Module) -> None:
    """At max_tasks every instance the group may have is busy: with 100 % minimum healthy a
    rollout could start no new task and never finish. Either old tasks may go first (< 100 %) or
    the group has room beyond max_tasks; the defaults and a precondition hold that."""
    service = module.resource("aws_ecs_service", "worker")
    assert service["deployment_minimum_healthy_percent"] == (
        "${var.deployment_minimum_healthy_percent}"
    )
    variables = module.variables
    assert variables["deployment_minimum_healthy_percent"]["default"] < 100
    # The deploy gate (a one-off selfcheck task) needs a GPU instance beyond max_tasks, whatever
    # the minimum healthy percent: the defaults and a precondition hold that.
    assert variables["max_instances"]["default"] > variables["max_tasks"]["default"]
    asg = module.resource("aws_autoscaling_group", "gpu")
    conditions = [p["condition"] for p in blocks(block(asg, "lifecycle"), "precondition")]
    assert "${var.max_instances > var.max_tasks}" in conditions
    example = Module(EXAMPLE).modules["image_worker"]
    assert example["deployment_minimum_healthy_percent"] < 100
    assert example["max_tasks"] == "${var.max_tasks}"
    assert example["max_instances"] == "${var.max_tasks + 1}"


def test_fargate_option_runs_the_cpu_build_with_the_same_queue_and_scaling(
    module: Module,
) -> None:
    assert module.variables["compute"]["default"] == "gpu"
    assert module.locals["capacity_provider"] == (
        '${local.gpu ? one(aws_ecs_capacity_provider.gpu[*].name) : "FARGATE"}'
    )
    service = module.resource("aws_ecs_service", "worker")
    assert block(service, "capacity_provider_strategy")["capacity_provider"] == (
        "${local.capacity_provider}"
    )
    task = module.resource("aws_ecs_task_definition", "worker")
    assert task["requires_compatibilities"] == ['${local.gpu ? "EC2" : "FARGATE"}']
    assert task["cpu"] == "${local.gpu ? null : tostring(var.fargate_cpu)}"
    assert task["memory"] == "${local.gpu ? null : tostring(var.fargate_memory)}"
    assert task["network_mode"] == "awsvpc"
    managed = module.locals["worker_environment_managed"]
    assert managed["EXECUTION_PROVIDER"] == '${local.gpu ? "cuda" : "cpu"}'
    assert managed["REQUIRE_GPU"] == '${local.gpu ? "true" : "false"}'
    container = module.locals["worker_container"]
    assert container["resourceRequirements"] == (
        '${local.gpu ? [{type = "GPU", value = tostring(var.gpu_count)}] : null}'
    )
    # Fargate has no tmpfs: /tmp is a task volume there.
    assert container["linuxParameters"] == "${local.worker_linux_parameters}"
    assert container["mountPoints"] == "${local.tmp_mount_points}"
    # The CPU service scales and alarms on the same queue: nothing in autoscaling.tf or
    # alarms.tf depends on compute.
    for name in ("autoscaling.tf", "alarms.tf", "sqs.tf"):
        text = (TERRAFORM / name).read_text()
        assert "local.gpu" not in text, name
        assert "var.compute" not in text, name
    cpu = Module(EXAMPLE.parent / "cpu").modules["image_worker_cpu"]
    assert cpu["compute"] == "cpu"
    assert cpu["database_secret_format"] == "rds_json"  # noqa: S105 - a format name


def test_container_environment_names_are_worker_settings(module: Module) -> None:
    settings = setting_names(Settings.from_env)
    managed = module.locals["worker_environment_managed"]
    assert set(managed) <= settings, f"not worker settings: {sorted(set(managed) - settings)}"
    for name in ("SQS_QUEUE_URL", "RESULT_BUCKET", "RESULT_PREFIX", "WORKER_CONCURRENCY",
                 "MAX_ATTEMPTS", "VISIBILITY_TIMEOUT_SECONDS", "DRAIN_SECONDS", "METRICS_PORT",
                 "REQUIRE_GPU", "LOG_FORMAT", "AWS_REGION"):  # fmt: skip
        assert name in managed, name
    assert managed["MAX_ATTEMPTS"] == "${tostring(var.max_receive_count)}"
    assert managed["SQS_QUEUE_URL"] == "${aws_sqs_queue.jobs.url}"
    assert "DATABASE_URL" not in managed, "DATABASE_URL must come from Secrets Manager"
    # extra_environment's allow-list (a validation) names worker settings too.
    validation = block(module.variables["extra_environment"], "validation")
    allowed = set(re.findall(r"\"?([A-Z][A-Z0-9_]+)\"?", validation["condition"]))
    assert allowed
    assert allowed <= settings, sorted(allowed - settings)


def test_task_definition_gpu_secret_health_logs_and_stop_timeout(module: Module) -> None:
    container = module.locals["worker_container"]
    assert container["secrets"] == "${local.database_secrets}"
    assert container["healthCheck"]["command"] == ["CMD", "image-worker", "healthcheck"]
    assert container["logConfiguration"]["logDriver"] == "awslogs"
    assert container["stopTimeout"] == "${var.stop_timeout_seconds}"
    assert (
        module.variables["stop_timeout_seconds"]["default"]
        > module.variables["drain_seconds"]["default"]
    )
    task = module.resource("aws_ecs_task_definition", "worker")
    conditions = [p["condition"] for p in blocks(block(task, "lifecycle"), "precondition")]
    assert "${var.stop_timeout_seconds > var.drain_seconds}" in conditions
    assert task["execution_role_arn"] == "${aws_iam_role.execution.arn}"
    assert task["task_role_arn"] == "${aws_iam_role.task.arn}"
    assert "var.enable_metrics_sidecar ? [local.metrics_sidecar]" in task["container_definitions"]


def test_metrics_sidecar_remote_writes_to_amp(module: Module) -> None:
    assert module.variables["enable_metrics_sidecar"]["default"] is False
    config = module.locals["adot_config"]
    assert "prometheusremotewrite" in config
    assert "sigv4auth" in config
    assert "localhost:${var.metrics_port}" in config


def test_service_strategy_circuit_breaker_and_desired_count_left_to_autoscaling(
    module: Module,
) -> None:
    service = module.resource("aws_ecs_service", "worker")
    strategy = block(service, "capacity_provider_strategy")
    assert strategy["capacity_provider"] == "${local.capacity_provider}"
    breaker = block(service, "deployment_circuit_breaker")
    assert breaker["enable"] is True
    assert breaker["rollback"] is True
    assert "desired_count" in block(service, "lifecycle")["ignore_changes"]
    network = block(service, "network_configuration")
    assert network["assign_public_ip"] is False
    assert network["security_groups"] == ["${aws_security_group.tasks.id}"]


def asyncpg_environment_names() -> set[str]:
    """The PG* variables asyncpg itself reads when the URL lacks a part."""
    import asyncpg.connect_utils

    source = Path(asyncpg.connect_utils.__file__).read_text()
    return set(re.findall(r"os\.(?:getenv|environ\.get)\('(PG[A-Z]+)'", source))


def test_database_secret_is_a_url_or_an_rds_managed_json_secret(module: Module) -> None:
    locals_ = module.locals
    secrets = locals_["database_secrets"]
    # URL format: the whole secret is DATABASE_URL.
    assert secrets.endswith(
        ': [{name = "DATABASE_URL", valueFrom = local.database_url_secret_arn}]}'
    ), secrets
    # JSON format: one JSON key per variable, ECS's "<arn>:<json key>::" form.
    assert 'valueFrom = "${local.database_url_secret_arn}:${local.database_json_keys[name]}::"' in (
        secrets
    )
    keys = dict(re.findall(r'(PG[A-Z]+) = "(\w+)"', locals_["database_json_keys"]))
    assert keys == {
        "PGUSER": "username",
        "PGPASSWORD": "password",
        "PGHOST": "host",
        "PGPORT": "port",
        "PGDATABASE": "dbname",
    }
    # ... and those are the variables asyncpg fills a credential-less DATABASE_URL from.
    assert set(keys) <= asyncpg_environment_names(), asyncpg_environment_names()
    environment = locals_["database_environment"]
    assert '"postgresql://?${local.database_tls_query}"' in environment, (
        "the settings need a postgresql:// URL"
    )
    # TLS with the certificate checked against the RDS CA bundle the image carries.
    assert module.locals["database_tls_query"] == (
        "sslmode=${var.database_sslmode}&sslrootcert=${var.database_ca_bundle_path}"
    )
    assert module.variables["database_sslmode"]["default"] == "verify-full"
    assert module.variables["database_ca_bundle_path"]["default"] == (
        "/etc/ssl/certs/rds-global-bundle.pem"
    )
    assert "password" not in environment.lower()
    assert module.variables["database_secret_format"]["default"] == "url"
    task = module.resource("aws_ecs_task_definition", "worker")
    conditions = [p["condition"] for p in blocks(block(task, "lifecycle"), "precondition")]
    assert (
        '${var.database_secret_format == "url" || var.database_url_secret_arn != null}'
        in conditions
    )
    assert "local.database_environment" in locals_["worker_environment"]
    # The CKV2_AWS_57 skip now says the truth: URL secrets cannot be rotated by Secrets Manager.
    assert "rds_json" in (TERRAFORM / "secrets.tf").read_text().split("CKV2_AWS_57:")[1][:400]


def test_asyncpg_builds_the_connection_from_a_credential_less_url() -> None:
    from asyncpg.connect_utils import _parse_connect_dsn_and_args

    environ = {
        "PGHOST": "db.internal",
        "PGPORT": "5433",
        "PGUSER": "app",
        "PGPASSWORD": "s3cr:t@/x",
        "PGDATABASE": "images",
    }
    none: dict[str, Any] = dict.fromkeys(
        ("host", "port", "user", "password", "passfile", "database", "ssl", "service",
         "servicefile", "direct_tls", "server_settings", "target_session_attrs", "krbsrvname",
         "gsslib"),
    )  # fmt: skip
    saved = {name: os.environ.get(name) for name in environ}
    os.environ.update(environ)
    try:
        addresses, params = _parse_connect_dsn_and_args(dsn="postgresql://", **none)
        assert addresses == [("db.internal", 5433)]
        assert (params.user, params.password, params.database) == ("app", "s3cr:t@/x", "images")
        addresses, params = _parse_connect_dsn_and_args(dsn="postgresql://rds:5432/db", **none)
        assert addresses == [("rds", 5432)]
        assert (params.user, params.password, params.database) == ("app", "s3cr:t@/x", "db")
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# ---------------------------------------------------------------------------------------------
# Autoscaling
# ---------------------------------------------------------------------------------------------
def _metric_queries(metrics: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["id"]: m for m in metrics}


def _dimensions(metric: dict[str, Any]) -> dict[str, str]:
    dims = metric["dimensions"]
    if isinstance(dims, dict):
        return dims
    return {d["name"]: d["value"] for d in dims}


def test_scalable_target_goes_to_zero(module: Module) -> None:
    target = module.resource("aws_appautoscaling_target", "service")
    assert target["min_capacity"] == 0
    assert (
        target["resource_id"]
        == "service/${aws_ecs_cluster.this.name}/${aws_ecs_service.worker.name}"
    )
    for name, policy in module.resources["aws_appautoscaling_policy"].items():
        assert policy["resource_id"] == "${aws_appautoscaling_target.service.resource_id}", name


def test_target_tracking_reads_backlog_per_task_of_this_queue(module: Module) -> None:
    policy = module.resource("aws_appautoscaling_policy", "backlog_per_task")
    assert policy["policy_type"] == "TargetTrackingScaling"
    config = block(policy, "target_tracking_scaling_policy_configuration")
    assert config["target_value"] == "${local.backlog_per_task_target}"
    assert (
        "var.acceptable_wait_seconds / local.seconds_per_image"
        in module.locals["backlog_per_task_target"]
    )
    assert module.locals["seconds_per_image"] == (
        "${coalesce(var.seconds_per_image, local.gpu ? 0.25 : 0.55)}"
    )
    queries = _metric_queries(blocks(block(config, "customized_metric_specification"), "metrics"))
    visible = block(block(queries["visible"], "metric_stat"), "metric")
    assert visible["namespace"] == "AWS/SQS"
    assert visible["metric_name"] == "ApproximateNumberOfMessagesVisible"
    assert _dimensions(visible) == {"QueueName": "${aws_sqs_queue.jobs.name}"}
    in_flight = block(block(queries["in_flight"], "metric_stat"), "metric")
    assert in_flight["metric_name"] == "ApproximateNumberOfMessagesNotVisible"
    assert _dimensions(in_flight) == {"QueueName": "${aws_sqs_queue.jobs.name}"}
    # Divided by DESIRED tasks: tasks still cold-starting count at once, so the metric does not
    # stay inflated for the minutes a GPU task needs to start (no overshoot to max_tasks).
    desired = block(block(queries["desired"], "metric_stat"), "metric")
    assert desired["metric_name"] == "DesiredTaskCount"
    assert _dimensions(desired) == {
        "ClusterName": "${aws_ecs_cluster.this.name}",
        "ServiceName": "${aws_ecs_service.worker.name}",
    }
    returned = [q for q in queries.values() if q.get("return_data") is True]
    assert [q.get("expression") for q in returned] == ["(visible + in_flight) / desired"]


def test_scale_from_zero_and_to_zero_alarms_drive_step_policies(module: Module) -> None:
    from_zero = module.resource("aws_cloudwatch_metric_alarm", "messages_while_no_task")
    assert from_zero["alarm_actions"] == ["${aws_appautoscaling_policy.scale_from_zero.arn}"]
    queries = _metric_queries(blocks(from_zero, "metric_query"))
    assert _dimensions(block(queries["visible"], "metric")) == {
        "QueueName": "${aws_sqs_queue.jobs.name}"
    }
    assert "FILL(desired, 0) == 0" in queries["waiting_with_no_task"]["expression"]
    step = block(
        module.resource("aws_appautoscaling_policy", "scale_from_zero"),
        "step_scaling_policy_configuration",
    )
    # From zero straight to ceil(visible / target) tasks: one cold start, not 0 -> 1 -> N.
    assert step["adjustment_type"] == "ExactCapacity"
    bounded = block(block(step, "dynamic"), "step_adjustment")
    assert bounded["for_each"] == "${range(local.from_zero_steps - 1)}"
    content = block(bounded, "content")
    assert content["metric_interval_lower_bound"] == (
        "${step_adjustment.value * local.backlog_per_task_target}"
    )
    assert content["metric_interval_upper_bound"] == (
        "${(step_adjustment.value + 1) * local.backlog_per_task_target}"
    )
    assert content["scaling_adjustment"] == "${step_adjustment.value + 1}"
    last = block(step, "step_adjustment")
    assert "metric_interval_upper_bound" not in last
    assert last["scaling_adjustment"] == "${local.from_zero_steps}"
    assert module.locals["from_zero_steps"] == (
        "${min(var.max_tasks, var.scale_from_zero_max_tasks)}"
    )
    assert module.variables["scale_from_zero_max_tasks"]["default"] <= 19  # 20 steps at most

    idle = module.resource("aws_cloudwatch_metric_alarm", "queue_idle")
    assert idle["alarm_actions"] == ["${aws_appautoscaling_policy.scale_to_zero.arn}"]
    assert idle["treat_missing_data"] == "breaching"
    queries = _metric_queries(blocks(idle, "metric_query"))
    for name in ("visible", "in_flight"):
        assert _dimensions(block(queries[name], "metric")) == {
            "QueueName": "${aws_sqs_queue.jobs.name}"
        }
    step = block(
        module.resource("aws_appautoscaling_policy", "scale_to_zero"),
        "step_scaling_policy_configuration",
    )
    assert step["adjustment_type"] == "ExactCapacity"
    assert block(step, "step_adjustment")["scaling_adjustment"] == 0


# ---------------------------------------------------------------------------------------------
# IAM and network
# ---------------------------------------------------------------------------------------------
def test_task_role_sqs_actions_cover_what_the_worker_calls(module: Module) -> None:
    document = module.data["aws_iam_policy_document"]["task"]
    sqs = {
        statement["sid"]: statement
        for statement in policy_statements(document)
        if any("sqs:" in action for action in resolve(module, statement["actions"]))
    }
    assert set(sqs) == {"ConsumeThisQueue", "ReadDlqDepth"}
    granted = set(resolve(module, sqs["ConsumeThisQueue"]["actions"]))
    needed = {iam_action(method) for method in worker_sqs_calls()}
    needed |= {"sqs:GetQueueUrl", "sqs:GetQueueAttributes"}
    assert needed <= granted, f"task role lacks {sorted(needed - granted)}"
    assert sqs["ConsumeThisQueue"]["resources"] == ["${aws_sqs_queue.jobs.arn}"], "this queue only"
    assert not any("*" in action for action in granted)
    # The DLQ: read its depth (worker/queue_stats.py), never consume from it.
    dlq = sqs["ReadDlqDepth"]
    assert dlq["resources"] == ["${aws_sqs_queue.dlq.arn}"]
    assert set(resolve(module, dlq["actions"])) == {"sqs:GetQueueUrl", "sqs:GetQueueAttributes"}


def test_task_role_s3_is_scoped_to_prefixes_and_nothing_is_star(module: Module) -> None:
    document = module.data["aws_iam_policy_document"]["task"]
    by_action = {a: s for s in policy_statements(document) for a in resolve(module, s["actions"])}
    assert by_action["s3:GetObject"]["resources"] == ["${local.source_object_arn}"]
    assert by_action["s3:PutObject"]["resources"] == ["${local.result_object_arn}"]
    # s3:ListBucket on the source bucket: without it S3 answers a missing key with 403, and the
    # worker's permanent "missing object" path never fires on AWS.
    assert by_action["s3:ListBucket"]["resources"] == ["${local.source_bucket_arn}"]
    assert module.locals["source_bucket_arn"].endswith(":s3:::${var.source_bucket}")
    # No task scale-in protection: it kept old tasks alive through deployments under load.
    assert not any(action.startswith("ecs:") for action in by_action), sorted(by_action)
    assert module.locals["source_object_arn"].endswith("${var.source_bucket}/${var.source_prefix}*")
    assert module.locals["result_object_arn"].endswith(
        "${local.result_bucket}/${var.result_prefix}*"
    )
    for statement in policy_statements(document):
        assert "*" not in resolve(module, statement["resources"]), statement


def test_execution_role_reads_only_the_secret_and_star_only_where_unscopable(
    module: Module,
) -> None:
    document = module.data["aws_iam_policy_document"]["execution"]
    statements = list(policy_statements(document))
    secret = [s for s in statements if "secretsmanager:GetSecretValue" in s["actions"]]
    assert secret
    # The worker's secret and the sweep's (image_worker and image_producer), nothing else.
    assert secret[0]["resources"] == (
        "${distinct([local.database_url_secret_arn, local.sweep_database_url_secret_arn])}"
    )
    for statement in statements:
        if "*" in resolve(module, statement["resources"]):
            assert statement["actions"] == ["ecr:GetAuthorizationToken"], statement


def test_no_inbound_by_default_metrics_only_from_scraper_security_groups(module: Module) -> None:
    ingress = module.resources.get("aws_vpc_security_group_ingress_rule", {})
    assert sorted(ingress) == ["endpoints_from_instances", "endpoints_from_tasks", "tasks_metrics"]
    rule = ingress["tasks_metrics"]
    # One rule per scraper security group; none by default (the sidecar scrapes over localhost).
    assert rule["for_each"] == "${toset(var.metrics_scraper_security_group_ids)}"
    assert module.variables["metrics_scraper_security_group_ids"]["default"] == []
    assert rule["referenced_security_group_id"] == "${each.value}"
    assert "cidr_ipv4" not in rule
    assert rule["from_port"] == rule["to_port"] == "${var.metrics_port}"
    # The VPC endpoints take HTTPS from the module's own groups only.
    for name in ("endpoints_from_instances", "endpoints_from_tasks"):
        assert "cidr_ipv4" not in ingress[name]
        assert ingress[name]["from_port"] == ingress[name]["to_port"] == 443
    for name, group in module.resources["aws_security_group"].items():
        assert "ingress" not in group, f"inline ingress on {name}"


# ---------------------------------------------------------------------------------------------
# The producer's policy: exactly what api_client and image-jobs call
# ---------------------------------------------------------------------------------------------
# Calls the producer package makes through an SQS or S3 client: `sqs.<method>(`,
# `self.s3.<method>(`, `require_s3().<method>(` in api_client/*.py and in the shared modules it
# imports (`from jobcore.<module> import`, once that package exists).
PRODUCER_CALL = re.compile(r"\b(?:[a-z]+_)?(sqs|s3)(?:\(\))?\.([a-z][a-z0-9_]*)\(")
# The producer core's calls as steps: `call("sqs", "get_queue_url", ...)`,
# `batch_calls("sqs", "send_message_batch", ...)`, and presigned GETs (run with the role's rights).
PRODUCER_STEP = re.compile(r"\b(?:call|batch_calls)\(\s*\"(sqs|s3|ecs)\",\s*\"([a-z][a-z0-9_]*)\"")
PRESIGNED = re.compile(r"ClientMethod=\"([a-z_]+)\"")
# Client methods that are not AWS operations (no IAM action).
CLIENT_HELPERS = {"close", "get_paginator", "get_waiter", "can_paginate", "generate_presigned_url"}
# The producer's health check (`check_health()`: GetQueueUrl, GetQueueAttributes, HeadBucket)
# is granted ahead of the code; once it lands, the scan finds these calls itself.
PRODUCER_HEALTH_CHECK_CALLS = {("sqs", "get_queue_url"), ("sqs", "get_queue_attributes"),
                               ("s3", "head_bucket")}  # fmt: skip
# S3 operations that IAM authorises under another action's name.
S3_IAM_ACTION = {"HeadObject": "s3:GetObject", "HeadBucket": "s3:ListBucket",
                 "ListObjectsV2": "s3:ListBucket", "ListObjects": "s3:ListBucket",
                 "DeleteObjects": "s3:DeleteObject"}  # fmt: skip


def producer_sources() -> list[Path]:
    sources = sorted((REPO / "api_client").glob("*.py"))
    shared = {
        m for p in sources for m in re.findall(r"^from jobcore\.(\w+) import", p.read_text(), re.M)
    }
    return sources + [REPO / "jobcore" / f"{m}.py" for m in sorted(shared)]


def producer_calls() -> set[tuple[str, str]]:
    calls: set[tuple[str, str]] = set()
    for path in producer_sources():
        text = path.read_text()
        calls.update(PRODUCER_CALL.findall(text))
        calls.update(PRODUCER_STEP.findall(text))
        calls.update(("s3", method) for method in PRESIGNED.findall(text))
    calls = {(service, method) for service, method in calls if method not in CLIENT_HELPERS}
    assert ("sqs", "send_message") in calls, calls
    return calls


def test_producer_call_pattern() -> None:
    found = PRODUCER_CALL.findall(
        "await self.sqs.send_message(QueueUrl=u)\n"
        "call=lambda entries: client.sqs.send_message_batch(\n"
        "await client.require_s3().head_object(Bucket=b, Key=k)\n"
        "await s3.head_bucket(Bucket=b)\n"
        "self.s3_prefix.startswith(x)\n"
    )
    assert PRODUCER_STEP.findall(
        'yield from call("ecs", "describe_services", cluster=c)\n'
        'yield from batch_calls(\n    "sqs", "delete_message_batch", done)\n'
    ) == [("ecs", "describe_services"), ("sqs", "delete_message_batch")]
    assert found == [("sqs", "send_message"), ("sqs", "send_message_batch"),
                     ("s3", "head_object"), ("s3", "head_bucket")]  # fmt: skip


def producer_iam_action(service: str, method: str) -> str:
    """boto3 method -> IAM action, through botocore's model (the method must exist)."""
    import botocore.session

    session = botocore.session.get_session()
    model = session.get_service_model(service)
    by_method = {botocore.xform_name(name): name for name in model.operation_names}
    assert method in by_method, f"{service}.{method} is not a {service} operation"
    operation = by_method[method]
    if service == "s3":
        return S3_IAM_ACTION.get(operation, f"s3:{operation}")
    if service == "ecs":
        return f"ecs:{operation}"
    return "sqs:" + operation.removesuffix("Batch")


def test_producer_iam_action_mapping() -> None:
    assert producer_iam_action("sqs", "send_message_batch") == "sqs:SendMessage"
    assert producer_iam_action("s3", "head_object") == "s3:GetObject"
    assert producer_iam_action("s3", "head_bucket") == "s3:ListBucket"
    with pytest.raises(AssertionError, match="not a sqs operation"):
        producer_iam_action("sqs", "send_messages")


def test_producer_policy_grants_exactly_what_the_producer_calls(module: Module) -> None:
    output = module.outputs["producer_policy_json"]
    assert output["value"] == "${data.aws_iam_policy_document.producer.json}"
    document = module.data["aws_iam_policy_document"]["producer"]
    statements = [
        s
        for s in policy_statements(document)
        if s["sid"] not in {"QueueKey", "SourceBucketKey", "ResultBucketKey"}
    ]
    granted = {a for s in statements for a in resolve(module, s["actions"])}
    needed = {producer_iam_action(*call) for call in producer_calls()}
    needed |= {producer_iam_action(*call) for call in PRODUCER_HEALTH_CHECK_CALLS}
    assert needed <= granted, f"producer policy lacks {sorted(needed - granted)}"
    assert granted <= needed, (
        f"producer policy grants what no code calls: {sorted(granted - needed)}"
    )
    by_sid = {s["sid"]: s for s in statements}
    assert by_sid["SendJobs"]["resources"] == ["${aws_sqs_queue.jobs.arn}"]
    assert by_sid["RedriveDeadLetters"]["resources"] == ["${aws_sqs_queue.dlq.arn}"]
    assert by_sid["UploadSourcePhotos"]["resources"] == ["${local.source_object_arn}"]
    assert by_sid["SourceBucketHealth"]["resources"] == ["${local.source_bucket_arn}"]
    # result_url presigns GetObject and delete_jobs deletes outputs: on the result prefix only.
    assert by_sid["ReadAndPurgeResults"]["resources"] == ["${local.result_object_arn}"]
    assert set(resolve(module, by_sid["ReadAndPurgeResults"]["actions"])) == {
        "s3:GetObject", "s3:DeleteObject"
    }  # fmt: skip
    assert module.locals["result_object_arn"].endswith("${var.result_prefix}*")
    assert by_sid["WorkerServiceHealth"]["resources"] == ["${aws_ecs_service.worker.id}"]
    assert resolve(module, by_sid["WorkerServiceHealth"]["actions"]) == ["ecs:DescribeServices"]
    # Health checks need GetQueueUrl/GetQueueAttributes on the queue, not only SendMessage.
    assert {"sqs:SendMessage", "sqs:GetQueueUrl", "sqs:GetQueueAttributes"} == set(
        resolve(module, by_sid["SendJobs"]["actions"])
    )
    for statement in statements:
        assert "*" not in resolve(module, statement["resources"]), statement


def test_outputs_users_expect(module: Module) -> None:
    expected = {
        "queue_url", "queue_arn", "queue_name", "dlq_url", "dlq_arn", "dlq_name",
        "task_definition_arn", "task_definition_family", "kms_key_arn", "tasks_security_group_id",
        "instances_security_group_id", "alarm_arns", "producer_policy_json", "cluster_name",
        "service_name", "capacity_provider_name", "task_template_vars", "compute",
    }  # fmt: skip
    assert expected <= set(module.outputs), sorted(expected - set(module.outputs))
    for name, body in module.outputs.items():
        assert len(str(body.get("description", ""))) > 10, f"output {name} has no description"
    alarms = module.outputs["alarm_arns"]["value"]
    assert set(alarms.values()) == {
        "${aws_cloudwatch_metric_alarm.dlq_depth.arn}",
        "${aws_cloudwatch_metric_alarm.oldest_message_age.arn}",
    }


def test_example_alarm_topic_uses_a_key_cloudwatch_may_use() -> None:
    example = Module(EXAMPLE)
    topic = example.resource("aws_sns_topic", "alarms")
    assert topic["kms_master_key_id"] == "${aws_kms_key.alarms.arn}"
    assert "alias/aws/sns" not in (EXAMPLE / "main.tf").read_text().split("resource")[-1]
    policy = example.data["aws_iam_policy_document"]["alarms_key"]
    (cloudwatch,) = [s for s in policy_statements(policy) if s["sid"] == "CloudWatchAlarmsPublish"]
    assert block(cloudwatch, "principals")["identifiers"] == ["cloudwatch.amazonaws.com"]
    assert set(cloudwatch["actions"]) == {"kms:GenerateDataKey*", "kms:Decrypt"}


# ---------------------------------------------------------------------------------------------
# Module and deploy template agree
# ---------------------------------------------------------------------------------------------
def test_deploy_template_matches_module(module: Module) -> None:
    placeholders: set[str] = set()
    for template in DEPLOY_TEMPLATES:
        placeholders |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)\}", template.read_text()))
    output = module.outputs["task_template_vars"]["value"]
    assert placeholders - {"IMAGE_TAG"} <= set(output), sorted(placeholders - set(output))
    for template in (DEPLOY_TEMPLATES[0], DEPLOY_TEMPLATES[2]):
        task = json.loads(template.read_text())
        container = task["containerDefinitions"][0]
        env = {item["name"] for item in container["environment"]}
        assert env == set(module.locals["worker_environment_managed"]), template.name
        assert container["secrets"] == "${SECRETS}", "the module decides URL or JSON keys"


# ---------------------------------------------------------------------------------------------
# checkov
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkov_report() -> dict[str, Any]:
    """Needs the tool venv that `make tools` (a dependency of `make test`) creates."""
    if not os.access(CHECKOV, os.X_OK):
        pytest.fail(
            f"checkov is missing at {CHECKOV.relative_to(REPO)}: run `make tools` "
            "(checkov lives in its own venv; its pins conflict with the project's botocore)"
        )
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
    completed = subprocess.run(
        [str(CHECKOV), "-d", str(TERRAFORM), "--framework", "terraform", "--output", "json",
         "--skip-download"],
        capture_output=True, text=True, env=env, timeout=280, check=False,
    )  # fmt: skip
    assert completed.returncode in (0, 1), completed.stderr[-2000:]
    report = json.loads(completed.stdout)
    reports = report if isinstance(report, list) else [report]
    (terraform,) = [r for r in reports if r.get("check_type") == "terraform"]
    result: dict[str, Any] = terraform
    return result


@pytest.mark.slow  # checkov reads all of terraform/
def test_checkov_finds_no_failed_checks(checkov_report: dict[str, Any]) -> None:
    summary = checkov_report["summary"]
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}:{c['file_line_range']}) "
        f"{c['check_name']}"
        for c in checkov_report["results"]["failed_checks"]
    ]
    assert not failed, "checkov failed checks:\n" + "\n".join(failed)
    # Both examples are scanned: the GPU module call and the CPU (Fargate) one.
    passed = {c["resource"] for c in checkov_report["results"]["passed_checks"]}
    for call in ("module.image_worker.", "module.image_worker_cpu."):
        assert any(r.startswith(call + "aws_ecs_task_definition.worker") for r in passed), call
    assert summary["parsing_errors"] == 0
    assert summary["resource_count"] >= 30, summary
    assert summary["passed"] >= 100, summary


@pytest.mark.slow  # checkov reads all of terraform/
def test_checkov_skips_are_justified_inline(checkov_report: dict[str, Any]) -> None:
    skipped = checkov_report["results"].get("skipped_checks", [])
    for check in skipped:
        reason = check["check_result"].get("suppress_comment", "")
        assert len(reason) >= 30, f"{check['check_id']} on {check['resource']}: reason {reason!r}"
    inline = re.findall(
        r"#checkov:skip=(CKV2?_AWS_\d+):(.*)",
        "\n".join(p.read_text() for p in TERRAFORM.rglob("*.tf")),
    )
    assert {check_id for check_id, _ in inline} == {c["check_id"] for c in skipped}
    assert all(len(reason.strip()) >= 30 for _, reason in inline)
