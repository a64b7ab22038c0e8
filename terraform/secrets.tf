# DATABASE_URL reaches the container through the task definition's `secrets` (the execution role
# reads it at task start), never as a plain environment value. Bring your own secret
# (database_url_secret_arn) or let the module create an empty one and put the value:
#   aws secretsmanager put-secret-value --secret-id <name> --secret-string 'postgresql://...'

resource "aws_secretsmanager_secret" "database_url" {
  count = var.database_url_secret_arn == null ? 1 : 0
  #checkov:skip=CKV2_AWS_57:The URL's password belongs to the database; rotate it with the database's own rotation (e.g. RDS-managed secret) and pass that secret as database_url_secret_arn.

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
}
