# A complete root module: the worker stack in an existing VPC, with the metrics sidecar writing to
# a new Amazon Managed Prometheus workspace and the alarms sent to a new SNS topic.
#
#   cd terraform/examples/complete
#   terraform init
#   terraform apply -var vpc_id=vpc-... -var 'subnet_ids=["subnet-...","subnet-..."]' \
#                   -var source_bucket=book-photos -var image_tag=$(git rev-parse --short HEAD)

provider "aws" {
  region = var.region

  default_tags {
    tags = { "project" = "image-worker", "environment" = var.environment }
  }
}

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

# The alarm topic is encrypted with a key of its own: CloudWatch alarms cannot publish to a topic
# encrypted with the AWS managed key alias/aws/sns (its policy cannot grant cloudwatch.amazonaws.com
# kms:GenerateDataKey*/kms:Decrypt), so alarms would fire into nothing.
data "aws_iam_policy_document" "alarms_key" {
  #checkov:skip=CKV_AWS_109:Key policy: the resource is this key only; the account root statement is the KMS default that lets IAM policies grant access.
  #checkov:skip=CKV_AWS_111:Key policy: the resource is this key only (see above).
  #checkov:skip=CKV_AWS_356:Key policy: "*" is the only valid Resource in a key policy and means this key.
  statement {
    sid       = "AccountAdministration"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }

  statement {
    sid       = "CloudWatchAlarmsPublish"
    actions   = ["kms:GenerateDataKey*", "kms:Decrypt"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["cloudwatch.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

resource "aws_kms_key" "alarms" {
  description             = "image-worker-${var.environment}: alarm topic"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.alarms_key.json
}

resource "aws_sns_topic" "alarms" {
  name              = "image-worker-${var.environment}-alarms"
  kms_master_key_id = aws_kms_key.alarms.arn
}

module "image_worker" {
  source = "../.."

  name          = "image-worker-${var.environment}"
  vpc_id        = var.vpc_id
  subnet_ids    = var.subnet_ids
  source_bucket = var.source_bucket
  source_prefix = var.source_prefix # "sources/": must not overlap result_prefix
  result_prefix = "cutouts/"
  image_tag     = var.image_tag

  # "gpu": g4dn instances and the CUDA image; "cpu": Fargate and the CPU image (tag <sha>-cpu).
  compute        = var.compute
  instance_types = var.instance_types
  spot           = var.spot
  # One instance beyond max_tasks: the deploy gate's selfcheck task runs on a GPU of its own.
  max_instances = var.max_tasks + 1
  max_tasks     = var.max_tasks

  # Null: the module's per-compute value (gpu 0.25 s, an estimate until measured on a g4dn.xlarge
  # with bench/throughput.py; cpu 0.55 s, measured on 2 vCPU). Acceptable wait 60 s: target
  # backlog per task = 60 / 0.25 = 240 messages (GPU), 60 / 0.55 = 109 (CPU).
  seconds_per_image       = null
  acceptable_wait_seconds = 60
  # A rollout at max_tasks may stop half the old tasks first (one spare instance only).
  deployment_minimum_healthy_percent = 50

  max_receive_count          = 5
  visibility_timeout_seconds = 60
  heartbeat_interval_seconds = 20
  drain_seconds              = 90
  stop_timeout_seconds       = 120

  enable_metrics_sidecar = true
  alarm_actions          = [aws_sns_topic.alarms.arn]
  # Pulls and AWS calls through VPC endpoints instead of the NAT gateway.
  enable_vpc_endpoints = var.enable_vpc_endpoints

  # Least-privilege database roles (migration 0006): image_worker for the worker, image_producer
  # for the recovery sweep, each in a URL secret of its own
  # (postgresql://image_worker:...@host:5432/db?sslmode=verify-full&sslrootcert=/etc/ssl/certs/rds-global-bundle.pem).
  database_url_secret_arn       = var.worker_database_secret_arn
  sweep_database_url_secret_arn = var.sweep_database_secret_arn

  tags = { "environment" = var.environment }
}
