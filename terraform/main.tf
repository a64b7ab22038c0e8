# Shared lookups and values. Resources live in files named by concern:
#   sqs.tf (queue + DLQ)       ecr.tf (repository)          ecs_cluster.tf (cluster)
#   capacity.tf (GPU ASG)      task.tf (task definition)    service.tf (service)
#   producer.tf (the producer's IAM policy, an output)
#   autoscaling.tf (scaling)   iam.tf (roles)               security.tf (security groups)
#   logs.tf (log group + key)  alarms.tf (queue alarms)     secrets.tf (DATABASE_URL)
#   metrics.tf (optional ADOT sidecar -> Amazon Managed Prometheus)
#   recovery.tf (the scheduled sweep)  endpoints.tf (optional VPC endpoints)
#   deployer.tf (the CI role's policy, an output)

data "aws_region" "current" {}
data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

data "aws_vpc" "this" {
  id = var.vpc_id
}

locals {
  # compute = "gpu": EC2 GPU instances behind a capacity provider (capacity.tf). "cpu": Fargate,
  # the CPU build of the image; same queue, same scaling on backlog, same alarms.
  gpu = var.compute == "gpu"

  region     = data.aws_region.current.region
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition

  queue_name = "${var.name}-jobs"
  dlq_name   = "${var.name}-jobs-dlq"

  result_bucket = coalesce(var.result_bucket, var.source_bucket)

  vpc_cidr             = data.aws_vpc.this.cidr_block
  database_cidr_blocks = coalesce(var.database_cidr_blocks, [data.aws_vpc.this.cidr_block])

  # Seconds one task spends per image at steady state. CPU: measured, docs/performance.md (1.77
  # images/s on 2 cores -> 0.55 s). GPU: an ESTIMATE until measured on the instance type.
  seconds_per_image = coalesce(var.seconds_per_image, local.gpu ? 0.25 : 0.55)

  # Backlog per task the target-tracking policy holds: how many messages one task may have waiting
  # in front of it so that the last one still starts within acceptable_wait_seconds.
  # Example: 0.25 s/image (4 images/s per GPU task) and 60 s acceptable wait -> 240 messages/task.
  backlog_per_task_target = max(1, floor(var.acceptable_wait_seconds / local.seconds_per_image))

  container_name = "worker"

  tags = merge({ "app" = var.name, "managed-by" = "terraform" }, var.tags)
}
