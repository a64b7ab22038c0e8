# The task definition: one worker container (plus the optional metrics sidecar, metrics.tf). With
# compute = "gpu" it asks for a GPU on the EC2 capacity provider; with compute = "cpu" it is a
# Fargate task running the CPU build of the image (tag suffix -cpu, docs/deploy.md).
# Environment names are exactly the worker's settings (worker/settings.py); the database
# credentials come from Secrets Manager through `secrets` (secrets.tf), never as plain values. Terraform registers the first revision; later revisions
# (new image tags) are registered by deploy/ecs/deploy.py from deploy/ecs/task-definition.json,
# rendered with the values of the `task_template_vars` output.

locals {
  # Managed settings; extra_environment adds others but cannot override these.
  worker_environment_managed = {
    SQS_QUEUE_URL              = aws_sqs_queue.jobs.url
    AWS_REGION                 = local.region
    RESULT_BUCKET              = local.result_bucket
    RESULT_PREFIX              = var.result_prefix
    WORKER_CONCURRENCY         = tostring(var.worker_concurrency)
    INFERENCE_THREADS          = tostring(var.inference_threads)
    MAX_ATTEMPTS               = tostring(var.max_receive_count) # == the queue's maxReceiveCount
    WAIT_TIME_SECONDS          = "20"
    VISIBILITY_TIMEOUT_SECONDS = tostring(var.visibility_timeout_seconds)
    HEARTBEAT_INTERVAL_SECONDS = tostring(var.heartbeat_interval_seconds)
    DRAIN_SECONDS              = tostring(var.drain_seconds)
    METRICS_PORT               = tostring(var.metrics_port)
    EXECUTION_PROVIDER         = local.gpu ? "cuda" : "cpu"
    REQUIRE_GPU                = local.gpu ? "true" : "false"
    LOG_FORMAT                 = "json"
    LOG_LEVEL                  = var.log_level
    EVENTS_TOPIC_ARN           = local.events_topic_env # events.tf; empty: no events
  }
  worker_environment = merge(var.extra_environment, local.database_environment, local.worker_environment_managed)

  # Hardening: no Linux capabilities at all (the worker runs as uid 10001 and needs none; the
  # GPU reaches the container as device nodes, not through a capability) and a read-only root.
  # /tmp: a noexec tmpfs on EC2; Fargate has no tmpfs, so a task-scoped volume there (its
  # ephemeral storage; no mount options, so not noexec).
  worker_linux_parameters = merge(
    { capabilities = { drop = ["ALL"] } },
    local.gpu ? { tmpfs = [{ containerPath = "/tmp", size = 1024, mountOptions = ["rw", "nosuid", "nodev", "noexec"] }] } : null,
  )
  tmp_mount_points = local.gpu ? [] : [{ sourceVolume = "tmp", containerPath = "/tmp", readOnly = false }]

  worker_container = {
    name      = local.container_name
    image     = "${aws_ecr_repository.this.repository_url}:${var.image_tag}"
    essential = true
    cpu       = local.gpu ? var.task_cpu : var.fargate_cpu
    memory    = local.gpu ? var.task_memory : var.fargate_memory
    # The image's ENTRYPOINT is tini -> image-worker; its CMD is `run`.
    user                   = "10001:10001"
    readonlyRootFilesystem = true
    stopTimeout            = var.stop_timeout_seconds
    resourceRequirements   = local.gpu ? [{ type = "GPU", value = tostring(var.gpu_count) }] : null
    portMappings           = [{ containerPort = var.metrics_port, protocol = "tcp", name = "metrics" }]
    environment            = [for k in sort(keys(local.worker_environment)) : { name = k, value = local.worker_environment[k] }]
    secrets                = local.database_secrets
    # The only writable path: numba's cache (NUMBA_CACHE_DIR=/tmp/numba-cache) and scratch.
    linuxParameters = local.worker_linux_parameters
    mountPoints     = local.tmp_mount_points
    # no-new-privileges: the EC2 launch type only (Fargate rejects dockerSecurityOptions).
    dockerSecurityOptions = local.gpu ? ["no-new-privileges"] : null
    ulimits               = [{ name = "nofile", softLimit = 65536, hardLimit = 65536 }]
    healthCheck = {
      command     = ["CMD", "image-worker", "healthcheck"]
      interval    = 30
      timeout     = 5
      retries     = 3
      startPeriod = 180 # CUDA init + model warm-up
    }
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        "awslogs-group"         = aws_cloudwatch_log_group.worker.name
        "awslogs-region"        = local.region
        "awslogs-stream-prefix" = "worker"
        "mode"                  = "non-blocking"
        "max-buffer-size"       = "25m"
      }
    }
  }
}

resource "aws_ecs_task_definition" "worker" {
  family                   = var.name
  requires_compatibilities = [local.gpu ? "EC2" : "FARGATE"]
  network_mode             = "awsvpc"
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn
  # Fargate sizes the task, not the container (a valid CPU/memory pair, see fargate_cpu).
  cpu    = local.gpu ? null : tostring(var.fargate_cpu)
  memory = local.gpu ? null : tostring(var.fargate_memory)

  dynamic "runtime_platform" {
    for_each = local.gpu ? [] : [1]
    content {
      operating_system_family = "LINUX"
      cpu_architecture        = "X86_64"
    }
  }

  dynamic "volume" {
    for_each = local.gpu ? [] : [1]
    content {
      name = "tmp"
    }
  }

  container_definitions = jsonencode(concat(
    [local.worker_container],
    var.enable_metrics_sidecar ? [local.metrics_sidecar] : [],
  ))

  tags = local.tags

  lifecycle {
    precondition {
      condition     = var.stop_timeout_seconds > var.drain_seconds
      error_message = "stop_timeout_seconds must be greater than drain_seconds: ECS sends SIGKILL after stopTimeout, and the worker needs the drain budget plus time to close."
    }
    precondition {
      condition     = var.database_secret_format == "url" || var.database_url_secret_arn != null
      error_message = "database_secret_format = \"rds_json\" needs database_url_secret_arn: the RDS-managed secret (the module creates only URL secrets)."
    }
    precondition {
      condition     = var.heartbeat_interval_seconds < var.visibility_timeout_seconds
      error_message = "heartbeat_interval_seconds must be shorter than visibility_timeout_seconds."
    }
  }
}
