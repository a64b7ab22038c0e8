# Security groups. No inbound rule by default: the metrics sidecar scrapes /metrics over
# localhost (the task's one network namespace) and ECS runs the health check inside the
# container. Scrapers elsewhere get the metrics port only from their own security groups
# (metrics_scraper_security_group_ids), never from a CIDR.
# Egress: HTTPS for the AWS APIs (ECS, ECR, SQS, S3, Secrets Manager, CloudWatch; through NAT or
# VPC endpoints), PostgreSQL to the database CIDRs, DNS to the VPC resolver.

resource "aws_security_group" "tasks" {
  name_prefix = "${var.name}-tasks-"
  description = "image-worker tasks (awsvpc ENIs): metrics port from the scrapers only"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { "Name" = "${var.name}-tasks" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "tasks_metrics" {
  for_each                     = toset(var.metrics_scraper_security_group_ids)
  security_group_id            = aws_security_group.tasks.id
  description                  = "Prometheus scrape of /metrics from a scraper's security group"
  ip_protocol                  = "tcp"
  from_port                    = var.metrics_port
  to_port                      = var.metrics_port
  referenced_security_group_id = each.value
}

resource "aws_vpc_security_group_egress_rule" "tasks_https" {
  security_group_id = aws_security_group.tasks.id
  description       = "AWS APIs over HTTPS (SQS, S3, Secrets Manager, ECR, CloudWatch, AMP)"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_egress_rule" "tasks_database" {
  for_each          = toset(local.database_cidr_blocks)
  security_group_id = aws_security_group.tasks.id
  description       = "PostgreSQL (job rows)"
  ip_protocol       = "tcp"
  from_port         = var.database_port
  to_port           = var.database_port
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "tasks_dns" {
  security_group_id = aws_security_group.tasks.id
  description       = "DNS to the VPC resolver"
  ip_protocol       = "udp"
  from_port         = 53
  to_port           = 53
  cidr_ipv4         = local.vpc_cidr
}

resource "aws_security_group" "instances" {
  count       = local.gpu ? 1 : 0
  name_prefix = "${var.name}-instances-"
  description = "image-worker GPU container instances: no inbound"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { "Name" = "${var.name}-instances" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_egress_rule" "instances_https" {
  count             = local.gpu ? 1 : 0
  security_group_id = aws_security_group.instances[0].id
  description       = "ECS agent, ECR image pulls, CloudWatch, SSM over HTTPS"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_egress_rule" "instances_dns" {
  count             = local.gpu ? 1 : 0
  security_group_id = aws_security_group.instances[0].id
  description       = "DNS to the VPC resolver"
  ip_protocol       = "udp"
  from_port         = 53
  to_port           = 53
  cidr_ipv4         = local.vpc_cidr
}
