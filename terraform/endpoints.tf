# Optional VPC endpoints (enable_vpc_endpoints): image pulls and AWS API calls from the subnets
# stay inside AWS's network instead of passing the NAT gateway, which bills every GB: an instance's
# first pull is several GB. S3 is a gateway endpoint (free; ECR serves image layers from S3) on the
# route tables of subnet_ids (or vpc_endpoint_route_table_ids); ECR (api, dkr), SQS, CloudWatch Logs and Secrets Manager are
# interface endpoints (billed per hour and AZ) with private DNS, reachable on 443 from the tasks
# and the GPU instances only.

locals {
  vpc_endpoint_count         = var.enable_vpc_endpoints ? 1 : 0
  interface_endpoint_service = var.enable_vpc_endpoints ? toset(["ecr.api", "ecr.dkr", "sqs", "logs", "secretsmanager"]) : toset([])
}

data "aws_route_table" "subnet" {
  for_each  = var.enable_vpc_endpoints && var.vpc_endpoint_route_table_ids == null ? toset(var.subnet_ids) : toset([])
  subnet_id = each.value
}

resource "aws_vpc_endpoint" "s3" {
  count             = local.vpc_endpoint_count
  vpc_id            = var.vpc_id
  service_name      = "com.amazonaws.${local.region}.s3"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = coalesce(var.vpc_endpoint_route_table_ids, distinct([for table in data.aws_route_table.subnet : table.route_table_id]))
  tags              = merge(local.tags, { "Name" = "${var.name}-s3" })
}

resource "aws_security_group" "endpoints" {
  count       = local.vpc_endpoint_count
  name_prefix = "${var.name}-endpoints-"
  description = "image-worker interface endpoints: HTTPS from the tasks and GPU instances"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { "Name" = "${var.name}-endpoints" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "endpoints_from_tasks" {
  count                        = local.vpc_endpoint_count
  security_group_id            = aws_security_group.endpoints[0].id
  description                  = "HTTPS from the image-worker tasks"
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
  referenced_security_group_id = aws_security_group.tasks.id
}

resource "aws_vpc_security_group_ingress_rule" "endpoints_from_instances" {
  count                        = local.gpu ? local.vpc_endpoint_count : 0
  security_group_id            = aws_security_group.endpoints[0].id
  description                  = "HTTPS from the GPU container instances (ECS agent, image pulls)"
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
  referenced_security_group_id = aws_security_group.instances[0].id
}

resource "aws_vpc_endpoint" "interface" {
  for_each            = local.interface_endpoint_service
  vpc_id              = var.vpc_id
  service_name        = "com.amazonaws.${local.region}.${each.key}"
  vpc_endpoint_type   = "Interface"
  subnet_ids          = var.subnet_ids
  security_group_ids  = [aws_security_group.endpoints[0].id]
  private_dns_enabled = true
  tags                = merge(local.tags, { "Name" = "${var.name}-${each.key}" })
}
