"""deploy/terraform_schema.py: terraform/ and its examples match the AWS provider's published schema
(@cdktf/provider-aws's jsii assembly, fetched by `make tools`), and seeded mistakes are caught."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.terraform_schema import (
    JSII_FILE,
    Schema,
    check_directories,
    load_schema,
    main,
    tree_directories,
)

REPO = Path(__file__).resolve().parents[1]
TERRAFORM = REPO / "terraform"


@pytest.fixture(scope="module")
def schema() -> Schema:
    assert JSII_FILE.exists(), f"{JSII_FILE} is missing: run `make tools`"
    return load_schema()


def problems_of(tmp_path: Path, schema: Schema, text: str) -> list[str]:
    (tmp_path / "main.tf").write_text(text)
    _, problems = check_directories([tmp_path], schema)
    return [f"{p.address}: {p.message}" for p in problems]


def test_the_assembly_reads_as_the_providers_schema(schema: Schema) -> None:
    queue = schema.resources["aws_sqs_queue"]
    assert queue.attributes["visibility_timeout_seconds"] == ("number", False)
    group = schema.resources["aws_autoscaling_group"]
    assert group.attributes["max_size"] == ("number", True)
    assert group.attributes["capacity_rebalance"] == ("bool", False)
    assert group.attributes["vpc_zone_identifier"][0] == ["list", "string"]
    assert group.blocks["launch_template"].max_one
    assert not group.blocks["tag"].max_one
    assert schema.resources["aws_scheduler_schedule"].blocks["target"].required
    assert "arn_without_revision" in schema.resources["aws_ecs_task_definition"].computed
    assert "aws_region" in schema.data_sources


def test_terraform_and_its_examples_match_the_schema(
    schema: Schema, capsys: pytest.CaptureFixture[str]
) -> None:
    directories = tree_directories(TERRAFORM)
    assert [d.name for d in directories] == ["terraform", "complete", "cpu"]
    checked, problems = check_directories(directories, schema)
    assert [str(p) for p in problems] == []
    assert checked >= 70  # every aws resource and data source, and the example modules
    assert main([]) == 0
    assert "0 problem(s)" in capsys.readouterr().out


def test_a_misspelt_argument_is_caught(tmp_path: Path, schema: Schema) -> None:
    found = problems_of(
        tmp_path,
        schema,
        'resource "aws_sqs_queue" "jobs" {\n  name = "jobs"\n  visibilty_timeout_seconds = 60\n}\n',
    )
    assert found == ["aws_sqs_queue.jobs: unknown argument or block 'visibilty_timeout_seconds'"]
    assert main([str(tmp_path)]) == 1


def test_a_missing_required_argument_is_caught(tmp_path: Path, schema: Schema) -> None:
    found = problems_of(
        tmp_path,
        schema,
        'resource "aws_ecr_lifecycle_policy" "this" {\n  policy = "{}"\n}\n',
    )
    assert found == ["aws_ecr_lifecycle_policy.this: missing required argument 'repository'"]


def test_nested_and_dynamic_blocks_are_checked(tmp_path: Path, schema: Schema) -> None:
    found = problems_of(
        tmp_path,
        schema,
        """
resource "aws_autoscaling_group" "gpu" {
  min_size = 0
  max_size = 1
  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percent = 0
    }
  }
  dynamic "tags" {
    for_each = {}
    content {}
  }
  dynamic "tag" {
    for_each = var.tags
    content {
      key   = tag.key
      value = tag.value
      propagate = true
    }
  }
}
""",
    )
    assert found == [
        "aws_autoscaling_group.gpu: aws_autoscaling_group.gpu.instance_refresh.preferences: "
        "unknown argument or block 'min_healthy_percent'",
        "aws_autoscaling_group.gpu: unknown block 'tags' (dynamic)",
        "aws_autoscaling_group.gpu: aws_autoscaling_group.gpu.tag: "
        "unknown argument or block 'propagate'",
        "aws_autoscaling_group.gpu: aws_autoscaling_group.gpu.tag: "
        "missing required argument 'propagate_at_launch'",
    ]


def test_literals_of_the_wrong_type_are_caught(tmp_path: Path, schema: Schema) -> None:
    found = problems_of(
        tmp_path,
        schema,
        """
resource "aws_sqs_queue" "jobs" {
  name                       = "jobs"
  visibility_timeout_seconds = "sixty"
  delay_seconds              = "5"
  fifo_queue                 = 1
  sqs_managed_sse_enabled    = "true"
  tags                       = ["a"]
  max_message_size           = var.size
  policy                     = 42
}
""",
    )
    # "5" and "true" convert (Terraform does); a number for a string argument converts too.
    assert found == [
        "aws_sqs_queue.jobs: argument 'visibility_timeout_seconds': a number is expected, "
        'got the string "sixty"',
        "aws_sqs_queue.jobs: argument 'fifo_queue': a bool is expected, got the number 1",
        "aws_sqs_queue.jobs: argument 'tags': a map is expected, got a list",
    ]


def test_unknown_and_deprecated_attribute_references_are_caught(
    tmp_path: Path, schema: Schema
) -> None:
    found = problems_of(
        tmp_path,
        schema,
        """
data "aws_region" "current" {}
resource "aws_sqs_queue" "jobs" {
  name = "${data.aws_region.current.name}-jobs"
  policy = aws_sqs_queue.other[0].arnn
}
""",
    )
    assert found == [
        "data.aws_region.current.name: deprecated attribute: use .region",
        "aws_sqs_queue.other.arnn: aws_sqs_queue has no attribute 'arnn'",
    ]


def test_unknown_types_module_variables_and_outputs_are_caught(
    tmp_path: Path, schema: Schema
) -> None:
    module = tmp_path / "module"
    module.mkdir()
    (module / "variables.tf").write_text(
        'variable "name" {\n  type = string\n}\nvariable "size" {\n  default = 1\n}\n'
        'output "name" {\n  value = var.name\n}\n'
    )
    root = tmp_path / "root"
    root.mkdir()
    found = problems_of(
        root,
        schema,
        'resource "aws_sqs_queu" "jobs" {}\n'
        'module "m" {\n  source = "../module"\n  sise = 2\n}\n'
        'output "url" {\n  value = module.m.queue_urll\n}\n'
        'output "name" {\n  value = module.m.name\n}\n',
    )
    assert found == [
        "aws_sqs_queu.jobs: unknown resource type",
        "module.m: unknown module variable 'sise'",
        "module.m: missing required variable 'name'",
        "module.m.queue_urll: the module has no output 'queue_urll'",
    ]


def test_the_provider_block_is_checked(tmp_path: Path, schema: Schema) -> None:
    found = problems_of(
        tmp_path,
        schema,
        'provider "aws" {\n  regoin = "eu-west-1"\n  default_tags {\n    tags = {}\n  }\n}\n',
    )
    assert found == ["provider \"aws\": unknown argument or block 'regoin'"]
