# Job-finished events (optional): an SNS topic the worker publishes to after it completes, fails or
# cancels a job (EVENTS_TOPIC_ARN), and that the recovery sweep publishes missed events to (the
# outbox on the job row: at least once, see README "Hearing back"). Other services subscribe to
# the `events_topic_arn` output. Encrypted with a key of its own, so that the publishers' and
# SNS's use of it is granted here and nothing else shares it.

variable "events_topic_enabled" {
  type        = bool
  description = "Create the job-finished events topic and have the worker and the recovery sweep publish to it (EVENTS_TOPIC_ARN)."
  default     = false
}

locals {
  events_count     = var.events_topic_enabled ? 1 : 0
  events_topic_arn = one(aws_sns_topic.events[*].arn)
  # The worker's and the sweep's environment: empty means no events (the settings treat an empty
  # value as unset).
  events_topic_env = var.events_topic_enabled ? aws_sns_topic.events[0].arn : ""
  # Publishing to a topic encrypted with a customer key needs these on the key.
  events_publish_key_actions = ["kms:GenerateDataKey*", "kms:Decrypt"]
}

data "aws_iam_policy_document" "events_key" {
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

  # SNS itself decrypts to deliver to subscribers (SQS, Lambda, HTTPS) of topics in this account.
  statement {
    sid       = "SnsDeliversFromTopicsOfThisAccount"
    actions   = local.events_publish_key_actions
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["sns.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_kms_key" "events" {
  count                   = local.events_count
  description             = "${var.name}: job-finished events topic"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.events_key.json
  tags                    = local.tags
}

resource "aws_kms_alias" "events" {
  count         = local.events_count
  name          = "alias/${var.name}-events"
  target_key_id = aws_kms_key.events[0].key_id
}

resource "aws_sns_topic" "events" {
  count             = local.events_count
  name              = "${var.name}-job-events"
  kms_master_key_id = aws_kms_key.events[0].arn
  tags              = local.tags
}

# Publish: the worker (worker/events.py) and the recovery sweep (api_client/event_catchup.py)
# call sns:PublishBatch, which IAM authorises as sns:Publish.
data "aws_iam_policy_document" "events_publish" {
  count = local.events_count

  statement {
    sid       = "PublishJobEvents"
    actions   = ["sns:Publish"]
    resources = [aws_sns_topic.events[0].arn]
  }

  statement {
    sid       = "EncryptJobEvents"
    actions   = local.events_publish_key_actions
    resources = [aws_kms_key.events[0].arn]
  }
}

resource "aws_iam_role_policy" "worker_events" {
  count  = local.events_count
  name   = "publish-job-events"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.events_publish[0].json
}

resource "aws_iam_role_policy" "recovery_events" {
  count  = var.events_topic_enabled && var.enable_recovery_sweep ? 1 : 0
  name   = "publish-job-events"
  role   = aws_iam_role.recovery[0].id
  policy = data.aws_iam_policy_document.events_publish[0].json
}

output "events_topic_arn" {
  description = "The job-finished events topic (null unless events_topic_enabled): subscribe services here; the message is the event JSON, the `status` message attribute filters."
  value       = local.events_topic_arn
}

output "events_kms_key_arn" {
  description = "The key that encrypts the events topic (null unless events_topic_enabled): an encrypted SQS subscriber queue's key must let sns.amazonaws.com use its own key, not this one."
  value       = one(aws_kms_key.events[*].arn)
}
