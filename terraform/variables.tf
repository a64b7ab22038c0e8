# ---------------------------------------------------------------------------------------------
# Naming and placement
# ---------------------------------------------------------------------------------------------
variable "name" {
  type        = string
  description = "Name prefix of every resource (queue, repository, cluster, service, roles)."
  default     = "image-worker"

  validation {
    # 31: IAM role name_prefix values are at most 38 characters, and the longest this module
    # builds is "<name>-sched-" / "<name>-sweep-" (name + 7).
    condition     = can(regex("^[a-z][a-z0-9-]{1,29}[a-z0-9]$", var.name))
    error_message = "name must be 3-31 characters of lower-case letters, digits and hyphens (IAM role name prefixes such as \"<name>-sweep-\" may not pass 38 characters)."
  }
}

variable "compute" {
  type        = string
  description = "Where the worker runs: \"gpu\" (ECS on EC2 GPU instances, the CUDA image) or \"cpu\" (ECS on Fargate, the CPU build of the image, tag suffix -cpu). Same queue, scaling and alarms."
  default     = "gpu"

  validation {
    condition     = contains(["gpu", "cpu"], var.compute)
    error_message = "compute must be \"gpu\" or \"cpu\"."
  }
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource that takes tags."
  default     = {}
}

variable "vpc_id" {
  type        = string
  description = "VPC of the GPU instances and tasks; its CIDR is the only source allowed to reach the metrics port."

  validation {
    condition     = can(regex("^vpc-[0-9a-f]{8,17}$", var.vpc_id))
    error_message = "vpc_id must look like vpc-0123456789abcdef0."
  }
}

variable "subnet_ids" {
  type        = list(string)
  description = "Private subnets (with a NAT gateway or VPC endpoints for ECR, ECS, SQS, S3, Secrets Manager, CloudWatch Logs) for the instances and the tasks' ENIs."

  validation {
    condition     = length(var.subnet_ids) >= 1 && alltrue([for s in var.subnet_ids : can(regex("^subnet-[0-9a-f]{8,17}$", s))])
    error_message = "subnet_ids needs at least one subnet id (subnet-...)."
  }
}

variable "database_cidr_blocks" {
  type        = list(string)
  description = "Where the PostgreSQL server lives (egress on database_port is allowed only there). Null: the VPC CIDR."
  default     = null
}

variable "database_port" {
  type        = number
  description = "PostgreSQL port the tasks may connect to."
  default     = 5432

  validation {
    condition     = var.database_port >= 1 && var.database_port <= 65535 && floor(var.database_port) == var.database_port
    error_message = "database_port must be an integer between 1 and 65535."
  }
}

# ---------------------------------------------------------------------------------------------
# Queue
# ---------------------------------------------------------------------------------------------
variable "max_receive_count" {
  type        = number
  description = "Receives before SQS moves a message to the DLQ. Also passed to the worker as MAX_ATTEMPTS so that the job row is failed on the same attempt."
  default     = 5

  validation {
    condition     = var.max_receive_count >= 1 && var.max_receive_count <= 1000 && floor(var.max_receive_count) == var.max_receive_count
    error_message = "max_receive_count must be an integer between 1 and 1000 (the SQS limit)."
  }
}

variable "visibility_timeout_seconds" {
  type        = number
  description = "Queue visibility timeout (and VISIBILITY_TIMEOUT_SECONDS of the worker). Must exceed heartbeat_interval_seconds: the worker renews in-flight messages every heartbeat."
  default     = 60

  validation {
    condition     = var.visibility_timeout_seconds >= 10 && var.visibility_timeout_seconds <= 43200
    error_message = "visibility_timeout_seconds must be between 10 and 43200 (12 hours, the SQS limit)."
  }
}

variable "heartbeat_interval_seconds" {
  type        = number
  description = "How often the worker extends the visibility of in-flight messages (HEARTBEAT_INTERVAL_SECONDS). At most a third of the visibility timeout is advised."
  default     = 20

  validation {
    condition     = var.heartbeat_interval_seconds >= 1 && var.heartbeat_interval_seconds <= 43199
    error_message = "heartbeat_interval_seconds must be between 1 and 43199."
  }
}

variable "message_retention_seconds" {
  type        = number
  description = "How long an unprocessed message stays in the job queue."
  default     = 345600 # 4 days

  validation {
    condition     = var.message_retention_seconds >= 60 && var.message_retention_seconds <= 1209600
    error_message = "message_retention_seconds must be between 60 and 1209600 (14 days)."
  }
}

variable "dlq_message_retention_seconds" {
  type        = number
  description = "How long a dead-lettered message is kept for inspection and redrive."
  default     = 1209600 # 14 days, the maximum

  validation {
    condition     = var.dlq_message_retention_seconds >= 60 && var.dlq_message_retention_seconds <= 1209600
    error_message = "dlq_message_retention_seconds must be between 60 and 1209600 (14 days)."
  }
}

variable "queue_kms_key_arn" {
  type        = string
  description = "KMS key for queue encryption. Null: SSE-SQS (SQS-owned keys, no KMS permissions needed by producers and the worker)."
  default     = null
}

# ---------------------------------------------------------------------------------------------
# Storage and secrets
# ---------------------------------------------------------------------------------------------
variable "source_bucket" {
  type        = string
  description = "Bucket holding the source photos (the worker may only GetObject under source_prefix)."

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.source_bucket))
    error_message = "source_bucket must be a valid S3 bucket name."
  }
}

variable "source_prefix" {
  type        = string
  description = "Key prefix of the source photos (the producer may PutObject under it, the worker GetObject). In the result bucket it must not overlap result_prefix: producers could otherwise overwrite cut-outs."
  default     = "sources/"

  validation {
    # Terraform >= 1.9: a validation may read other variables.
    condition = (
      coalesce(var.result_bucket, var.source_bucket) != var.source_bucket
      || !(startswith(var.result_prefix, var.source_prefix) || startswith(var.source_prefix, var.result_prefix))
    )
    error_message = "source_prefix and result_prefix overlap in the same bucket (one starts with the other, or source_prefix is empty): the producer's PutObject on the source prefix would cover the cut-outs. Use disjoint prefixes (e.g. sources/ and cutouts/) or a separate result_bucket."
  }
}

variable "result_bucket" {
  type        = string
  description = "Bucket for the cut-outs (RESULT_BUCKET). Null: the source bucket."
  default     = null

  validation {
    condition     = var.result_bucket == null || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", coalesce(var.result_bucket, "x")))
    error_message = "result_bucket must be a valid S3 bucket name or null."
  }
}

variable "result_prefix" {
  type        = string
  description = "Key prefix of the cut-outs (RESULT_PREFIX): results `<prefix><job_id>.<ext>`, thumbnails under `<prefix><job_id>/`. The worker may only PutObject under it."
  default     = "cutouts/"

  validation {
    condition     = length(var.result_prefix) > 0
    error_message = "result_prefix must not be empty: the task role's PutObject is scoped to it."
  }
}

variable "database_url_secret_arn" {
  type        = string
  description = "Secrets Manager secret with the database credentials, in the shape database_secret_format names (the PostgreSQL URL, or an RDS-managed JSON secret). Null: the module creates an empty URL secret to be filled by the operator."
  default     = null

  validation {
    condition     = var.database_url_secret_arn == null || can(regex("^arn:aws[a-z-]*:secretsmanager:", coalesce(var.database_url_secret_arn, "x")))
    error_message = "database_url_secret_arn must be a Secrets Manager secret ARN."
  }
}

variable "database_secret_format" {
  type        = string
  description = "What database_url_secret_arn holds: \"url\" (the PostgreSQL URL, injected as DATABASE_URL) or \"rds_json\" (an RDS/Aurora-managed secret: JSON username/password, injected key by key as PGUSER/PGPASSWORD)."
  default     = "url"

  validation {
    condition     = contains(["url", "rds_json"], var.database_secret_format)
    error_message = "database_secret_format must be \"url\" or \"rds_json\"."
  }
}

variable "database_host" {
  type        = string
  description = "With database_secret_format = rds_json: the database endpoint. Null: host, port and dbname are read from the secret's JSON (the rotation-template format; an RDS-managed master secret holds only username and password, so set this for one)."
  default     = null
}

variable "database_name" {
  type        = string
  description = "With database_secret_format = rds_json and database_host set: the database name."
  default     = "postgres"

  validation {
    condition     = can(regex("^[A-Za-z_][A-Za-z0-9_$-]{0,62}$", var.database_name))
    error_message = "database_name must be a PostgreSQL identifier (letters, digits, _, $, -; at most 63)."
  }
}

variable "sweep_database_url_secret_arn" {
  type        = string
  description = "Secrets Manager secret of the recovery sweep's database credentials, in the same database_secret_format, for the least-privilege producer role (image_producer, migration 0006). Null: with format url the module creates an empty URL secret for it; with rds_json the sweep uses database_url_secret_arn (the worker's user)."
  default     = null

  validation {
    condition     = var.sweep_database_url_secret_arn == null || can(regex("^arn:aws[a-z-]*:secretsmanager:", coalesce(var.sweep_database_url_secret_arn, "x")))
    error_message = "sweep_database_url_secret_arn must be a Secrets Manager secret ARN."
  }
}

variable "database_sslmode" {
  type        = string
  description = "With database_secret_format = rds_json: sslmode of the DATABASE_URL the module builds. verify-full checks the server certificate against database_ca_bundle_path and its host name."
  default     = "verify-full"

  validation {
    condition     = contains(["verify-full", "verify-ca", "require"], var.database_sslmode)
    error_message = "database_sslmode must be verify-full, verify-ca or require (never a mode that falls back to plain text)."
  }
}

variable "database_ca_bundle_path" {
  type        = string
  description = "With database_secret_format = rds_json: the CA bundle inside the image that verifies the database's certificate (sslrootcert). The image ships the RDS global bundle here."
  default     = "/etc/ssl/certs/rds-global-bundle.pem"

  validation {
    condition     = can(regex("^/[A-Za-z0-9_./-]+$", var.database_ca_bundle_path))
    error_message = "database_ca_bundle_path must be an absolute path."
  }
}

variable "source_bucket_kms_key_arn" {
  type        = string
  description = "Customer managed KMS key of the source bucket's SSE-KMS encryption, if any: the worker gets kms:Decrypt and the producer policy kms:GenerateDataKey/kms:Decrypt on it, through S3 only."
  default     = null

  validation {
    condition     = var.source_bucket_kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:", coalesce(var.source_bucket_kms_key_arn, "x")))
    error_message = "source_bucket_kms_key_arn must be a KMS key ARN."
  }
}

variable "result_bucket_kms_key_arn" {
  type        = string
  description = "Customer managed KMS key of the result bucket's SSE-KMS encryption, if any: the worker gets kms:GenerateDataKey on it, through S3 only. Null with the result bucket = the source bucket: source_bucket_kms_key_arn."
  default     = null

  validation {
    condition     = var.result_bucket_kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:", coalesce(var.result_bucket_kms_key_arn, "x")))
    error_message = "result_bucket_kms_key_arn must be a KMS key ARN."
  }
}

variable "database_url_secret_kms_key_arn" {
  type        = string
  description = "Customer managed KMS key of an existing database_url_secret_arn, if any (the execution role gets kms:Decrypt on it)."
  default     = null
}

# ---------------------------------------------------------------------------------------------
# Image, task and worker settings
# ---------------------------------------------------------------------------------------------
variable "image_tag" {
  type        = string
  description = "Tag in the module's ECR repository of the first task definition revision. Later revisions come from deploy/ecs/deploy.py."

  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.image_tag))
    error_message = "image_tag must be a valid Docker tag."
  }
}

variable "ecr_keep_images" {
  type        = number
  description = "Releases the ECR lifecycle policy keeps per image kind (worker <tag> or <tag>-cpu, sweep <tag>-sweep): the rollback window. The tags Terraform's own task definitions name are never expired; untagged images expire after 7 days (ecr.tf)."
  default     = 30

  validation {
    condition     = var.ecr_keep_images >= 5 && var.ecr_keep_images <= 1000 && floor(var.ecr_keep_images) == var.ecr_keep_images
    error_message = "ecr_keep_images must be a whole number between 5 and 1000 (a deploy and its rollback targets must survive a few CI pushes)."
  }
}

variable "task_cpu" {
  type        = number
  description = "compute = gpu: CPU units reserved for the worker container (1024 = one vCPU)."
  default     = 3072

  validation {
    condition     = var.task_cpu >= 256 && var.task_cpu <= 196608
    error_message = "task_cpu must be between 256 and 196608."
  }
}

variable "task_memory" {
  type        = number
  description = "compute = gpu: memory (MiB) reserved for the worker container; leave room for the ECS agent on the instance."
  default     = 12288

  validation {
    condition     = var.task_memory >= 512 && var.task_memory <= 1048576
    error_message = "task_memory must be between 512 and 1048576 MiB."
  }
}

variable "fargate_cpu" {
  type        = number
  description = "compute = cpu: Fargate task CPU units (1024 = one vCPU). docs/performance.md measures 2 vCPU."
  default     = 2048

  validation {
    condition     = contains([1024, 2048, 4096, 8192, 16384], var.fargate_cpu)
    error_message = "fargate_cpu must be 1024, 2048, 4096, 8192 or 16384 (the model needs at least one vCPU)."
  }
}

variable "fargate_memory" {
  type        = number
  description = "compute = cpu: Fargate task memory (MiB); a valid pair with fargate_cpu (2048 CPU: 4096-16384). The worker peaks near 1.7 GiB (docs/performance.md)."
  default     = 4096

  validation {
    condition     = var.fargate_memory >= 2048 && var.fargate_memory <= 122880 && var.fargate_memory % 1024 == 0
    error_message = "fargate_memory must be a whole number of GiB in MiB, between 2048 and 122880."
  }
}

variable "gpu_count" {
  type        = number
  description = "GPUs per task (resourceRequirements GPU)."
  default     = 1

  validation {
    condition     = var.gpu_count >= 1 && var.gpu_count <= 16 && floor(var.gpu_count) == var.gpu_count
    error_message = "gpu_count must be an integer between 1 and 16."
  }
}

variable "worker_concurrency" {
  type        = number
  description = "Messages one task holds at once (WORKER_CONCURRENCY)."
  default     = 4

  validation {
    condition     = var.worker_concurrency >= 1 && var.worker_concurrency <= 256 && floor(var.worker_concurrency) == var.worker_concurrency
    error_message = "worker_concurrency must be an integer between 1 and 256."
  }
}

variable "inference_threads" {
  type        = number
  description = "Model thread pool size (INFERENCE_THREADS)."
  default     = 1

  validation {
    condition     = var.inference_threads >= 1 && var.inference_threads <= 64
    error_message = "inference_threads must be between 1 and 64."
  }
}

variable "drain_seconds" {
  type        = number
  description = "SIGTERM drain budget of the worker (DRAIN_SECONDS). Must be below stop_timeout_seconds so ECS never SIGKILLs a draining task."
  default     = 90

  validation {
    condition     = var.drain_seconds >= 0 && var.drain_seconds <= 3600
    error_message = "drain_seconds must be between 0 and 3600."
  }
}

variable "stop_timeout_seconds" {
  type        = number
  description = "ECS stopTimeout: seconds between SIGTERM and SIGKILL. Must exceed drain_seconds (plus time to close connections)."
  default     = 120

  validation {
    condition     = var.stop_timeout_seconds >= 2 && var.stop_timeout_seconds <= 120
    error_message = "stop_timeout_seconds must be between 2 and 120 (the ECS limit)."
  }
}

variable "metrics_port" {
  type        = number
  description = "Port of /metrics, /healthz and /readyz (METRICS_PORT); reachable only from inside the VPC."
  default     = 9100

  validation {
    condition     = var.metrics_port >= 1024 && var.metrics_port <= 65535 && floor(var.metrics_port) == var.metrics_port
    error_message = "metrics_port must be an unprivileged port (1024-65535): the container runs as non-root."
  }
}

variable "log_level" {
  type        = string
  description = "Worker log level (LOG_LEVEL)."
  default     = "info"

  validation {
    condition     = contains(["debug", "info", "warning", "error"], var.log_level)
    error_message = "log_level must be one of debug, info, warning, error."
  }
}

variable "log_retention_days" {
  type        = number
  description = "CloudWatch Logs retention of the worker's log group."
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a retention period CloudWatch Logs accepts (e.g. 30, 90, 365)."
  }
}

variable "extra_environment" {
  type        = map(string)
  description = "More worker settings (e.g. PNG_COMPRESS_LEVEL, MAX_IMAGE_PIXELS). Names must be worker settings; the ones this module manages cannot be overridden."
  default     = {}

  validation {
    condition = alltrue([for k in keys(var.extra_environment) : contains([
      "PNG_COMPRESS_LEVEL", "MAX_IMAGE_BYTES", "MAX_IMAGE_PIXELS", "CPU_THREADS", "ORT_INTRA_OP_THREADS",
      "ORT_ALLOW_SPINNING", "BATCH_SIZE", "BATCH_WAIT_MS", "BACKOFF_BASE_SECONDS", "BACKOFF_MAX_SECONDS",
      "HEALTH_STALE_SECONDS", "QUEUE_STATS_INTERVAL_SECONDS", "DB_POOL_SIZE", "MODEL_NAME",
      "JOB_TIMEOUT_SECONDS", "MODEL_RUN_MAX_SECONDS",
    ], k)])
    error_message = "extra_environment accepts only worker settings this module does not manage: PNG_COMPRESS_LEVEL, MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, CPU_THREADS, ORT_INTRA_OP_THREADS, ORT_ALLOW_SPINNING, BATCH_SIZE, BATCH_WAIT_MS, BACKOFF_BASE_SECONDS, BACKOFF_MAX_SECONDS, HEALTH_STALE_SECONDS, QUEUE_STATS_INTERVAL_SECONDS, DB_POOL_SIZE, MODEL_NAME, JOB_TIMEOUT_SECONDS, MODEL_RUN_MAX_SECONDS."
  }
}

# ---------------------------------------------------------------------------------------------
# GPU capacity
# ---------------------------------------------------------------------------------------------
variable "instance_types" {
  type        = list(string)
  description = "EC2 GPU instance types of the capacity provider, in order of preference (a mixed instances policy: a shortage of one type in an AZ does not stall scale-out). Keep them the same size (one GPU each): ECS managed scaling assumes similar instances, and one task uses one GPU."
  default     = ["g4dn.xlarge", "g5.xlarge", "g6.xlarge"]

  validation {
    # x86_64 only: the AMI (ECS GPU, Amazon Linux 2023 x86_64) and the image are x86_64, so the
    # Graviton g5g family is refused.
    condition     = length(var.instance_types) >= 1 && length(var.instance_types) <= 20 && alltrue([for t in var.instance_types : can(regex("^(g4dn|g5|g6|g6e|gr6|p3|p3dn|p4d|p4de|p5|p5e|p5en)\\.[0-9a-z]+$", t))])
    error_message = "instance_types must list 1-20 x86_64 NVIDIA GPU instance types (g4dn, g5, g6, g6e, gr6, p3, p4d, p5 families; not the arm64 g5g)."
  }
}

variable "spot" {
  type        = bool
  description = "Run the GPU instances on Spot (price-capacity-optimized across instance_types) with capacity rebalancing and ECS Spot draining: an interrupted instance's tasks stop with SIGTERM and their messages return to the queue. Off: on-demand."
  default     = false
}

variable "gpu_ami_id" {
  type        = string
  description = "Pin the GPU instances' AMI (an ECS GPU-optimised Amazon Linux 2023 x86_64 AMI). Null: the recommended one from SSM at the first apply, kept until replaced on purpose (capacity.tf)."
  default     = null

  validation {
    condition     = var.gpu_ami_id == null || can(regex("^ami-[0-9a-f]{8,17}$", coalesce(var.gpu_ami_id, "x")))
    error_message = "gpu_ami_id must look like ami-0123456789abcdef0."
  }
}

variable "root_volume_throughput" {
  type        = number
  description = "gp3 throughput (MiB/s) of each GPU instance's root volume: every new instance pulls the multi-GiB image through it (gp3's baseline is 125)."
  default     = 500

  validation {
    condition     = var.root_volume_throughput >= 125 && var.root_volume_throughput <= 1000 && floor(var.root_volume_throughput) == var.root_volume_throughput
    error_message = "root_volume_throughput must be a whole number of MiB/s from 125 to 1000 (the gp3 range)."
  }
}

variable "root_volume_iops" {
  type        = number
  description = "gp3 IOPS of each GPU instance's root volume (3000 is included; gp3 allows throughput up to IOPS / 4)."
  default     = 3000

  validation {
    condition     = var.root_volume_iops >= 3000 && var.root_volume_iops <= 16000 && floor(var.root_volume_iops) == var.root_volume_iops
    error_message = "root_volume_iops must be a whole number from 3000 to 16000."
  }
}

variable "root_volume_size_gb" {
  type        = number
  description = "Root EBS volume of each GPU instance (the CUDA image is several GiB)."
  default     = 100

  validation {
    condition     = var.root_volume_size_gb >= 30 && var.root_volume_size_gb <= 16384
    error_message = "root_volume_size_gb must be between 30 (the GPU AMI's snapshot) and 16384."
  }
}

variable "max_instances" {
  type        = number
  description = "Upper bound of the GPU Auto Scaling group (the lower bound is 0). At least max_tasks + 1: the deploy gate (a one-off selfcheck task) needs a GPU of its own at full scale."
  default     = 11

  validation {
    condition     = var.max_instances >= 1 && var.max_instances <= 1000
    error_message = "max_instances must be between 1 and 1000."
  }
}

# ---------------------------------------------------------------------------------------------
# Autoscaling
# ---------------------------------------------------------------------------------------------
variable "max_tasks" {
  type        = number
  description = "Upper bound of the service's task count (the lower bound is 0: idle means no GPU bill)."
  default     = 10

  validation {
    condition     = var.max_tasks >= 1 && var.max_tasks <= 1000
    error_message = "max_tasks must be between 1 and 1000."
  }
}

variable "seconds_per_image" {
  type        = number
  description = "Measured wall time one task spends per image at steady state (bench/throughput.py on the target instance type: 1 / images-per-second of one task). With acceptable_wait_seconds it gives the backlog-per-task target. Null: 0.25 for gpu (an estimate, not measured yet), 0.55 for cpu (measured on 2 vCPU, docs/performance.md)."
  default     = null

  validation {
    condition     = var.seconds_per_image == null || (coalesce(var.seconds_per_image, 1) > 0 && coalesce(var.seconds_per_image, 1) <= 600)
    error_message = "seconds_per_image must be greater than 0 and at most 600."
  }
}

variable "acceptable_wait_seconds" {
  type        = number
  description = "How long a message may wait in the queue before being processed, at steady state. Backlog-per-task target = acceptable_wait_seconds / seconds_per_image."
  default     = 60

  validation {
    condition     = var.acceptable_wait_seconds >= 1 && var.acceptable_wait_seconds <= 43200
    error_message = "acceptable_wait_seconds must be between 1 and 43200."
  }
}

variable "deployment_minimum_healthy_percent" {
  type        = number
  description = "Service deployment lower bound. Below 100, a rollout may stop old tasks before new ones run, so it can proceed at max_tasks when no instance is free (at 100 it needs max_instances > max_tasks). The queue absorbs the dip."
  default     = 50

  validation {
    condition     = var.deployment_minimum_healthy_percent >= 0 && var.deployment_minimum_healthy_percent <= 100
    error_message = "deployment_minimum_healthy_percent must be between 0 and 100."
  }
}

variable "scale_from_zero_max_tasks" {
  type        = number
  description = "From zero the service starts ceil(visible / backlog_per_task_target) tasks at once (one cold start, not 0 -> 1 -> N), at most this many (and at most max_tasks); target tracking takes it from there."
  default     = 10

  validation {
    condition     = var.scale_from_zero_max_tasks >= 1 && var.scale_from_zero_max_tasks <= 19 && floor(var.scale_from_zero_max_tasks) == var.scale_from_zero_max_tasks
    error_message = "scale_from_zero_max_tasks must be an integer between 1 and 19 (a step policy holds at most 20 steps)."
  }
}

variable "scale_in_cooldown_seconds" {
  type        = number
  description = "Target tracking scale-in cooldown (short scale-ins drop warm GPU tasks)."
  default     = 300

  validation {
    condition     = var.scale_in_cooldown_seconds >= 0 && var.scale_in_cooldown_seconds <= 3600
    error_message = "scale_in_cooldown_seconds must be between 0 and 3600."
  }
}

variable "scale_out_cooldown_seconds" {
  type        = number
  description = "Target tracking and scale-from-zero cooldown (roughly: instance launch + image pull + model warm-up)."
  default     = 180

  validation {
    condition     = var.scale_out_cooldown_seconds >= 0 && var.scale_out_cooldown_seconds <= 3600
    error_message = "scale_out_cooldown_seconds must be between 0 and 3600."
  }
}

variable "scale_to_zero_after_minutes" {
  type        = number
  description = "Minutes with no visible and no in-flight message before the service is set to 0 tasks."
  default     = 15

  validation {
    condition     = var.scale_to_zero_after_minutes >= 1 && var.scale_to_zero_after_minutes <= 1440
    error_message = "scale_to_zero_after_minutes must be between 1 and 1440."
  }
}

# ---------------------------------------------------------------------------------------------
# Alarms and metrics
# ---------------------------------------------------------------------------------------------
variable "alarm_actions" {
  type        = list(string)
  description = "SNS topic ARNs notified by every alarm of the module. Null: the module creates an encrypted topic (output alarm_topic_arn) and subscribes alarm_emails to it. An empty list notifies nobody and is refused unless alarms_silent = true."
  default     = null

  validation {
    condition     = var.alarm_actions == null || alltrue([for a in coalesce(var.alarm_actions, []) : can(regex("^arn:aws[a-z-]*:(sns|lambda|ssm|autoscaling|ec2|ssm-incidents):", a))])
    error_message = "alarm_actions must be null or a list of action ARNs (SNS topics, etc.)."
  }
}

variable "alarms_silent" {
  type        = bool
  description = "Allow alarm_actions = []: alarms change state in CloudWatch but notify nobody (a test account)."
  default     = false
}

variable "alarm_emails" {
  type        = list(string)
  description = "With alarm_actions = null: e-mail addresses subscribed to the module's alarm topic (each confirms by mail)."
  default     = []

  validation {
    condition     = alltrue([for e in var.alarm_emails : can(regex("^[^@ ]+@[^@ ]+\\.[^@ ]+$", e))])
    error_message = "alarm_emails must be e-mail addresses."
  }
}

variable "oldest_message_alarm_seconds" {
  type        = number
  description = "Alarm when the oldest message in the job queue is older than this."
  default     = 900

  validation {
    condition     = var.oldest_message_alarm_seconds >= 60 && var.oldest_message_alarm_seconds <= 1209600
    error_message = "oldest_message_alarm_seconds must be between 60 and 1209600."
  }
}

variable "dlq_alarm_threshold" {
  type        = number
  description = "Alarm when the DLQ holds more than this many messages (0: any dead letter alarms)."
  default     = 0

  validation {
    condition     = var.dlq_alarm_threshold >= 0
    error_message = "dlq_alarm_threshold must be 0 or more."
  }
}

variable "enable_metrics_sidecar" {
  type        = bool
  description = "Run an ADOT collector next to the worker that scrapes its /metrics and remote-writes to Amazon Managed Prometheus."
  default     = false
}

variable "amp_workspace_arn" {
  type        = string
  description = "Existing Amazon Managed Prometheus workspace for the sidecar. Null (with the sidecar on): the module creates one."
  default     = null

  validation {
    condition     = var.amp_workspace_arn == null || can(regex("^arn:aws[a-z-]*:aps:[a-z0-9-]+:[0-9]{12}:workspace/ws-", coalesce(var.amp_workspace_arn, "x")))
    error_message = "amp_workspace_arn must be an Amazon Managed Prometheus workspace ARN."
  }
}

variable "adot_image" {
  type        = string
  description = "AWS Distro for OpenTelemetry collector image of the metrics sidecar."
  default     = "public.ecr.aws/aws-observability/aws-otel-collector:v0.43.3"
}

variable "metrics_scraper_security_group_ids" {
  type        = list(string)
  description = "Security groups of Prometheus scrapers allowed to reach the metrics port of the tasks. Empty (default): no inbound rule at all; the metrics sidecar scrapes over localhost and ECS runs the health check inside the container."
  default     = []

  validation {
    condition     = alltrue([for g in var.metrics_scraper_security_group_ids : can(regex("^sg-[0-9a-f]{8,17}$", g))])
    error_message = "metrics_scraper_security_group_ids must be security group ids (sg-...)."
  }
}

variable "enable_vpc_endpoints" {
  type        = bool
  description = "Create VPC endpoints in vpc_id so that image pulls and AWS API calls skip the NAT gateway: S3 (gateway, on the subnets' route tables) and interface endpoints for ECR (api, dkr), SQS, CloudWatch Logs and Secrets Manager. Off when the VPC has them already."
  default     = false
}

variable "vpc_endpoint_route_table_ids" {
  type        = list(string)
  description = "With enable_vpc_endpoints: route tables the S3 gateway endpoint is added to. Null: the route tables explicitly associated with subnet_ids (a subnet on the VPC's main route table has none: name that table here)."
  default     = null

  validation {
    condition     = var.vpc_endpoint_route_table_ids == null || alltrue([for t in coalesce(var.vpc_endpoint_route_table_ids, []) : can(regex("^rtb-[0-9a-f]{8,17}$", t))])
    error_message = "vpc_endpoint_route_table_ids must be route table ids (rtb-...)."
  }
}

variable "metrics_scrape_interval_seconds" {
  type        = number
  description = "Scrape interval of the sidecar."
  default     = 15

  validation {
    condition     = var.metrics_scrape_interval_seconds >= 5 && var.metrics_scrape_interval_seconds <= 300
    error_message = "metrics_scrape_interval_seconds must be between 5 and 300."
  }
}
