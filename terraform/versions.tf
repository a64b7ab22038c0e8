terraform {
  # 1.5: `check {}` / preconditions used below; `optional()` object attributes.
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # 5.46+: metric math (`metrics {}`) in target-tracking customized metrics, managed_draining.
      version = ">= 5.46.0, < 7.0.0"
    }
  }
}
