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
  description = "The RDS-managed master user secret of the database (JSON username/password)."
}

variable "database_host" {
  type        = string
  description = "The database endpoint (an RDS-managed secret does not hold it)."
}
