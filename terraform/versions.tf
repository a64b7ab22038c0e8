terraform {
  # 1.9: validations that read other variables (source_prefix vs result_prefix); preconditions.
  required_version = ">= 1.9.0"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # 6.x: data.aws_region .region (.name is deprecated), checked against 6.25.0's schema
      # (deploy/terraform_schema.py); metric math in target tracking, managed_draining.
      version = ">= 6.0.0, < 7.0.0"
    }
  }
}
