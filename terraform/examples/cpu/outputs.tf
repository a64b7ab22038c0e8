output "queue_url" {
  description = "Job queue URL."
  value       = module.image_worker_cpu.queue_url
}

output "task_template_vars" {
  description = "Input of deploy/ecs/deploy.py --vars."
  value       = module.image_worker_cpu.task_template_vars
}

output "producer_policy_json" {
  description = "Attach to the producer's role."
  value       = module.image_worker_cpu.producer_policy_json
}
