# Optional metrics sidecar: an AWS Distro for OpenTelemetry collector in the same task scrapes the
# worker's /metrics on localhost (awsvpc: the task shares one network namespace) and remote-writes
# to Amazon Managed Prometheus with SigV4 (task role: aps:RemoteWrite on this workspace only).
# The ECS resource detector adds the task ARN etc. as labels, so series of different tasks never
# collide.

resource "aws_prometheus_workspace" "this" {
  count = var.enable_metrics_sidecar && var.amp_workspace_arn == null ? 1 : 0
  alias = var.name
  tags  = local.tags
}

data "aws_prometheus_workspace" "existing" {
  count        = var.enable_metrics_sidecar && var.amp_workspace_arn != null ? 1 : 0
  workspace_id = element(split("/", coalesce(var.amp_workspace_arn, "x/x")), 1)
}

locals {
  amp_workspace_arn = var.enable_metrics_sidecar ? coalesce(
    var.amp_workspace_arn, one(aws_prometheus_workspace.this[*].arn)
  ) : null
  amp_endpoint = var.enable_metrics_sidecar ? coalesce(
    one(aws_prometheus_workspace.this[*].prometheus_endpoint),
    one(data.aws_prometheus_workspace.existing[*].prometheus_endpoint),
  ) : null
  amp_remote_write_url = var.enable_metrics_sidecar ? "${local.amp_endpoint}api/v1/remote_write" : ""

  adot_config = yamlencode({
    extensions = {
      sigv4auth = { region = local.region, service = "aps" }
    }
    receivers = {
      prometheus = {
        config = {
          global = { scrape_interval = "${var.metrics_scrape_interval_seconds}s" }
          scrape_configs = [{
            job_name       = "image-worker"
            static_configs = [{ targets = ["localhost:${var.metrics_port}"] }]
          }]
        }
      }
    }
    processors = {
      resourcedetection = { detectors = ["env", "ecs"] }
      batch             = {}
    }
    exporters = {
      prometheusremotewrite = {
        endpoint                         = local.amp_remote_write_url
        auth                             = { authenticator = "sigv4auth" }
        resource_to_telemetry_conversion = { enabled = true }
      }
    }
    service = {
      extensions = ["sigv4auth"]
      pipelines = {
        metrics = {
          receivers  = ["prometheus"]
          processors = ["resourcedetection", "batch"]
          exporters  = ["prometheusremotewrite"]
        }
      }
    }
  })

  metrics_sidecar = {
    name                   = "adot-collector"
    image                  = var.adot_image
    essential              = false # losing metrics must not stop image processing
    cpu                    = 256
    memoryReservation      = 256
    memory                 = 512
    readonlyRootFilesystem = true
    user                   = "10001:10001"
    linuxParameters        = { capabilities = { drop = ["ALL"] } }
    dockerSecurityOptions  = local.gpu ? ["no-new-privileges"] : null
    environment            = [{ name = "AOT_CONFIG_CONTENT", value = local.adot_config }]
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        "awslogs-group"         = aws_cloudwatch_log_group.worker.name
        "awslogs-region"        = local.region
        "awslogs-stream-prefix" = "adot"
      }
    }
  }
}
