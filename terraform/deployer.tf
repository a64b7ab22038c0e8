# The deployer's policy (output deployer_policy_json, and the managed policy deployer_policy_arn
# to attach to the CI role): what a release needs, scoped wherever IAM allows. The image push (docker/podman push to
# this repository) and what deploy/ecs/deploy.py calls: register the worker's and the sweep's task
# definition revisions (and tag them), run the selfcheck gate as a one-off task and wait for it,
# update and watch the service, and pass the task definitions' roles to ECS.

locals {
  task_definition_family_arn = "arn:${local.partition}:ecs:${local.region}:${local.account_id}:task-definition"
  deployer_families = compact([
    aws_ecs_task_definition.worker.family,
    one(aws_ecs_task_definition.recovery[*].family),
  ])
  deployer_passed_roles = compact([
    aws_iam_role.execution.arn,
    aws_iam_role.task.arn,
    one(aws_iam_role.recovery[*].arn),
  ])
}

data "aws_iam_policy_document" "deployer" {
  statement {
    sid = "EcrLogin"
    # GetAuthorizationToken has no resource type: it cannot be scoped to a repository.
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }

  statement {
    sid = "PushToThisRepository"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:InitiateLayerUpload",
      "ecr:UploadLayerPart",
      "ecr:CompleteLayerUpload",
      "ecr:PutImage",
      "ecr:BatchGetImage",
      "ecr:DescribeImages",
    ]
    resources = [aws_ecr_repository.this.arn]
  }

  # Registering and describing task definitions take no resource in IAM (no family ARN can scope
  # them). What a registered revision may do is bounded by the roles PassTheTaskRoles lets it name.
  statement {
    sid       = "RegisterAndReadRevisions"
    actions   = ["ecs:RegisterTaskDefinition", "ecs:DescribeTaskDefinition"]
    resources = ["*"]
  }

  statement {
    sid       = "RunTheGate"
    actions   = ["ecs:RunTask"]
    resources = ["${local.task_definition_family_arn}/${aws_ecs_task_definition.worker.family}:*"]
    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [aws_ecs_cluster.this.arn]
    }
  }

  statement {
    sid       = "WatchAndStopTheGate"
    actions   = ["ecs:DescribeTasks", "ecs:StopTask"]
    resources = ["arn:${local.partition}:ecs:${local.region}:${local.account_id}:task/${aws_ecs_cluster.this.name}/*"]
  }

  # Tags on what a release creates: the task definition revisions and the gate's task.
  statement {
    sid     = "TagWhatTheDeployCreates"
    actions = ["ecs:TagResource"]
    resources = concat(
      [for family in local.deployer_families : "${local.task_definition_family_arn}/${family}:*"],
      ["arn:${local.partition}:ecs:${local.region}:${local.account_id}:task/${aws_ecs_cluster.this.name}/*"],
    )
    condition {
      test     = "StringEquals"
      variable = "ecs:CreateAction"
      values   = ["RegisterTaskDefinition", "RunTask"]
    }
  }

  # After a rollout, deploy.py tags the revision (a rollback to it may then skip the gate).
  statement {
    sid       = "TagRolledOutRevisions"
    actions   = ["ecs:TagResource"]
    resources = [for family in local.deployer_families : "${local.task_definition_family_arn}/${family}:*"]
  }

  # The sweep's schedule moves to each release's sweep revision with the service, and back.
  dynamic "statement" {
    for_each = local.recovery_count > 0 ? [1] : []
    content {
      sid       = "MoveTheSweepSchedule"
      actions   = ["scheduler:GetSchedule", "scheduler:UpdateSchedule"]
      resources = [aws_scheduler_schedule.recovery[0].arn]
    }
  }

  dynamic "statement" {
    for_each = local.recovery_count > 0 ? [1] : []
    content {
      sid       = "PassTheSchedulerRole"
      actions   = ["iam:PassRole"]
      resources = [aws_iam_role.scheduler[0].arn]
      condition {
        test     = "StringEquals"
        variable = "iam:PassedToService"
        values   = ["scheduler.amazonaws.com"]
      }
    }
  }

  statement {
    sid       = "RollOutTheService"
    actions   = ["ecs:DescribeServices", "ecs:UpdateService"]
    resources = [aws_ecs_service.worker.id]
  }

  statement {
    sid       = "PassTheTaskRoles"
    actions   = ["iam:PassRole"]
    resources = local.deployer_passed_roles
    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ecs-tasks.amazonaws.com"]
    }
  }
}

resource "aws_iam_policy" "deployer" {
  name_prefix = "${var.name}-deployer-"
  description = "${var.name}: push the image and roll out a release (deploy/ecs/deploy.py)"
  policy      = data.aws_iam_policy_document.deployer.json
  tags        = local.tags
}
