# Service autoscaling on queue depth. Three policies on one scalable target (0..max_tasks):
#
# 1. Target tracking on BACKLOG PER TASK (metric math: visible messages / running tasks), held at
#    local.backlog_per_task_target = acceptable_wait_seconds / seconds_per_image. One task clears
#    1/seconds_per_image images a second, so a backlog of B per task waits B * seconds_per_image
#    seconds; holding B at the target keeps the wait at acceptable_wait_seconds. This policy
#    moves the service between 1 and N tasks in both directions.
#
# 2. Step scaling FROM ZERO. With 0 running tasks the ratio is m1 / 0: CloudWatch metric math
#    drops such data points, so the target-tracking alarms see no data (INSUFFICIENT_DATA) and
#    never act - target tracking alone can never leave 0. A separate alarm watches "visible
#    messages while the service wants no task" (IF(FILL(desired, 0) == 0, visible, 0); FILL
#    because a missing count means none) and adds one task. DesiredTaskCount (not Running) turns
#    the alarm off as soon as the task is asked for, so a slow instance launch does not add more.
#    Once that task runs the ratio has a denominator and target tracking takes over; the alarm
#    is zero whenever the service wants >= 1 task, so it never fights target tracking.
#
# 3. Step scaling TO ZERO. When the queue has had no visible and no in-flight message for
#    scale_to_zero_after_minutes, the service is set to exactly 0 tasks (target tracking's own
#    scale-in is proportional and gradual, and cannot be relied on to reach 0). In-flight messages
#    count, so a busy task is never scaled away; the worker also sets ECS task scale-in
#    protection while it holds messages. An empty queue that SQS stops reporting (inactive queue)
#    is missing data, treated as empty.
#
# ECS managed scaling (capacity.tf) then follows the tasks: 0 tasks -> 0 GPU instances.

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
        id          = "running"
        label       = "Running worker tasks"
        return_data = false
        metric_stat {
          stat = "Average"
          metric {
            namespace   = "ECS/ContainerInsights"
            metric_name = "RunningTaskCount"
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
        label       = "Backlog per task (visible / running)"
        expression  = "visible / running"
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
    adjustment_type         = "ChangeInCapacity"
    metric_aggregation_type = "Maximum"
    # Long enough for the first task to be placed (possibly on a new instance) and be counted.
    cooldown = var.scale_out_cooldown_seconds

    step_adjustment {
      metric_interval_lower_bound = 0
      scaling_adjustment          = 1
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "messages_while_no_task" {
  alarm_name          = "${var.name}-messages-while-no-task"
  alarm_description   = "Messages wait in ${local.queue_name} while no worker task runs: start one (scale from zero)."
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
