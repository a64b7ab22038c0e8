output "queue_url" {
  description = "Job queue URL (SQS_QUEUE_URL of the worker and of the producers)."
  value       = aws_sqs_queue.jobs.url
}

output "queue_arn" {
  description = "Job queue ARN (grant producers sqs:SendMessage on it)."
  value       = aws_sqs_queue.jobs.arn
}

output "dlq_url" {
  description = "Dead-letter queue URL."
  value       = aws_sqs_queue.dlq.url
}

output "dlq_arn" {
  description = "Dead-letter queue ARN."
  value       = aws_sqs_queue.dlq.arn
}

output "ecr_repository_url" {
  description = "Where to push the image: <url>:<tag>."
  value       = aws_ecr_repository.this.repository_url
}

output "cluster_name" {
  description = "ECS cluster name (deploy.py --cluster)."
  value       = aws_ecs_cluster.this.name
}

output "service_name" {
  description = "ECS service name (deploy.py --service)."
  value       = aws_ecs_service.worker.name
}

output "compute" {
  description = "Where the tasks run: gpu (EC2 capacity provider) or cpu (Fargate)."
  value       = var.compute
}

output "capacity_provider_name" {
  description = "Capacity provider of the service and of one-off tasks: the GPU one, or FARGATE."
  value       = local.capacity_provider
}

output "autoscaling_group_name" {
  description = "The GPU Auto Scaling group (null with compute = cpu)."
  value       = one(aws_autoscaling_group.gpu[*].name)
}

output "instances_security_group_id" {
  description = "Security group of the GPU container instances (null with compute = cpu)."
  value       = one(aws_security_group.instances[*].id)
}

output "queue_name" {
  description = "Job queue name."
  value       = aws_sqs_queue.jobs.name
}

output "dlq_name" {
  description = "Dead-letter queue name."
  value       = aws_sqs_queue.dlq.name
}

output "task_definition_arn" {
  description = "The task definition revision Terraform registered (later ones come from deploy.py)."
  value       = aws_ecs_task_definition.worker.arn
}

output "kms_key_arn" {
  description = "KMS key of the log group and of the module-created DATABASE_URL secret."
  value       = aws_kms_key.this.arn
}

output "alarm_arns" {
  description = "Operator alarms (DLQ not empty, oldest message age) by name."
  value = {
    dlq_not_empty      = aws_cloudwatch_metric_alarm.dlq_depth.arn
    oldest_message_age = aws_cloudwatch_metric_alarm.oldest_message_age.arn
  }
}

output "producer_policy_json" {
  description = "IAM policy for producers (api_client and image-jobs): exactly the actions they call, on this queue, its DLQ and the source prefix. Attach it to the producer's role."
  value       = data.aws_iam_policy_document.producer.json
}

output "task_definition_family" {
  description = "Task definition family; deploy.py registers new revisions in it."
  value       = aws_ecs_task_definition.worker.family
}

output "task_role_arn" {
  description = "The worker's least-privilege task role."
  value       = aws_iam_role.task.arn
}

output "execution_role_arn" {
  description = "The ECS task execution role."
  value       = aws_iam_role.execution.arn
}

output "log_group_name" {
  description = "CloudWatch Logs group of the worker (and the sidecar)."
  value       = aws_cloudwatch_log_group.worker.name
}

output "database_url_secret_arn" {
  description = "Secrets Manager secret read into DATABASE_URL (put the URL there if the module created it)."
  value       = local.database_url_secret_arn
}

output "tasks_security_group_id" {
  description = "Security group of the tasks (allow it on the database's security group)."
  value       = aws_security_group.tasks.id
}

output "backlog_per_task_target" {
  description = "Messages (visible + in flight) per desired task that target tracking holds (acceptable_wait_seconds / seconds_per_image)."
  value       = local.backlog_per_task_target
}

output "amp_remote_write_url" {
  description = "Amazon Managed Prometheus remote-write URL of the sidecar (empty when disabled)."
  value       = local.amp_remote_write_url
}

output "task_template_vars" {
  description = "Values for deploy/ecs/task-definition.json: `terraform output -json task_template_vars > deploy/ecs/vars.json`."
  value = {
    FAMILY                     = aws_ecs_task_definition.worker.family
    CONTAINER_NAME             = local.container_name
    REPOSITORY_URL             = aws_ecr_repository.this.repository_url
    EXECUTION_ROLE_ARN         = aws_iam_role.execution.arn
    TASK_ROLE_ARN              = aws_iam_role.task.arn
    LOG_GROUP                  = aws_cloudwatch_log_group.worker.name
    AWS_REGION                 = local.region
    DATABASE_URL_SECRET_ARN    = local.database_url_secret_arn
    SECRETS                    = local.database_secrets
    COMPUTE                    = var.compute
    SOURCE_BUCKET              = var.source_bucket
    SOURCE_PREFIX              = var.source_prefix
    SQS_QUEUE_URL              = aws_sqs_queue.jobs.url
    RESULT_BUCKET              = local.result_bucket
    RESULT_PREFIX              = var.result_prefix
    WORKER_CONCURRENCY         = var.worker_concurrency
    INFERENCE_THREADS          = var.inference_threads
    MAX_ATTEMPTS               = var.max_receive_count
    VISIBILITY_TIMEOUT_SECONDS = var.visibility_timeout_seconds
    HEARTBEAT_INTERVAL_SECONDS = var.heartbeat_interval_seconds
    DRAIN_SECONDS              = var.drain_seconds
    STOP_TIMEOUT_SECONDS       = var.stop_timeout_seconds
    METRICS_PORT               = var.metrics_port
    LOG_LEVEL                  = var.log_level
    EVENTS_TOPIC_ARN           = local.events_topic_env
    TASK_CPU                   = var.task_cpu
    TASK_MEMORY                = var.task_memory
    GPU_COUNT                  = var.gpu_count
    FARGATE_CPU                = var.fargate_cpu
    FARGATE_MEMORY             = var.fargate_memory
    ADOT_IMAGE                 = var.adot_image
    ADOT_CONFIG                = var.enable_metrics_sidecar ? local.adot_config : ""
    EXTRA_ENVIRONMENT          = merge(var.extra_environment, local.database_environment)
    # The recovery sweep (null when disabled): deploy.py registers each release's revision in
    # this family with the container's image set to <repository>:<tag>-sweep.
    SWEEP_FAMILY         = one(aws_ecs_task_definition.recovery[*].family)
    SWEEP_CONTAINER_NAME = local.recovery_container_name
    # The schedule whose ECS target deploy.py moves to each release's sweep revision.
    RECOVERY_SCHEDULE_NAME = one(aws_scheduler_schedule.recovery[*].name)
  }
}

output "deployer_policy_json" {
  description = "IAM policy for the CI role that releases: push to this repository and what deploy/ecs/deploy.py calls (register the worker's and the sweep's revisions, run the selfcheck gate, update the service, pass the task roles)."
  value       = data.aws_iam_policy_document.deployer.json
}

output "deployer_policy_arn" {
  description = "The deployer policy as a managed policy: attach it to the CI role."
  value       = aws_iam_policy.deployer.arn
}

output "alarm_topic_arn" {
  description = "The SNS topic the module created for its alarms (null when alarm_actions is given)."
  value       = one(aws_sns_topic.alarms[*].arn)
}

output "sweep_image" {
  description = "Image of the recovery sweep's task definition revision Terraform registered (<repository>:<tag>-sweep unless sweep_image is set)."
  value       = local.sweep_image
}

output "sweep_database_url_secret_arn" {
  description = "Secrets Manager secret of the recovery sweep's database credentials (put the image_producer URL there if the module created it)."
  value       = local.sweep_database_url_secret_arn
}
