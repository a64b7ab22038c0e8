# The service: tasks on the GPU capacity provider, in private subnets (awsvpc), no load balancer
# (the worker pulls its work from SQS). Desired count starts at 0 and then belongs to Application
# Auto Scaling; the task definition revision belongs to deploy/ecs/deploy.py after the first apply.

resource "aws_ecs_service" "worker" {
  name            = var.name
  cluster         = aws_ecs_cluster.this.id
  task_definition = aws_ecs_task_definition.worker.arn
  desired_count   = 0

  capacity_provider_strategy {
    capacity_provider = aws_ecs_capacity_provider.gpu.name
    weight            = 1
    base              = 0
  }

  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = [aws_security_group.tasks.id]
    assign_public_ip = false
  }

  # Rolling deploy: new tasks start (on new instances if needed) before old ones drain.
  deployment_minimum_healthy_percent = 100
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
