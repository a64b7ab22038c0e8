# Operator alarms: dead letters and a stuck queue. Every alarm of the module notifies
# local.alarm_actions: var.alarm_actions, or (null) a topic of the module's own. An empty list
# would notify nobody: refused unless alarms_silent = true.

resource "aws_sns_topic" "alarms" {
  count = var.alarm_actions == null ? 1 : 0
  name  = "${var.name}-alarms"
  # The module's key: its policy lets CloudWatch alarms use it (logs.tf). Alarms cannot publish
  # to a topic under the AWS managed alias/aws/sns.
  kms_master_key_id = aws_kms_key.this.arn
  tags              = local.tags
}

resource "aws_sns_topic_subscription" "alarm_emails" {
  for_each  = var.alarm_actions == null ? toset(var.alarm_emails) : toset([])
  topic_arn = aws_sns_topic.alarms[0].arn
  protocol  = "email"
  endpoint  = each.value
}

locals {
  alarm_actions = coalesce(var.alarm_actions, aws_sns_topic.alarms[*].arn)
}

resource "aws_cloudwatch_metric_alarm" "dlq_depth" {
  alarm_name          = "${var.name}-dlq-not-empty"
  alarm_description   = "Messages in ${local.dlq_name}: jobs failed ${var.max_receive_count} times. Inspect the job rows (status failed), fix, then redrive."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = aws_sqs_queue.dlq.name }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.dlq_alarm_threshold
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
  tags                = local.tags

  lifecycle {
    precondition {
      condition     = var.alarm_actions == null || length(coalesce(var.alarm_actions, [])) > 0 || var.alarms_silent
      error_message = "alarm_actions = [] notifies nobody: pass SNS topic ARNs, leave it null (the module creates a topic; alarm_emails subscribe to it), or set alarms_silent = true."
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "oldest_message_age" {
  alarm_name          = "${var.name}-oldest-message-age"
  alarm_description   = "The oldest message in ${local.queue_name} is older than ${var.oldest_message_alarm_seconds}s: workers are not keeping up, not starting (GPU capacity, REQUIRE_GPU), or failing."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateAgeOfOldestMessage"
  dimensions          = { QueueName = aws_sqs_queue.jobs.name }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 5
  datapoints_to_alarm = 3
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.oldest_message_alarm_seconds
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
  tags                = local.tags
}
