variable "region" {
  type        = string
  description = "AWS region."
  default     = "us-east-1"
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

variable "image_tag" {
  type        = string
  description = "Tag of the CPU image (<sha>-cpu)."
}

variable "database_secret_arn" {
  type        = string
  description = "The worker's database secret: JSON username/password of the role image_worker (the rotation-template format; Secrets Manager rotates it)."
}

variable "sweep_database_secret_arn" {
  type        = string
  description = "The recovery sweep's database secret: JSON username/password of the role image_producer."
}

variable "database_host" {
  type        = string
  description = "The database endpoint (an RDS-managed secret does not hold it)."
}
