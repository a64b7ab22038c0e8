# Service autoscaling on queue depth. Three policies on one scalable target (0..max_tasks):
#
# 1. Target tracking on BACKLOG PER TASK: (visible + in-flight messages) / DESIRED tasks, held at
#    local.backlog_per_task_target = acceptable_wait_seconds / seconds_per_image. One task clears
#    1/seconds_per_image images a second, so a backlog of B per task waits B * seconds_per_image
#    seconds; holding B at the target keeps the wait at acceptable_wait_seconds. Target tracking
#    sets desired = desired * metric / target = (visible + in_flight) / target: KEDA's
#    aws-sqs-queue rule (replicas = ceil(messages / target), in-flight counted).
#    Why DESIRED and not RUNNING tasks: a GPU cold start (instance launch, multi-GB image pull,
#    model warm-up) lasts minutes, longer than the cooldown. Divided by running tasks, the backlog
#    stays inflated while the asked-for tasks start, every evaluation asks for more, and desired
#    climbs to max_tasks (overshoot). Divided by desired tasks, the metric drops the moment the
#    tasks are asked for. In-flight messages count, so a busy service is not scaled in under its
#    own work. bench/scaling.py replays both (make bench-scaling; docs/deploy.md has the table).
#
# 2. Step scaling FROM ZERO. With 0 desired tasks the ratio divides by zero: CloudWatch metric
#    math drops such data points, so target tracking has no data and never acts. A separate alarm
#    watches "visible messages while the service wants no task" (IF(FILL(desired, 0) == 0,
#    visible, 0); FILL because a missing count means none) and its step policy sets the service
#    to ceil(visible / target) tasks at once (ExactCapacity steps of one target each, at most
#    scale_from_zero_max_tasks): one cold start for a burst, not 0 -> 1 -> N. DesiredTaskCount
#    turns the alarm off as soon as tasks are asked for; target tracking then takes over.
#
# 3. Step scaling TO ZERO. When the queue has had no visible and no in-flight message for
#    scale_to_zero_after_minutes, the service is set to exactly 0 tasks (target tracking's own
#    scale-in is proportional and gradual, and cannot be relied on to reach 0). In-flight messages
#    count, so a busy task is never scaled away. An empty queue that SQS stops reporting (inactive
#    queue) is missing data, treated as empty.
#
# ECS managed scaling (capacity.tf) then follows the tasks: 0 tasks -> 0 GPU instances.

locals {
  # From zero: step k (0-based) covers [k * target, (k + 1) * target) visible messages and asks
  # for k + 1 tasks; the last step is open-ended.
  from_zero_steps = min(var.max_tasks, var.scale_from_zero_max_tasks)
}

resource "aws_appautoscaling_target" "service" {
  service_namespace  = "ecs"
  scalable_dimension = "ecs:service:DesiredCount"
  resource_id        = "service/${aws_ecs_cluster.this.name}/${aws_ecs_service.worker.name}"
  min_capacity       = 0
  max_capacity       = var.max_tasks
  tags               = local.tags
}

resource "aws_appautoscaling_policy" "backlog_per_task" {
  name               = "${var.name}-backlog-per-task"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.service.service_namespace
  scalable_dimension = aws_appautoscaling_target.service.scalable_dimension
  resource_id        = aws_appautoscaling_target.service.resource_id

  target_tracking_scaling_policy_configuration {
    target_value       = local.backlog_per_task_target
    scale_in_cooldown  = var.scale_in_cooldown_seconds
    scale_out_cooldown = var.scale_out_cooldown_seconds
    disable_scale_in   = false

    customized_metric_specification {
      metrics {
        id          = "visible"
        label       = "Messages waiting in the job queue"
        return_data = false
        metric_stat {
          stat = "Average"
          metric {
            namespace   = "AWS/SQS"
            metric_name = "ApproximateNumberOfMessagesVisible"
            dimensions {
              name  = "QueueName"
              value = aws_sqs_queue.jobs.name
            }
          }
        }
      }

      metrics {
        id          = "in_flight"
        label       = "Messages being processed"
        return_data = false
        metric_stat {
          stat = "Average"
          metric {
            namespace   = "AWS/SQS"
            metric_name = "ApproximateNumberOfMessagesNotVisible"
            dimensions {
              name  = "QueueName"
              value = aws_sqs_queue.jobs.name
            }
          }
        }
      }

      metrics {
        id          = "desired"
        label       = "Desired worker tasks"
        return_data = false
        metric_stat {
          stat = "Average"
          metric {
            namespace   = "ECS/ContainerInsights"
            metric_name = "DesiredTaskCount"
            dimensions {
              name  = "ClusterName"
              value = aws_ecs_cluster.this.name
            }
            dimensions {
              name  = "ServiceName"
              value = aws_ecs_service.worker.name
            }
          }
        }
      }

      metrics {
        id          = "backlog_per_task"
        label       = "Backlog per task ((visible + in flight) / desired)"
        expression  = "(visible + in_flight) / desired"
        return_data = true
      }
    }
  }
}

# --- 2. from zero ------------------------------------------------------------------------------
resource "aws_appautoscaling_policy" "scale_from_zero" {
  name               = "${var.name}-scale-from-zero"
  policy_type        = "StepScaling"
  service_namespace  = aws_appautoscaling_target.service.service_namespace
  scalable_dimension = aws_appautoscaling_target.service.scalable_dimension
  resource_id        = aws_appautoscaling_target.service.resource_id

  step_scaling_policy_configuration {
    adjustment_type         = "ExactCapacity"
    metric_aggregation_type = "Maximum"
    cooldown                = var.scale_out_cooldown_seconds

    # Bounds are relative to the alarm threshold (0 visible messages).
    dynamic "step_adjustment" {
      for_each = range(local.from_zero_steps - 1)
      content {
        metric_interval_lower_bound = step_adjustment.value * local.backlog_per_task_target
        metric_interval_upper_bound = (step_adjustment.value + 1) * local.backlog_per_task_target
        scaling_adjustment          = step_adjustment.value + 1
      }
    }

    step_adjustment {
      metric_interval_lower_bound = (local.from_zero_steps - 1) * local.backlog_per_task_target
      scaling_adjustment          = local.from_zero_steps
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "messages_while_no_task" {
  alarm_name          = "${var.name}-messages-while-no-task"
  alarm_description   = "Messages wait in ${local.queue_name} while the service wants no task: start ceil(visible / target) tasks (scale from zero)."
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  evaluation_periods  = 1
  datapoints_to_alarm = 1
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_appautoscaling_policy.scale_from_zero.arn]

  metric_query {
    id          = "visible"
    return_data = false
    metric {
      namespace   = "AWS/SQS"
      metric_name = "ApproximateNumberOfMessagesVisible"
      period      = 60
      stat        = "Maximum"
      dimensions = {
        QueueName = aws_sqs_queue.jobs.name
      }
    }
  }

  metric_query {
    id          = "desired"
    return_data = false
    metric {
      namespace   = "ECS/ContainerInsights"
      metric_name = "DesiredTaskCount"
      period      = 60
      stat        = "Maximum"
      dimensions = {
        ClusterName = aws_ecs_cluster.this.name
        ServiceName = aws_ecs_service.worker.name
      }
    }
  }

  metric_query {
    id          = "waiting_with_no_task"
    label       = "Visible messages while no task runs"
    expression  = "IF(FILL(desired, 0) == 0, visible, 0)"
    return_data = true
  }

  tags = local.tags
}

# --- 3. to zero --------------------------------------------------------------------------------
resource "aws_appautoscaling_policy" "scale_to_zero" {
  name               = "${var.name}-scale-to-zero"
  policy_type        = "StepScaling"
  service_namespace  = aws_appautoscaling_target.service.service_namespace
  scalable_dimension = aws_appautoscaling_target.service.scalable_dimension
  resource_id        = aws_appautoscaling_target.service.resource_id

  step_scaling_policy_configuration {
    adjustment_type         = "ExactCapacity"
    metric_aggregation_type = "Maximum"
    cooldown                = var.scale_in_cooldown_seconds

    step_adjustment {
      metric_interval_upper_bound = 0
      scaling_adjustment          = 0
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "queue_idle" {
  alarm_name          = "${var.name}-queue-idle"
  alarm_description   = "${local.queue_name} has had nothing visible or in flight for ${var.scale_to_zero_after_minutes} minutes: scale the service to zero."
  comparison_operator = "LessThanOrEqualToThreshold"
  threshold           = 0
  evaluation_periods  = var.scale_to_zero_after_minutes
  datapoints_to_alarm = var.scale_to_zero_after_minutes
  # SQS stops publishing metrics for a queue inactive for hours: no data means empty.
  treat_missing_data = "breaching"
  alarm_actions      = [aws_appautoscaling_policy.scale_to_zero.arn]

  metric_query {
    id          = "visible"
    return_data = false
    metric {
      namespace   = "AWS/SQS"
      metric_name = "ApproximateNumberOfMessagesVisible"
      period      = 60
      stat        = "Maximum"
      dimensions = {
        QueueName = aws_sqs_queue.jobs.name
      }
    }
  }

  metric_query {
    id          = "in_flight"
    return_data = false
    metric {
      namespace   = "AWS/SQS"
      metric_name = "ApproximateNumberOfMessagesNotVisible"
      period      = 60
      stat        = "Maximum"
      dimensions = {
        QueueName = aws_sqs_queue.jobs.name
      }
    }
  }

  metric_query {
    id          = "outstanding"
    label       = "Visible + in-flight messages"
    expression  = "visible + in_flight"
    return_data = true
  }

  tags = local.tags
}
