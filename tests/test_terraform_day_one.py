"""terraform/: what a first real deploy needs. The sweep's image and secret, images kept while task
definitions name them, room for the deploy gate, mixed instance types and Spot, cold-start
settings, VPC endpoints, the deployer's policy, alarms that notify someone, SSE-KMS buckets, the
hardened containers, and the variable validations (run by the terraform binary on the module's
variables alone: no provider needed)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.terraform_module import (
    DEPLOY_TEMPLATES,
    EXAMPLE,
    REPO,
    TERRAFORM,
    Module,
    block,
    blocks,
    policy_statements,
)


@pytest.fixture(scope="module")
def module() -> Module:
    return Module(TERRAFORM)


# ---------------------------------------------------------------------------------------------
# The sweep's image and ECR's lifecycle
# ---------------------------------------------------------------------------------------------
def test_ecr_keeps_what_task_definitions_name(module: Module) -> None:
    text = (TERRAFORM / "ecr.tf").read_text()
    # Terraform's own tags (image_tag, the sweep's) are kept one image each, first.
    tags = module.locals["terraform_image_tags"]
    assert "var.image_tag" in tags
    assert "local.sweep_image" in tags
    keep = module.locals["ecr_keep_terraform_tags"]
    assert "rulePriority = 1 + index" in keep
    assert "tagPatternList = [tag]" in keep
    assert re.search(r"countNumber\s*=\s*1\b", keep)
    # Sweep images counted apart from the worker's, "any" last (ECR requires it), untagged by age.
    order = [m.group(1) for m in re.finditer(r'tagStatus\s*=\s*"(\w+)"', text)]
    assert order == ["tagged", "tagged", "untagged", "any"], order
    assert '"*-sweep"' in text
    assert text.count("countNumber    = var.ecr_keep_images") == 1
    assert text.count("countNumber = var.ecr_keep_images") == 1
    assert module.variables["ecr_keep_images"]["default"] >= 10


def test_sweep_image_is_the_releases_sweep_tag(module: Module) -> None:
    assert module.variables["sweep_image"]["default"] is None
    image = module.locals["sweep_image"]
    assert 'trimsuffix(var.image_tag, "-cpu")}-sweep' in image
    assert module.outputs["sweep_image"]["value"] == "${local.sweep_image}"
    assert module.outputs["recovery_task_definition_family"]["value"] == (
        "${one(aws_ecs_task_definition.recovery[*].family)}"
    )
    # What deploy.py needs to register the sweep's revision of a release.
    template_vars = module.outputs["task_template_vars"]["value"]
    assert template_vars["SWEEP_FAMILY"] == "${one(aws_ecs_task_definition.recovery[*].family)}"
    assert template_vars["SWEEP_CONTAINER_NAME"] == "${local.recovery_container_name}"
    assert module.locals["recovery_container"]["name"] == "${local.recovery_container_name}"


# ---------------------------------------------------------------------------------------------
# Capacity: the gate, mixed types and Spot, cold starts, instance refresh
# ---------------------------------------------------------------------------------------------
def test_room_for_the_deploy_gate(module: Module) -> None:
    variables = module.variables
    assert variables["max_instances"]["default"] == variables["max_tasks"]["default"] + 1
    provider = block(
        module.resource("aws_ecs_capacity_provider", "gpu"), "auto_scaling_group_provider"
    )
    # No idle spare at any time: the gate's task gets an instance launched for it.
    assert block(provider, "managed_scaling")["target_capacity"] == 100
    asg = module.resource("aws_autoscaling_group", "gpu")
    assert asg["max_size"] == "${var.max_instances}"


def test_mixed_instance_types_with_optional_spot_and_draining(module: Module) -> None:
    types = module.variables["instance_types"]
    assert types["default"] == ["g4dn.xlarge", "g5.xlarge", "g6.xlarge"]
    assert module.variables["spot"]["default"] is False
    asg = module.resource("aws_autoscaling_group", "gpu")
    assert "launch_template" not in asg, "the mixed instances policy names the template"
    assert asg["capacity_rebalance"] == "${var.spot}"
    policy = block(asg, "mixed_instances_policy")
    distribution = block(policy, "instances_distribution")
    assert distribution["on_demand_percentage_above_base_capacity"] == "${var.spot ? 0 : 100}"
    assert distribution["spot_allocation_strategy"] == "price-capacity-optimized"
    template = block(policy, "launch_template")
    specification = block(template, "launch_template_specification")
    assert specification["launch_template_id"] == "${aws_launch_template.gpu[0].id}"
    (override,) = [d["override"] for d in blocks(template, "dynamic")]
    assert override["for_each"] == "${var.instance_types}"
    assert block(override, "content")["instance_type"] == "${override.value}"
    user_data = module.resource("aws_launch_template", "gpu")["user_data"]
    assert "ECS_ENABLE_SPOT_INSTANCE_DRAINING=${var.spot}" in user_data


def test_root_volume_throughput_is_a_variable(module: Module) -> None:
    template = module.resource("aws_launch_template", "gpu")
    ebs = block(block(template, "block_device_mappings"), "ebs")
    assert ebs["volume_type"] == "gp3"
    assert ebs["throughput"] == "${var.root_volume_throughput}"
    assert ebs["iops"] == "${var.root_volume_iops}"
    assert module.variables["root_volume_throughput"]["default"] > 125
    asg = module.resource("aws_autoscaling_group", "gpu")
    conditions = [p["condition"] for p in blocks(block(asg, "lifecycle"), "precondition")]
    assert "${var.root_volume_throughput <= var.root_volume_iops / 4}" in conditions


def test_instance_refresh_replaces_protected_instances_too(module: Module) -> None:
    asg = module.resource("aws_autoscaling_group", "gpu")
    preferences = block(block(asg, "instance_refresh"), "preferences")
    assert preferences["scale_in_protected_instances"] == "Refresh"
    assert preferences["skip_matching"] is True
    provider = block(
        module.resource("aws_ecs_capacity_provider", "gpu"), "auto_scaling_group_provider"
    )
    assert provider["managed_draining"] == "ENABLED", "refreshed instances are drained first"


# ---------------------------------------------------------------------------------------------
# Network: endpoints, metrics port
# ---------------------------------------------------------------------------------------------
def test_vpc_endpoints_behind_one_variable(module: Module) -> None:
    assert module.variables["enable_vpc_endpoints"]["default"] is False
    assert module.locals["interface_endpoint_service"] == (
        '${var.enable_vpc_endpoints ? toset(["ecr.api", "ecr.dkr", "sqs", "logs", '
        '"secretsmanager"]) : toset([])}'
    )
    s3 = module.resource("aws_vpc_endpoint", "s3")
    assert s3["vpc_endpoint_type"] == "Gateway"
    assert s3["count"] == "${local.vpc_endpoint_count}"
    assert s3["route_table_ids"] == (
        "${coalesce(var.vpc_endpoint_route_table_ids, distinct([for table in "
        "data.aws_route_table.subnet : table.route_table_id]))}"
    )
    interface = module.resource("aws_vpc_endpoint", "interface")
    assert interface["private_dns_enabled"] is True
    assert interface["subnet_ids"] == "${var.subnet_ids}"
    assert interface["security_group_ids"] == ["${aws_security_group.endpoints[0].id}"]
    assert Module(EXAMPLE).modules["image_worker"]["enable_vpc_endpoints"] == (
        "${var.enable_vpc_endpoints}"
    )


# ---------------------------------------------------------------------------------------------
# IAM: the deployer, the scheduler, name prefixes, SSE-KMS
# ---------------------------------------------------------------------------------------------
def deploy_aws_calls() -> set[str]:
    """The IAM actions of every ECS, ECR and Scheduler call deploy.py makes."""
    source = (REPO / "deploy" / "ecs" / "deploy.py").read_text()
    calls = set(re.findall(r"\b(ecs|ecr|scheduler)\.([a-z_]+)\(", source))
    assert {("ecs", "register_task_definition"), ("ecs", "update_service")} <= calls, calls
    assert {("ecs", "tag_resource"), ("scheduler", "update_schedule")} <= calls, calls
    return {
        f"{service}:" + "".join(p.capitalize() for p in call.split("_")) for service, call in calls
    }


def test_deployer_policy_covers_what_deploy_py_calls(module: Module) -> None:
    document = module.data["aws_iam_policy_document"]["deployer"]
    statements = {s["sid"]: s for s in policy_statements(document)}
    granted = {a for s in statements.values() for a in s["actions"]}
    needed = deploy_aws_calls()
    assert needed <= granted, f"deployer policy lacks {sorted(needed - granted)}"
    push = set(statements["PushToThisRepository"]["actions"])
    assert {"ecr:PutImage", "ecr:InitiateLayerUpload", "ecr:CompleteLayerUpload"} <= push
    assert statements["PushToThisRepository"]["resources"] == ["${aws_ecr_repository.this.arn}"]
    passing = statements["PassTheTaskRoles"]
    assert passing["resources"] == "${local.deployer_passed_roles}"
    roles = module.locals["deployer_passed_roles"]
    for role in ("execution", "task", "recovery"):
        assert f"aws_iam_role.{role}" in roles, role
    assert block(passing, "condition")["values"] == ["ecs-tasks.amazonaws.com"]
    # "*" only where IAM has no resource type (checkov's CKV_AWS_356 knows which those are and
    # passes on this policy).
    for statement in statements.values():
        if statement["resources"] == ["*"]:
            assert statement["actions"] in (
                ["ecr:GetAuthorizationToken"],
                ["ecs:RegisterTaskDefinition", "ecs:DescribeTaskDefinition"],
            ), statement
    assert statements["RollOutTheService"]["resources"] == ["${aws_ecs_service.worker.id}"]
    assert block(statements["RunTheGate"], "condition")["values"] == ["${aws_ecs_cluster.this.arn}"]
    for name in ("deployer_policy_json", "deployer_policy_arn"):
        assert name in module.outputs


def test_iam_role_name_prefixes_fit_38_characters(module: Module) -> None:
    condition = block(module.variables["name"], "validation")["condition"]
    bounds = re.search(r"\{1,(\d+)\}", condition)
    assert bounds is not None, condition
    longest_name = int(bounds.group(1)) + 2
    assert longest_name == 31
    for name, role in module.resources["aws_iam_role"].items():
        prefix = role["name_prefix"]
        assert prefix.startswith("${var.name}"), name
        suffix = prefix.removeprefix("${var.name}")
        assert longest_name + len(suffix) <= 38, f"aws_iam_role.{name}: {prefix}"


def test_no_deprecated_region_name() -> None:
    for path in TERRAFORM.rglob("*.tf"):
        assert "aws_region.current.name" not in path.read_text(), path
    versions = (TERRAFORM / "versions.tf").read_text()
    assert 'version = ">= 6.0.0, < 7.0.0"' in versions


def _kms_statement(document: dict[str, Any], sid: str) -> dict[str, Any]:
    for dynamic in blocks(document, "dynamic"):
        content = block(dynamic["statement"], "content")
        if content["sid"] == sid:
            return {"for_each": dynamic["statement"]["for_each"], **content}
    raise AssertionError(f"no statement {sid}")


def test_sse_kms_buckets_are_optional_and_through_s3_only(module: Module) -> None:
    task = module.data["aws_iam_policy_document"]["task"]
    decrypt = _kms_statement(task, "DecryptSourcePhotos")
    assert decrypt["for_each"] == "${var.source_bucket_kms_key_arn == null ? [] : [1]}"
    assert decrypt["actions"] == ["kms:Decrypt"]
    encrypt = _kms_statement(task, "EncryptCutouts")
    assert encrypt["actions"] == ["kms:GenerateDataKey"]
    assert encrypt["resources"] == ["${local.result_bucket_kms_key_arn}"]
    producer = _kms_statement(module.data["aws_iam_policy_document"]["producer"], "SourceBucketKey")
    for statement in (decrypt, encrypt, producer):
        condition = block(statement, "condition")
        assert condition["variable"] == "kms:ViaService"
        assert condition["values"] == ["s3.${local.region}.amazonaws.com"]


# ---------------------------------------------------------------------------------------------
# Alarms
# ---------------------------------------------------------------------------------------------
def test_every_alarm_notifies_the_topic_or_the_given_actions(module: Module) -> None:
    assert module.variables["alarm_actions"]["default"] is None
    assert module.locals["alarm_actions"] == (
        "${coalesce(var.alarm_actions, aws_sns_topic.alarms[*].arn)}"
    )
    operator_alarms = {
        name: alarm
        for name, alarm in module.resources["aws_cloudwatch_metric_alarm"].items()
        if "aws_appautoscaling_policy" not in str(alarm["alarm_actions"])  # scaling triggers
    }
    assert len(operator_alarms) >= 4
    for name, alarm in operator_alarms.items():
        assert alarm["alarm_actions"] == "${local.alarm_actions}", name
    topic = module.resource("aws_sns_topic", "alarms")
    assert topic["count"] == "${var.alarm_actions == null ? 1 : 0}"
    assert topic["kms_master_key_id"] == "${aws_kms_key.this.arn}"
    key_policy = module.data["aws_iam_policy_document"]["logs_key"]
    (cloudwatch,) = [
        s for s in policy_statements(key_policy) if s["sid"] == "CloudWatchAlarmsPublish"
    ]
    assert block(cloudwatch, "principals")["identifiers"] == ["cloudwatch.amazonaws.com"]
    dlq = module.resource("aws_cloudwatch_metric_alarm", "dlq_depth")
    conditions = [p["condition"] for p in blocks(block(dlq, "lifecycle"), "precondition")]
    assert (
        "${var.alarm_actions == null || length(coalesce(var.alarm_actions, [])) > 0 "
        "|| var.alarms_silent}" in conditions
    )


# ---------------------------------------------------------------------------------------------
# Containers and database
# ---------------------------------------------------------------------------------------------
def test_containers_drop_every_capability_and_gain_no_privileges(module: Module) -> None:
    parameters = module.locals["worker_linux_parameters"]
    assert '{capabilities = {drop = ["ALL"]}}' in parameters
    assert '"noexec"' in parameters
    worker = module.locals["worker_container"]
    assert worker["dockerSecurityOptions"] == '${local.gpu ? ["no-new-privileges"] : null}'
    assert worker["readonlyRootFilesystem"] is True
    sidecar = module.locals["metrics_sidecar"]
    assert sidecar["linuxParameters"] == {"capabilities": {"drop": ["ALL"]}}
    gpu_template, sidecar_template, cpu_template = (
        json.loads(path.read_text()) for path in DEPLOY_TEMPLATES
    )
    container = gpu_template["containerDefinitions"][0]
    assert container["linuxParameters"]["capabilities"] == {"drop": ["ALL"]}
    assert "noexec" in container["linuxParameters"]["tmpfs"][0]["mountOptions"]
    assert container["dockerSecurityOptions"] == ["no-new-privileges"]
    assert sidecar_template["linuxParameters"] == {"capabilities": {"drop": ["ALL"]}}
    cpu = cpu_template["containerDefinitions"][0]
    assert cpu["linuxParameters"] == {"capabilities": {"drop": ["ALL"]}}


def test_worker_and_sweep_connect_with_their_own_secrets(module: Module) -> None:
    locals_ = module.locals
    assert "var.sweep_database_url_secret_arn" in locals_["sweep_database_url_secret_arn"]
    assert "local.sweep_database_url_secret_arn" in locals_["sweep_database_secrets"]
    created = module.resource("aws_secretsmanager_secret", "sweep_database_url")
    assert created["count"] == (
        '${var.sweep_database_url_secret_arn == null && var.database_secret_format == "url" '
        "? 1 : 0}"
    )
    cpu = Module(EXAMPLE.parent / "cpu").modules["image_worker_cpu"]
    assert cpu["sweep_database_url_secret_arn"] == "${var.sweep_database_secret_arn}"  # noqa: S105
    complete = Module(EXAMPLE).modules["image_worker"]
    assert complete["sweep_database_url_secret_arn"] == (
        "${var.sweep_database_secret_arn}"  # noqa: S105 - a reference, not a secret
    )


def test_asyncpg_verifies_the_server_with_the_bundle_the_url_names() -> None:
    """The module's rds_json URL (`?sslmode=verify-full&sslrootcert=<bundle>`) is all asyncpg
    needs: certificate and host name checked against that bundle, and a missing bundle fails."""
    import ssl

    import certifi
    from asyncpg.connect_utils import _parse_connect_dsn_and_args

    none: dict[str, Any] = dict.fromkeys(
        ("host", "port", "user", "password", "passfile", "database", "ssl", "service",
         "servicefile", "direct_tls", "server_settings", "target_session_attrs", "krbsrvname",
         "gsslib"),
    )  # fmt: skip
    url = "postgresql://rds.example:5432/db?sslmode=verify-full&sslrootcert="
    _, params = _parse_connect_dsn_and_args(dsn=url + certifi.where(), **none)
    context = params.ssl
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    with pytest.raises((OSError, ValueError)):
        _parse_connect_dsn_and_args(dsn=url + str(REPO / "no-such-bundle.pem"), **none)


# ---------------------------------------------------------------------------------------------
# Variable validations, run by terraform itself
# ---------------------------------------------------------------------------------------------
REQUIRED = [
    "-var=vpc_id=vpc-0123456789abcdef0",
    '-var=subnet_ids=["subnet-0123456789abcdef0"]',
    "-var=source_bucket=book-photos",
    "-var=image_tag=0123abcd",
]


@pytest.fixture(scope="module")
def variables_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module's variable blocks alone: `terraform plan` evaluates every validation without a
    provider (nothing to create)."""
    if shutil.which("terraform") is None:
        pytest.skip("the terraform binary is not installed")
    directory = tmp_path_factory.mktemp("variables")
    text = (TERRAFORM / "variables.tf").read_text()
    recovery = (TERRAFORM / "recovery.tf").read_text()
    text += "".join(re.findall(r'(?ms)^variable "[^"]+" \{.*?^\}\n', recovery))
    (directory / "variables.tf").write_text(text)
    env = {"TF_CLI_CONFIG_FILE": "/dev/null", "PATH": "/usr/local/bin:/usr/bin:/bin"}
    subprocess.run(
        ["terraform", "init", "-input=false", "-no-color"],
        cwd=directory, env=env, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return directory


def plan(directory: Path, *extra: str) -> str:
    """'' if the variables are accepted, else terraform's error text."""
    result = subprocess.run(
        ["terraform", "plan", "-input=false", "-no-color", "-lock=false", *REQUIRED, *extra],
        cwd=directory,
        env={"TF_CLI_CONFIG_FILE": "/dev/null", "PATH": "/usr/local/bin:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return "" if result.returncode == 0 else " ".join(result.stderr.split())


@pytest.mark.parametrize(
    ("settings", "refusal"),
    [
        ([], None),
        (["-var=source_prefix="], "overlap"),
        (["-var=source_prefix=cutouts/in/"], "overlap"),
        (["-var=source_prefix=", "-var=result_bucket=book-cutouts"], None),
        (["-var=result_prefix=sources/x/"], "overlap"),
        (["-var=name=" + "a" * 31], None),
        (["-var=name=" + "a" * 32], "38 characters"),
        (['-var=instance_types=["g4dn.xlarge","g5g.xlarge"]'], "x86_64"),
        (["-var=instance_types=[]"], "x86_64"),
        (["-var=root_volume_throughput=100"], "gp3"),
        (["-var=alarm_actions=[]"], None),  # refused by the alarm's precondition, at plan
        (['-var=alarm_actions=["nobody@example.com"]'], "action ARNs"),
        (['-var=alarm_emails=["ops"]'], "e-mail"),
        (["-var=database_sslmode=prefer"], "plain text"),
        (["-var=sweep_image=repo:tag-sweep"], None),
        (["-var=sweep_image=repo"], "tag or a sha256"),
        (['-var=metrics_scraper_security_group_ids=["10.0.0.0/16"]'], "security group ids"),
        (["-var=ecr_keep_images=2"], "between 5 and 1000"),
        (["-var=source_bucket_kms_key_arn=alias/x"], "KMS key ARN"),
        (['-var=vpc_endpoint_route_table_ids=["subnet-0123456789abcdef0"]'], "rtb-"),
    ],
)
def test_validations(variables_only: Path, settings: list[str], refusal: str | None) -> None:
    error = plan(variables_only, *settings)
    if refusal is None:
        assert error == ""
    else:
        assert "Invalid value for variable" in error
        assert refusal in error, error
