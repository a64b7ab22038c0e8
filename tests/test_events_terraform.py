"""terraform/events.tf read with python-hcl2: the optional events topic is KMS-encrypted with its
own key, the worker's and the sweep's roles may publish to it (and only to it), both task
environments carry EVENTS_TOPIC_ARN, and subscribers get the topic's ARN as an output."""

from __future__ import annotations

import re

import pytest

from tests.terraform_module import REPO, TERRAFORM, Module, policy_statements, resolve


@pytest.fixture(scope="module")
def module() -> Module:
    return Module(TERRAFORM)


def test_the_topic_is_optional_and_encrypted_with_its_own_key(module: Module) -> None:
    assert module.variables["events_topic_enabled"]["default"] is False
    topic = module.resource("aws_sns_topic", "events")
    assert topic["count"] == "${local.events_count}"
    assert topic["kms_master_key_id"] == "${aws_kms_key.events[0].arn}"
    key = module.resource("aws_kms_key", "events")
    assert key["enable_key_rotation"] is True
    assert module.locals["events_count"] == "${var.events_topic_enabled ? 1 : 0}"
    policy = module.data["aws_iam_policy_document"]["events_key"]
    (sns,) = [
        s for s in policy_statements(policy) if s["sid"] == "SnsDeliversFromTopicsOfThisAccount"
    ]
    assert sns["principals"][0]["identifiers"] == ["sns.amazonaws.com"]


def test_worker_and_sweep_may_publish_to_this_topic_only(module: Module) -> None:
    document = module.data["aws_iam_policy_document"]["events_publish"]
    statements = {s["sid"]: s for s in policy_statements(document)}
    assert statements["PublishJobEvents"]["actions"] == ["sns:Publish"]
    assert statements["PublishJobEvents"]["resources"] == ["${aws_sns_topic.events[0].arn}"]
    assert statements["EncryptJobEvents"]["resources"] == ["${aws_kms_key.events[0].arn}"]
    assert set(resolve(module, statements["EncryptJobEvents"]["actions"])) == {
        "kms:GenerateDataKey*",
        "kms:Decrypt",
    }
    worker = module.resource("aws_iam_role_policy", "worker_events")
    sweep = module.resource("aws_iam_role_policy", "recovery_events")
    assert worker["role"] == "${aws_iam_role.task.id}"
    assert sweep["role"] == "${aws_iam_role.recovery[0].id}"
    for attachment in (worker, sweep):
        assert attachment["policy"] == "${data.aws_iam_policy_document.events_publish[0].json}"
    # The only SNS calls the worker and the sweep make are publish_batch (authorised as Publish).
    calls: set[str] = set()
    for path in [
        *REPO.glob("worker/*.py"),
        *REPO.glob("jobcore/*.py"),
        *REPO.glob("api_client/*.py"),
    ]:
        calls.update(re.findall(r"\bsns\.([a-z_]+)\(", path.read_text()))
    assert calls == {"publish_batch"}, calls


def test_both_environments_and_the_deploy_template_carry_the_topic(module: Module) -> None:
    assert module.locals["worker_environment_managed"]["EVENTS_TOPIC_ARN"] == (
        "${local.events_topic_env}"
    )
    recovery = module.locals["recovery_environment"]
    assert "EVENTS_TOPIC_ARN" in str(recovery)
    assert module.outputs["task_template_vars"]["value"]["EVENTS_TOPIC_ARN"] == (
        "${local.events_topic_env}"
    )
    assert module.outputs["events_topic_arn"]["value"] == "${local.events_topic_arn}"


def test_the_worker_may_delete_only_under_the_result_prefix(module: Module) -> None:
    document = module.data["aws_iam_policy_document"]["task"]
    (writes,) = [s for s in policy_statements(document) if s["sid"] == "WriteCutouts"]
    assert set(writes["actions"]) == {"s3:PutObject", "s3:DeleteObject"}
    assert writes["resources"] == ["${local.result_object_arn}"]
