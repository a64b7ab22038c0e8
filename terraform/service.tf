# The service: tasks on the GPU capacity provider (or Fargate with compute = "cpu"), in private subnets (awsvpc), no load balancer
# (the worker pulls its work from SQS). Desired count starts at 0 and then belongs to Application
# Auto Scaling; the task definition revision belongs to deploy/ecs/deploy.py after the first apply.

resource "aws_ecs_service" "worker" {
  name            = var.name
  cluster         = aws_ecs_cluster.this.id
  task_definition = aws_ecs_task_definition.worker.arn
  desired_count   = 0

  capacity_provider_strategy {
    capacity_provider = local.capacity_provider
    weight            = 1
    base              = 0
  }

  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = [aws_security_group.tasks.id]
    assign_public_ip = false
  }

  # Rolling deploy. New tasks start (on new instances if needed) while old ones drain; below 100 %
  # minimum healthy, ECS may stop old tasks first, so a rollout at max_tasks (every instance the
  # group may have is busy) still has room to place new tasks. Old tasks stop with SIGTERM and
  # finish what they hold within DRAIN_SECONDS; the worker sets no scale-in protection that could
  # keep them (docs/deploy.md, "Deployments under load").
  deployment_minimum_healthy_percent = var.deployment_minimum_healthy_percent
  deployment_maximum_percent         = 200

  # A revision whose tasks keep failing (e.g. REQUIRE_GPU refusing to start, bad secret) is
  # stopped and the service rolls back to the last revision that reached steady state.
  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  enable_ecs_managed_tags = true
  propagate_tags          = "SERVICE"
  wait_for_steady_state   = false

  tags = local.tags

  lifecycle {
    # desired_count: the autoscaler owns it. task_definition: deploy.py registers new revisions;
    # a later `terraform apply` must not roll the service back to the first one.
    ignore_changes = [desired_count, task_definition]
  }

  depends_on = [
    aws_ecs_cluster_capacity_providers.this,
    aws_iam_role_policy.task,
    aws_iam_role_policy.execution,
  ]
}
