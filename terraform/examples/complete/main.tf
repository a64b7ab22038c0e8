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

resource "aws_sns_topic" "alarms" {
  name              = "image-worker-${var.environment}-alarms"
  kms_master_key_id = "alias/aws/sns"
}

module "image_worker" {
  source = "../.."

  name          = "image-worker-${var.environment}"
  vpc_id        = var.vpc_id
  subnet_ids    = var.subnet_ids
  source_bucket = var.source_bucket
  source_prefix = var.source_prefix
  result_prefix = "cutouts/"
  image_tag     = var.image_tag

  instance_type = var.instance_type
  max_instances = var.max_tasks
  max_tasks     = var.max_tasks

  # Per-image time measured with bench/throughput.py on a g4dn.xlarge (u2netp), acceptable wait 60 s:
  # target backlog per task = 60 / 0.25 = 240 messages.
  seconds_per_image       = 0.25
  acceptable_wait_seconds = 60

  max_receive_count          = 5
  visibility_timeout_seconds = 60
  heartbeat_interval_seconds = 20
  drain_seconds              = 90
  stop_timeout_seconds       = 120

  enable_metrics_sidecar = true
  alarm_actions          = [aws_sns_topic.alarms.arn]

  tags = { "environment" = var.environment }
}
