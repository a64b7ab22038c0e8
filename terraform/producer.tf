# The producer's policy (output producer_policy_json): exactly what api_client and `image-jobs`
# call, and where. The module attaches it to nothing; the producer's role is the caller's.
# tests/test_deploy_terraform.py derives the actions from the `sqs.<method>(` / `s3.<method>(`
# calls in api_client/ and fails when the code calls something this policy lacks (or when the
# policy grants what no code calls).
#
#  - jobs queue: SendMessage (send_message, send_message_batch), and the health check's
#    GetQueueUrl / GetQueueAttributes (`admin.stats` reads depths and the RedrivePolicy);
#  - DLQ: `image-jobs redrive` receives, deletes and re-shows messages, `stats` reads its depth;
#  - source prefix: PutObject (upload_source), GetObject (HeadObject of `enqueue`);
#  - source bucket: ListBucket (HeadBucket of the health check; makes a missing key a 404);
#  - result prefix: GetObject (`result_url` presigns GETs that run with this role's rights) and
#    DeleteObject (`delete_jobs` removes a purged job's outputs);
#  - the worker service: ecs:DescribeServices (`check_health` reports running/desired tasks).

locals {
  producer_queue_actions = ["sqs:SendMessage", "sqs:GetQueueUrl", "sqs:GetQueueAttributes"]
  producer_dlq_actions = [
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:GetQueueUrl",
    "sqs:GetQueueAttributes",
  ]
  producer_object_actions = ["s3:PutObject", "s3:GetObject"]
  producer_bucket_actions = ["s3:ListBucket"]
  producer_result_actions = ["s3:GetObject", "s3:DeleteObject"]
  producer_service_actions = ["ecs:DescribeServices"]
}

data "aws_iam_policy_document" "producer" {
  statement {
    sid       = "SendJobs"
    actions   = local.producer_queue_actions
    resources = [aws_sqs_queue.jobs.arn]
  }

  statement {
    sid       = "RedriveDeadLetters"
    actions   = local.producer_dlq_actions
    resources = [aws_sqs_queue.dlq.arn]
  }

  statement {
    sid       = "UploadSourcePhotos"
    actions   = local.producer_object_actions
    resources = [local.source_object_arn]
  }

  statement {
    sid       = "SourceBucketHealth"
    actions   = local.producer_bucket_actions
    resources = [local.source_bucket_arn]
  }

  # An SSE-KMS source bucket: uploads encrypt (GenerateDataKey), HeadObject/GetObject decrypt.
  dynamic "statement" {
    for_each = var.source_bucket_kms_key_arn == null ? [] : [1]
    content {
      sid       = "SourceBucketKey"
      actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
      resources = [var.source_bucket_kms_key_arn]
      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["s3.${local.region}.amazonaws.com"]
      }
    }
  }

  statement {
    sid       = "ReadAndPurgeResults"
    actions   = local.producer_result_actions
    resources = [local.result_object_arn]
  }

  # An SSE-KMS result bucket: presigned result URLs (result_url) decrypt as this role.
  dynamic "statement" {
    for_each = var.result_bucket_kms_key_arn == null ? [] : [1]
    content {
      sid       = "ResultBucketKey"
      actions   = ["kms:Decrypt"]
      resources = [var.result_bucket_kms_key_arn]
      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["s3.${local.region}.amazonaws.com"]
      }
    }
  }

  statement {
    sid       = "WorkerServiceHealth"
    actions   = local.producer_service_actions
    resources = [aws_ecs_service.worker.id]
  }

  dynamic "statement" {
    for_each = var.queue_kms_key_arn == null ? [] : [1]
    content {
      sid       = "QueueKey"
      actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
      resources = [var.queue_kms_key_arn]
    }
  }
}
