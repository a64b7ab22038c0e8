# Automatic recovery of jobs whose message is not on the queue (api_client/recovery.py): every
# recovery_schedule_minutes, EventBridge Scheduler runs a one-shot Fargate task,
# `image-jobs sweep --emf`, that re-sends `queue_failed` rows past their grace period and `pending`
# rows whose message is lost, then exits.
#
# Why a scheduled task and not a loop inside the worker: the fleet scales to zero when the queue is
# empty, and a queue outage during an import leaves exactly that: `queue_failed` rows and an empty
# queue, so no worker would start to run the sweep in the one case it exists for. The schedule runs
# whatever the fleet does, on the smallest Fargate size, with rights to send to this queue only.
#
# Metrics with no API call: each run prints one CloudWatch Embedded Metric Format line (namespace
# ImageWorker/Recovery, dimension QueueName) to the awslogs driver; CloudWatch Logs extracts the
# metrics that the two alarms below watch: rows left `queue_failed` too long, and no sweep at all.

variable "enable_recovery_sweep" {
  type        = bool
  description = "Run the recovery sweep (image-jobs sweep) on a schedule: re-sends queue_failed jobs and pending jobs whose message was lost."
  default     = true
}

variable "recovery_schedule_minutes" {
  type        = number
  description = "Minutes between two recovery sweeps (EventBridge Scheduler rate). A queue_failed job waits at most about this plus recovery_grace_seconds after the queue is back."
  default     = 5

  validation {
    condition     = var.recovery_schedule_minutes >= 1 && var.recovery_schedule_minutes <= 60 && floor(var.recovery_schedule_minutes) == var.recovery_schedule_minutes
    error_message = "recovery_schedule_minutes must be a whole number from 1 to 60 (the not-running alarm spans three schedules)."
  }
}

variable "recovery_grace_seconds" {
  type        = number
  description = "SWEEP_GRACE_SECONDS: a queue_failed row untouched this long is re-sent. Longer than a producer's commit-then-send."
  default     = 60

  validation {
    condition     = var.recovery_grace_seconds >= 10 && var.recovery_grace_seconds <= 3600
    error_message = "recovery_grace_seconds must be between 10 and 3600."
  }
}

variable "recovery_pending_after_seconds" {
  type        = number
  description = "SWEEP_PENDING_AFTER_SECONDS: a pending row untouched this long may have lost its message; re-sent only as many as the queue is missing. Well above the visibility timeout, the worker's backoff and SQS's 900 s maximum delay."
  default     = 900

  validation {
    condition     = var.recovery_pending_after_seconds >= 300 && var.recovery_pending_after_seconds <= 1209600
    error_message = "recovery_pending_after_seconds must be between 300 and 1209600 (the longest SQS retention)."
  }
}

variable "recovery_max_per_pass" {
  type        = number
  description = "SWEEP_MAX_PER_PASS: rows one sweep re-sends at most."
  default     = 500

  validation {
    condition     = var.recovery_max_per_pass >= 1 && var.recovery_max_per_pass <= 100000
    error_message = "recovery_max_per_pass must be between 1 and 100000."
  }
}

variable "recovery_max_per_second" {
  type        = number
  description = "SWEEP_MAX_PER_SECOND: messages per second one sweep sends at most."
  default     = 50

  validation {
    condition     = var.recovery_max_per_second >= 1 && var.recovery_max_per_second <= 3000
    error_message = "recovery_max_per_second must be between 1 and 3000 (SQS's batch send rate)."
  }
}

variable "sweep_image" {
  type        = string
  description = "Image of the recovery sweep task (the producer image, Dockerfile target sweep). Null: \"<repository>:<image_tag without -cpu>-sweep\", the tag deploy/ecs/deploy.py pushes and rolls out with the worker."
  default     = null

  validation {
    condition     = var.sweep_image == null || can(regex("^[a-z0-9][a-z0-9./_-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[0-9a-f]{64})$", coalesce(var.sweep_image, "x")))
    error_message = "sweep_image must be an image reference with a tag or a sha256 digest (repository:tag)."
  }
}

variable "recovery_alarm_queue_failed_seconds" {
  type        = number
  description = "Alarm when the oldest queue_failed job (as the sweep reports it) is older than this."
  default     = 900

  validation {
    condition     = var.recovery_alarm_queue_failed_seconds >= 120 && var.recovery_alarm_queue_failed_seconds <= 86400
    error_message = "recovery_alarm_queue_failed_seconds must be between 120 and 86400."
  }
}

locals {
  recovery_count = var.enable_recovery_sweep ? 1 : 0
  # Keep in step with api_client/recovery.py (EMF_NAMESPACE, SweepReport.metrics()).
  recovery_metric_namespace = "ImageWorker/Recovery"
  # The producer image (no ML stack) that deploy/ecs/deploy.py builds, pushes and rolls out with
  # the worker under the same release tag: <tag>-sweep (the CPU worker's image_tag is <tag>-cpu).
  sweep_image             = coalesce(var.sweep_image, "${aws_ecr_repository.this.repository_url}:${trimsuffix(var.image_tag, "-cpu")}-sweep")
  recovery_period_seconds = 60 * var.recovery_schedule_minutes

  # Names read by api_client/settings.py and api_client/recovery.py.
  recovery_environment = merge(local.database_environment, {
    SQS_QUEUE_URL               = aws_sqs_queue.jobs.url
    AWS_REGION                  = local.region
    SWEEP_GRACE_SECONDS         = tostring(var.recovery_grace_seconds)
    SWEEP_PENDING_AFTER_SECONDS = tostring(var.recovery_pending_after_seconds)
    SWEEP_MAX_PER_PASS          = tostring(var.recovery_max_per_pass)
    SWEEP_MAX_PER_SECOND        = tostring(var.recovery_max_per_second)
    EVENTS_TOPIC_ARN            = local.events_topic_env # events.tf: catch up missed events
  })

  recovery_container_name = "recovery"
  recovery_container = {
    name      = local.recovery_container_name
    image     = local.sweep_image
    essential = true
    # Named in full, whatever the image's ENTRYPOINT: tini -> the producer's CLI.
    entryPoint             = ["/usr/bin/tini", "--", "image-jobs"]
    command                = ["sweep", "--emf"]
    user                   = "10001:10001"
    readonlyRootFilesystem = true
    # Fargate: no dockerSecurityOptions (no-new-privileges); capabilities may only be dropped.
    linuxParameters = { capabilities = { drop = ["ALL"] } }
    stopTimeout     = 30
    environment     = [for k in sort(keys(local.recovery_environment)) : { name = k, value = local.recovery_environment[k] }]
    secrets         = local.sweep_database_secrets
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        "awslogs-group"         = aws_cloudwatch_log_group.worker.name
        "awslogs-region"        = local.region
        "awslogs-stream-prefix" = "recovery"
      }
    }
  }
}

# The execution role is the worker's (same repository, log group and DATABASE_URL secret); the
# task role is the sweep's own.
resource "aws_ecs_task_definition" "recovery" {
  count                    = local.recovery_count
  family                   = "${var.name}-recovery"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = "256"
  memory                   = "512"
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.recovery[0].arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  container_definitions = jsonencode([local.recovery_container])
  tags                  = local.tags

  lifecycle {
    precondition {
      condition     = var.recovery_pending_after_seconds > var.visibility_timeout_seconds && var.recovery_pending_after_seconds > var.recovery_grace_seconds
      error_message = "recovery_pending_after_seconds must exceed visibility_timeout_seconds and recovery_grace_seconds: a pending row is not lost while its message may still be in flight."
    }
  }
}

# ---------------------------------------------------------------------------------------------
# Task role: exactly what one sweep calls (api_client/recovery.py): SendMessageBatch (IAM action
# sqs:SendMessage) and GetQueueAttributes (the queue's depth, to bound re-sends of pending rows)
# on this queue. The database is reached with the DATABASE_URL secret, not IAM.
# ---------------------------------------------------------------------------------------------
resource "aws_iam_role" "recovery" {
  count              = local.recovery_count
  name_prefix        = "${var.name}-sweep-"
  description        = "${var.name}: the recovery sweep (re-send unsent jobs to this queue)"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = local.tags
}

data "aws_iam_policy_document" "recovery" {
  statement {
    sid       = "ResendJobs"
    actions   = ["sqs:SendMessage", "sqs:GetQueueAttributes"]
    resources = [aws_sqs_queue.jobs.arn]
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

resource "aws_iam_role_policy" "recovery" {
  count  = local.recovery_count
  name   = "recovery-sweep"
  role   = aws_iam_role.recovery[0].id
  policy = data.aws_iam_policy_document.recovery.json
}

# ---------------------------------------------------------------------------------------------
# The schedule and the role it runs the task with: RunTask of this task family in this cluster,
# and PassRole of the two roles the task uses, to ECS tasks only.
# ---------------------------------------------------------------------------------------------
data "aws_iam_policy_document" "scheduler_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["scheduler.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role" "scheduler" {
  count              = local.recovery_count
  name_prefix        = "${var.name}-sched-"
  description        = "${var.name}: EventBridge Scheduler runs the recovery sweep task"
  assume_role_policy = data.aws_iam_policy_document.scheduler_assume.json
  tags               = local.tags
}

data "aws_iam_policy_document" "scheduler" {
  count = local.recovery_count

  statement {
    sid       = "RunTheSweepTask"
    actions   = ["ecs:RunTask"]
    resources = ["${aws_ecs_task_definition.recovery[0].arn_without_revision}:*"]
    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [aws_ecs_cluster.this.arn]
    }
  }

  # propagate_tags = TASK_DEFINITION: RunTask tags the task it starts, which ECS authorises as
  # ecs:TagResource on that task.
  statement {
    sid       = "TagTheSweepTask"
    actions   = ["ecs:TagResource"]
    resources = ["arn:${local.partition}:ecs:${local.region}:${local.account_id}:task/${aws_ecs_cluster.this.name}/*"]
    condition {
      test     = "StringEquals"
      variable = "ecs:CreateAction"
      values   = ["RunTask"]
    }
  }

  statement {
    sid       = "PassTheSweepRoles"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.execution.arn, aws_iam_role.recovery[0].arn]
    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ecs-tasks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "scheduler" {
  count  = local.recovery_count
  name   = "run-recovery-sweep"
  role   = aws_iam_role.scheduler[0].id
  policy = data.aws_iam_policy_document.scheduler[0].json
}

resource "aws_scheduler_schedule" "recovery" {
  #checkov:skip=CKV_AWS_297:The schedule holds no secret (a task definition ARN, subnet and security group IDs); the AWS-owned key encrypts it.
  count       = local.recovery_count
  name        = "${var.name}-recovery-sweep"
  description = "image-jobs sweep: re-send queue_failed jobs and jobs whose message was lost"

  schedule_expression = var.recovery_schedule_minutes == 1 ? "rate(1 minute)" : "rate(${var.recovery_schedule_minutes} minutes)"

  flexible_time_window {
    mode = "OFF"
  }

  target {
    arn      = aws_ecs_cluster.this.arn
    role_arn = aws_iam_role.scheduler[0].arn

    ecs_parameters {
      # deploy.py points the target at each release's sweep revision (<tag>-sweep) and back on a
      # rollback; `ignore_changes` below keeps a later apply from undoing that.
      task_definition_arn = aws_ecs_task_definition.recovery[0].arn
      launch_type         = "FARGATE"
      task_count          = 1
      propagate_tags      = "TASK_DEFINITION"

      network_configuration {
        subnets          = var.subnet_ids
        security_groups  = [aws_security_group.tasks.id]
        assign_public_ip = false
      }
    }

    # A missed run is made up by the next one; do not pile runs up.
    retry_policy {
      maximum_event_age_in_seconds = local.recovery_period_seconds
      maximum_retry_attempts       = 0
    }
  }

  lifecycle {
    ignore_changes = [target[0].ecs_parameters[0].task_definition_arn]
  }
}

# ---------------------------------------------------------------------------------------------
# Alarms on the metrics each sweep logs (EMF). They work while the fleet is scaled to zero, which
# the worker's Prometheus gauges cannot.
# ---------------------------------------------------------------------------------------------
resource "aws_cloudwatch_metric_alarm" "queue_failed_stuck" {
  count               = local.recovery_count
  alarm_name          = "${var.name}-queue-failed-stuck"
  alarm_description   = "A job of ${local.queue_name} has been queue_failed (its message never sent) for over ${var.recovery_alarm_queue_failed_seconds}s: SQS still refuses the sweep's sends. Check `image-jobs health` and the sweep's log lines (SendFailures)."
  namespace           = local.recovery_metric_namespace
  metric_name         = "OldestQueueFailedAgeSeconds"
  dimensions          = { QueueName = aws_sqs_queue.jobs.name }
  statistic           = "Maximum"
  period              = local.recovery_period_seconds
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.recovery_alarm_queue_failed_seconds
  treat_missing_data  = "notBreaching" # no sweep at all: the sweep-not-running alarm
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
  tags                = local.tags
}

resource "aws_cloudwatch_metric_alarm" "sweep_not_running" {
  count               = local.recovery_count
  alarm_name          = "${var.name}-sweep-not-running"
  alarm_description   = "No recovery sweep of ${local.queue_name} reported for three schedules: queue_failed jobs are not being re-sent. Check the schedule ${var.name}-recovery-sweep (target errors), the task's stopped reason and its logs (stream prefix recovery)."
  namespace           = local.recovery_metric_namespace
  metric_name         = "SweepPasses"
  dimensions          = { QueueName = aws_sqs_queue.jobs.name }
  statistic           = "Sum"
  period              = local.recovery_period_seconds
  evaluation_periods  = 3
  datapoints_to_alarm = 3
  comparison_operator = "LessThanThreshold"
  threshold           = 1
  treat_missing_data  = "breaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
  tags                = local.tags
}

output "recovery_schedule_name" {
  description = "The EventBridge Scheduler schedule that runs the recovery sweep (null when disabled)."
  value       = one(aws_scheduler_schedule.recovery[*].name)
}

output "recovery_task_definition_arn" {
  description = "Task definition of the recovery sweep; run one pass by hand with `aws ecs run-task` (Fargate, the tasks' subnets and security group)."
  value       = one(aws_ecs_task_definition.recovery[*].arn)
}

output "recovery_task_definition_family" {
  description = "Task definition family of the recovery sweep (null when disabled): deploy.py registers each release's revision (image <tag>-sweep) in it; the schedule runs the latest."
  value       = one(aws_ecs_task_definition.recovery[*].family)
}

output "recovery_task_role_arn" {
  description = "Role of the recovery sweep task (sqs:SendMessage and sqs:GetQueueAttributes on the job queue)."
  value       = one(aws_iam_role.recovery[*].arn)
}
