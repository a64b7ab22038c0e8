# The worker's log group (awslogs driver; JSON lines from structlog), encrypted with a key of its
# own that only this account, CloudWatch Logs (for this log group) and CloudWatch alarms (for the
# module's alarm topic) may use. The same key encrypts the DATABASE_URL secrets the module creates.

data "aws_iam_policy_document" "logs_key" {
  # In a key policy, Resource "*" means "this key": key policies are attached to one key.
  #checkov:skip=CKV_AWS_109:Key policy: the resource is this key only; the account root statement is the KMS default that lets IAM policies grant access.
  #checkov:skip=CKV_AWS_111:Key policy: the resource is this key only (see above).
  #checkov:skip=CKV_AWS_356:Key policy: "*" is the only valid Resource in a key policy and means this key.
  statement {
    sid       = "AccountAdministration"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  statement {
    sid = "CloudWatchLogsForThisLogGroup"
    actions = [
      "kms:Encrypt*",
      "kms:Decrypt*",
      "kms:ReEncrypt*",
      "kms:GenerateDataKey*",
      "kms:Describe*",
    ]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${local.region}.amazonaws.com"]
    }
    condition {
      test     = "ArnEquals"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:/ecs/${var.name}"]
    }
  }

  # The module's alarm topic (alarms.tf) is encrypted with this key: CloudWatch alarms publish to
  # it only if they may use the key (they cannot use the AWS managed alias/aws/sns).
  statement {
    sid       = "CloudWatchAlarmsPublish"
    actions   = ["kms:GenerateDataKey*", "kms:Decrypt"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["cloudwatch.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_kms_key" "this" {
  description             = "${var.name}: worker logs and DATABASE_URL secret"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.logs_key.json
  tags                    = local.tags
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.this.key_id
}

resource "aws_cloudwatch_log_group" "worker" {
  name              = "/ecs/${var.name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = local.tags
}
