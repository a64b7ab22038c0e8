output "queue_url" {
  description = "Job queue URL."
  value       = module.image_worker.queue_url
}

output "ecr_repository_url" {
  description = "Push the image here."
  value       = module.image_worker.ecr_repository_url
}

output "cluster_name" {
  description = "ECS cluster."
  value       = module.image_worker.cluster_name
}

output "service_name" {
  description = "ECS service."
  value       = module.image_worker.service_name
}

output "database_url_secret_arn" {
  description = "Put the PostgreSQL URL into this secret."
  value       = module.image_worker.database_url_secret_arn
}

output "task_template_vars" {
  description = "Input of deploy/ecs/deploy.py --vars."
  value       = module.image_worker.task_template_vars
}

output "alarm_topic_arn" {
  description = "SNS topic of the alarms (subscribe to it)."
  value       = aws_sns_topic.alarms.arn
}

output "producer_policy_json" {
  description = "Attach to the producer's role (api_client, image-jobs)."
  value       = module.image_worker.producer_policy_json
}

output "capacity_provider_name" {
  description = "Capacity provider of the service (GPU or FARGATE)."
  value       = module.image_worker.capacity_provider_name
}

output "tasks_security_group_id" {
  description = "Security group of the tasks: allow it on the database's security group."
  value       = module.image_worker.tasks_security_group_id
}
