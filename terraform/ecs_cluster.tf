# The cluster. Container Insights is on: it publishes ECS/ContainerInsights RunningTaskCount, the
# denominator of the backlog-per-task metric (autoscaling.tf).

resource "aws_ecs_cluster" "this" {
  name = var.name

  setting {
    name  = "containerInsights"
    value = "enabled"
  }

  tags = local.tags
}

locals {
  # GPU: the module's capacity provider. CPU: Fargate (on-demand; see docs/deploy.md for Spot).
  capacity_provider = local.gpu ? one(aws_ecs_capacity_provider.gpu[*].name) : "FARGATE"
}

resource "aws_ecs_cluster_capacity_providers" "this" {
  cluster_name       = aws_ecs_cluster.this.name
  capacity_providers = [local.capacity_provider]

  default_capacity_provider_strategy {
    capacity_provider = local.capacity_provider
    weight            = 1
    base              = 0
  }
}
