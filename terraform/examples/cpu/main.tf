# The CPU service: the same module on Fargate, for a catalogue that imports a few hundred books a
# day (docs/deploy.md compares the cost). Build and push the CPU image first:
#   docker build --target cpu -t "$REPO:$(git rev-parse --short=12 HEAD)-cpu" .
#
#   cd terraform/examples/cpu
#   terraform init
#   terraform apply -var vpc_id=vpc-... -var 'subnet_ids=["subnet-..."]' \
#                   -var source_bucket=book-photos -var image_tag=<sha>-cpu

provider "aws" {
  region = var.region
}

module "image_worker_cpu" {
  source = "../.."

  name          = "image-worker-cpu"
  compute       = "cpu"
  vpc_id        = var.vpc_id
  subnet_ids    = var.subnet_ids
  source_bucket = var.source_bucket
  image_tag     = var.image_tag

  # 2 vCPU / 4 GiB: the configuration docs/performance.md measured (1.77 images/s).
  fargate_cpu    = 2048
  fargate_memory = 4096
  max_tasks      = 4
  extra_environment = {
    CPU_THREADS = "2"
  }

  # JSON secrets (username/password) of the two least-privilege roles (migration 0006) instead of
  # URL secrets; the module builds DATABASE_URL with sslmode=verify-full and the RDS CA bundle.
  database_url_secret_arn       = var.database_secret_arn
  sweep_database_url_secret_arn = var.sweep_database_secret_arn
  database_secret_format        = "rds_json"
  database_host                 = var.database_host
  database_name                 = "images"
}
