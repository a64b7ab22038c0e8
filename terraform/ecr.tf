# The image repository. Tags are immutable: a deploy names an exact build (git SHA), and rollback
# re-deploys an older tag that still exists.

resource "aws_ecr_repository" "this" {
  name                 = var.name
  image_tag_mutability = "IMMUTABLE"

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "KMS" # AWS managed key for ECR; pulls need no extra permission
  }

  tags = local.tags
}

# Lifecycle: an image a task definition in use names must never expire, or the next task start
# (a scale-out, an instance refresh, the next sweep every few minutes) fails with
# CannotPullContainer. ECR cannot see task definitions, so the rule works from the deploy's tag
# scheme (deploy/ecs/deploy.py): one release = one tag T, pushed as the worker image T (T-cpu on
# Fargate) and the sweep image T-sweep, both rolled out together.
#  1. The tags Terraform's own task definitions name (image_tag and the sweep's tag) are kept
#     forever (one image each; an image matched by a higher-priority rule is never expired by a
#     lower one). A later `terraform apply` may re-register those revisions at any time.
#  2. Sweep images and worker images are counted apart (ecr_keep_images each), so a release's
#     sweep image lives as long as its worker image: the running release is the newest push, its
#     rollback targets the ecr_keep_images - 1 releases before it. Only pushing more than that many
#     builds that are never deployed (CI builds of branches: push those elsewhere) could expire the
#     running release.
#  3. Untagged images (no task definition names them; tags are immutable) after 7 days.
locals {
  # Tags in this repository that Terraform's task definitions reference.
  terraform_image_tags = distinct(compact([
    var.image_tag,
    startswith(local.sweep_image, "${aws_ecr_repository.this.repository_url}:") ? trimprefix(local.sweep_image, "${aws_ecr_repository.this.repository_url}:") : null,
  ]))
  ecr_keep_terraform_tags = [
    for index, tag in local.terraform_image_tags : {
      rulePriority = 1 + index
      description  = "Keep ${tag}: a task definition Terraform registered names it"
      selection = {
        tagStatus      = "tagged"
        tagPatternList = [tag]
        countType      = "imageCountMoreThan"
        countNumber    = 1
      }
      action = { type = "expire" }
    }
  ]
  ecr_rules_after = length(local.terraform_image_tags) + 1
}

resource "aws_ecr_lifecycle_policy" "this" {
  repository = aws_ecr_repository.this.name
  policy = jsonencode({
    rules = concat(local.ecr_keep_terraform_tags, [
      {
        rulePriority = local.ecr_rules_after
        description  = "Keep the newest ${var.ecr_keep_images} sweep images (<tag>-sweep)"
        selection = {
          tagStatus      = "tagged"
          tagPatternList = ["*-sweep"]
          countType      = "imageCountMoreThan"
          countNumber    = var.ecr_keep_images
        }
        action = { type = "expire" }
      },
      {
        rulePriority = local.ecr_rules_after + 1
        description  = "Expire untagged images after 7 days"
        selection = {
          tagStatus   = "untagged"
          countType   = "sinceImagePushed"
          countUnit   = "days"
          countNumber = 7
        }
        action = { type = "expire" }
      },
      {
        # tagStatus "any" must come last: it sees only images no rule above matched.
        rulePriority = local.ecr_rules_after + 2
        description  = "Keep the newest ${var.ecr_keep_images} worker images (rollback targets)"
        selection = {
          tagStatus   = "any"
          countType   = "imageCountMoreThan"
          countNumber = var.ecr_keep_images
        }
        action = { type = "expire" }
      },
    ])
  })
}
