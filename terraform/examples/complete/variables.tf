variable "region" {
  type        = string
  description = "AWS region."
  default     = "us-east-1"
}

variable "environment" {
  type        = string
  description = "Environment name, part of every resource name."
  default     = "prod"

  validation {
    condition     = can(regex("^[a-z][a-z0-9]{1,15}$", var.environment))
    error_message = "environment must be 2-16 lower-case letters and digits."
  }
}

variable "vpc_id" {
  type        = string
  description = "Existing VPC."
}

variable "subnet_ids" {
  type        = list(string)
  description = "Private subnets of that VPC (NAT or VPC endpoints)."
}

variable "source_bucket" {
  type        = string
  description = "Bucket with the book photos."
}

variable "source_prefix" {
  type        = string
  description = "Key prefix of the photos (not overlapping the cut-outs' cutouts/)."
  default     = "sources/"
}

variable "image_tag" {
  type        = string
  description = "Image tag of the first task definition revision."
}

variable "compute" {
  type        = string
  description = "gpu (EC2 GPU instances) or cpu (Fargate)."
  default     = "gpu"
}

variable "instance_types" {
  type        = list(string)
  description = "GPU instance types (one GPU each), in order of preference."
  default     = ["g4dn.xlarge", "g5.xlarge", "g6.xlarge"]
}

variable "spot" {
  type        = bool
  description = "GPU instances on Spot (interruptions drain the tasks; messages return to the queue)."
  default     = false
}

variable "enable_vpc_endpoints" {
  type        = bool
  description = "Create VPC endpoints (S3, ECR, SQS, Logs, Secrets Manager) so pulls skip the NAT gateway."
  default     = true
}

variable "worker_database_secret_arn" {
  type        = string
  description = "Secret with the worker's PostgreSQL URL (role image_worker). Null: the module creates an empty one."
  default     = null
}

variable "sweep_database_secret_arn" {
  type        = string
  description = "Secret with the recovery sweep's PostgreSQL URL (role image_producer). Null: the module creates an empty one."
  default     = null
}

variable "max_tasks" {
  type        = number
  description = "Most GPU tasks (and instances) at once."
  default     = 10

  validation {
    condition     = var.max_tasks >= 1 && var.max_tasks <= 100
    error_message = "max_tasks must be between 1 and 100."
  }
}
