# Three roles:
#  - instance: the GPU container instances (ECS agent registration; AWS managed policy); GPU only.
#  - execution: used by the ECS agent to start a task: pull from this repository, write to this
#    log group, read this secret.
#  - task: what the worker process itself may do, and nothing more: this queue, the source and
#    result prefixes (and AMP remote write for the sidecar).

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = ["arn:${local.partition}:ecs:${local.region}:${local.account_id}:*"]
    }
  }
}

# ---------------------------------------------------------------------------------------------
# Execution role
# ---------------------------------------------------------------------------------------------
resource "aws_iam_role" "execution" {
  name_prefix        = "${var.name}-exec-"
  description        = "${var.name}: ECS task execution (image pull, logs, DATABASE_URL secret)"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = local.tags
}

data "aws_iam_policy_document" "execution" {
  statement {
    sid = "EcrAuthToken"
    # GetAuthorizationToken has no resource type: it cannot be scoped to a repository.
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }

  statement {
    sid       = "PullThisRepository"
    actions   = ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]
    resources = [aws_ecr_repository.this.arn]
  }

  statement {
    sid       = "WriteThisLogGroup"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.worker.arn}:*"]
  }

  # The worker's secret and the recovery sweep's (the same ARN when the sweep has none).
  statement {
    sid       = "ReadDatabaseUrlSecret"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = distinct([local.database_url_secret_arn, local.sweep_database_url_secret_arn])
  }

  dynamic "statement" {
    for_each = length(local.secret_kms_key_arns) > 0 ? [1] : []
    content {
      sid       = "DecryptDatabaseUrlSecret"
      actions   = ["kms:Decrypt"]
      resources = local.secret_kms_key_arns
      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["secretsmanager.${local.region}.amazonaws.com"]
      }
    }
  }
}

resource "aws_iam_role_policy" "execution" {
  name   = "execution"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution.json
}

# ---------------------------------------------------------------------------------------------
# Task role (the worker)
# ---------------------------------------------------------------------------------------------
resource "aws_iam_role" "task" {
  name_prefix        = "${var.name}-task-"
  description        = "${var.name}: the worker (this queue, source/result prefixes, task protection)"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = local.tags
}

locals {
  # What the worker calls (worker/consumer.py, worker/queue_stats.py): ReceiveMessage,
  # DeleteMessageBatch, ChangeMessageVisibility(Batch), GetQueueAttributes, GetQueueUrl. IAM
  # authorises the *Batch calls with the single-message action names (there is no
  # sqs:DeleteMessageBatch action).
  task_sqs_actions = [
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:GetQueueUrl",
    "sqs:GetQueueAttributes",
  ]
  task_dlq_actions  = ["sqs:GetQueueUrl", "sqs:GetQueueAttributes"]
  source_bucket_arn = "arn:${local.partition}:s3:::${var.source_bucket}"
  source_object_arn = "arn:${local.partition}:s3:::${var.source_bucket}/${var.source_prefix}*"
  result_object_arn = "arn:${local.partition}:s3:::${local.result_bucket}/${var.result_prefix}*"
  result_bucket_kms_key_arn = (
    var.result_bucket_kms_key_arn != null ? var.result_bucket_kms_key_arn
    : local.result_bucket == var.source_bucket ? var.source_bucket_kms_key_arn : null
  )
}

data "aws_iam_policy_document" "task" {
  statement {
    sid       = "ConsumeThisQueue"
    actions   = local.task_sqs_actions
    resources = [aws_sqs_queue.jobs.arn]
  }

  # worker/queue_stats.py reports the DLQ's depth as a gauge: it finds the DLQ from the queue's
  # RedrivePolicy (GetQueueUrl) and reads its counts (GetQueueAttributes). Read-only.
  statement {
    sid       = "ReadDlqDepth"
    actions   = local.task_dlq_actions
    resources = [aws_sqs_queue.dlq.arn]
  }

  dynamic "statement" {
    for_each = var.queue_kms_key_arn == null ? [] : [1]
    content {
      sid       = "DecryptQueueMessages"
      actions   = ["kms:Decrypt"]
      resources = [var.queue_kms_key_arn]
    }
  }

  statement {
    sid       = "ReadSourcePhotos"
    actions   = ["s3:GetObject"]
    resources = [local.source_object_arn]
  }

  # Without s3:ListBucket, S3 answers a GetObject of a missing key with 403 AccessDenied instead
  # of 404 NoSuchKey, and the worker cannot tell "no such photo" (permanent: fail the job now)
  # from "not allowed" (an operator's fix). Granted on the whole bucket, not under an s3:prefix
  # condition: a GetObject carries no s3:prefix, and AWS documents the 404 only for a caller that
  # holds s3:ListBucket. It discloses key names, never contents. `image-worker selfcheck` lists one
  # key to prove the grant.
  statement {
    sid       = "ListSourceBucket"
    actions   = ["s3:ListBucket"]
    resources = [local.source_bucket_arn]
  }

  # DeleteObject: a job cancelled after its upload removes what it wrote (worker/cancellation.py).
  statement {
    sid       = "WriteCutouts"
    actions   = ["s3:PutObject", "s3:DeleteObject"]
    resources = [local.result_object_arn]
  }

  # SSE-KMS buckets: S3 decrypts sources and encrypts cut-outs with the caller's rights on the
  # key, and only through S3 (kms:ViaService).
  dynamic "statement" {
    for_each = var.source_bucket_kms_key_arn == null ? [] : [1]
    content {
      sid       = "DecryptSourcePhotos"
      actions   = ["kms:Decrypt"]
      resources = [var.source_bucket_kms_key_arn]
      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["s3.${local.region}.amazonaws.com"]
      }
    }
  }

  dynamic "statement" {
    for_each = local.result_bucket_kms_key_arn == null ? [] : [1]
    content {
      sid       = "EncryptCutouts"
      actions   = ["kms:GenerateDataKey"]
      resources = [local.result_bucket_kms_key_arn]
      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["s3.${local.region}.amazonaws.com"]
      }
    }
  }

  dynamic "statement" {
    for_each = var.enable_metrics_sidecar ? [1] : []
    content {
      sid       = "RemoteWriteMetrics"
      actions   = ["aps:RemoteWrite"]
      resources = [local.amp_workspace_arn]
    }
  }
}

resource "aws_iam_role_policy" "task" {
  name   = "worker"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.task.json
}

# ---------------------------------------------------------------------------------------------
# Container instance role
# ---------------------------------------------------------------------------------------------
data "aws_iam_policy_document" "ec2_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "instance" {
  count              = local.gpu ? 1 : 0
  name_prefix        = "${var.name}-inst-"
  description        = "${var.name}: GPU container instances (ECS agent)"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy_attachment" "instance_ecs" {
  count      = local.gpu ? 1 : 0
  role       = aws_iam_role.instance[0].name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role"
}

resource "aws_iam_role_policy_attachment" "instance_ssm" {
  count      = local.gpu ? 1 : 0
  role       = aws_iam_role.instance[0].name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_instance_profile" "instance" {
  count       = local.gpu ? 1 : 0
  name_prefix = "${var.name}-inst-"
  role        = aws_iam_role.instance[0].name
  tags        = local.tags
}
