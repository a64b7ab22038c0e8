# The job queue and its dead-letter queue. A message is a pointer ({"job_id": ...}); the job row in
# PostgreSQL is the source of truth. After max_receive_count receives SQS moves the message to the
# DLQ; the worker fails the row on the same attempt (MAX_ATTEMPTS = max_receive_count).

resource "aws_sqs_queue" "dlq" {
  name                      = local.dlq_name
  message_retention_seconds = var.dlq_message_retention_seconds
  receive_wait_time_seconds = 20

  sqs_managed_sse_enabled           = var.queue_kms_key_arn == null ? true : null
  kms_master_key_id                 = var.queue_kms_key_arn
  kms_data_key_reuse_period_seconds = var.queue_kms_key_arn == null ? null : 300

  tags = local.tags
}

resource "aws_sqs_queue" "jobs" {
  name                       = local.queue_name
  visibility_timeout_seconds = var.visibility_timeout_seconds
  message_retention_seconds  = var.message_retention_seconds
  # Long polling: the worker asks with WaitTimeSeconds=20 too; empty receives cost nothing extra.
  receive_wait_time_seconds = 20

  sqs_managed_sse_enabled           = var.queue_kms_key_arn == null ? true : null
  kms_master_key_id                 = var.queue_kms_key_arn
  kms_data_key_reuse_period_seconds = var.queue_kms_key_arn == null ? null : 300

  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dlq.arn
    maxReceiveCount     = var.max_receive_count
  })

  tags = local.tags

  lifecycle {
    precondition {
      condition     = var.visibility_timeout_seconds > var.heartbeat_interval_seconds
      error_message = "visibility_timeout_seconds must be greater than heartbeat_interval_seconds, or messages reappear while being processed."
    }
  }
}

# Only the job queue may use the DLQ as its dead-letter target.
resource "aws_sqs_queue_redrive_allow_policy" "dlq" {
  queue_url = aws_sqs_queue.dlq.id
  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.jobs.arn]
  })
}
