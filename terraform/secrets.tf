# The database credentials reach the container through the task definition's `secrets` (the
# execution role reads them at task start), never as plain environment values. Two shapes:
#
# - database_secret_format = "url" (default): the secret's whole value is the PostgreSQL URL and
#   becomes DATABASE_URL. Bring your own secret (database_url_secret_arn) or let the module create
#   an empty one and put the value:
#     aws secretsmanager put-secret-value --secret-id <name> --secret-string 'postgresql://...'
# - database_secret_format = "rds_json": an RDS/Aurora-managed master user secret (JSON with
#   `username` and `password`; the rotation-template format also has host, port, dbname). ECS
#   injects one JSON key per variable (valueFrom "<arn>:<key>::"): PGUSER and PGPASSWORD, plus
#   PGHOST/PGPORT/PGDATABASE from the secret when database_host is null. DATABASE_URL is then a
#   plain URL without credentials (`postgresql://host:port/db`, or `postgresql://` when the
#   secret holds the host); asyncpg takes the missing parts from the PG* variables.
#
# Rotation: ECS reads secrets when a task starts. A rotated password is not seen by running tasks:
# their open connections keep working, a new connection fails to authenticate until the task is
# replaced. Roll the tasks after a rotation (`aws ecs update-service --force-new-deployment`, e.g.
# from an EventBridge rule on the secret's RotationSucceeded event); docs/deploy.md.

resource "aws_secretsmanager_secret" "database_url" {
  count = var.database_url_secret_arn == null ? 1 : 0
  #checkov:skip=CKV2_AWS_57:This module-created secret holds a URL whose password belongs to the database; Secrets Manager rotation cannot rewrite a URL. For rotation use an RDS-managed master secret (database_secret_format = rds_json), which RDS rotates.

  name_prefix             = "${var.name}/database-url-"
  description             = "PostgreSQL URL of ${var.name} (DATABASE_URL)"
  kms_key_id              = aws_kms_key.this.arn
  recovery_window_in_days = 7
  tags                    = local.tags
}

locals {
  database_url_secret_arn = coalesce(var.database_url_secret_arn, one(aws_secretsmanager_secret.database_url[*].arn))
  # Keys whose Decrypt the execution role needs to read the secret.
  secret_kms_key_arns = compact([
    var.database_url_secret_arn == null ? aws_kms_key.this.arn : null,
    var.database_url_secret_kms_key_arn,
  ])

  database_json = var.database_secret_format == "rds_json"
  # ECS `valueFrom` for one JSON key: <secret arn>:<json key>:<version stage>:<version id>.
  database_json_keys = merge(
    { PGUSER = "username", PGPASSWORD = "password" },
    var.database_host == null ? { PGHOST = "host", PGPORT = "port", PGDATABASE = "dbname" } : {},
  )
  database_secrets = local.database_json ? [
    for name in sort(keys(local.database_json_keys)) :
    { name = name, valueFrom = "${local.database_url_secret_arn}:${local.database_json_keys[name]}::" }
  ] : [{ name = "DATABASE_URL", valueFrom = local.database_url_secret_arn }]
  # TLS with the server's certificate and host name checked against the RDS CA bundle the image
  # ships (asyncpg reads sslmode/sslrootcert from the URL; docs/deploy.md).
  database_tls = "sslmode=verify-full&sslrootcert=/etc/ssl/certs/rds-global-bundle.pem"
  database_environment = local.database_json ? {
    DATABASE_URL = var.database_host == null ? "postgresql://?${local.database_tls}" : "postgresql://${var.database_host}:${var.database_port}/${var.database_name}?${local.database_tls}"
  } : {}
}
