# The deploy workflow applies these two resources first (-target), pushes the image, then
# applies the rest with the new tag.
resource "aws_ecr_repository" "app" {
  name                 = var.name
  image_tag_mutability = "IMMUTABLE"
  # `terraform destroy` empties the repository once deletion_protection is off; no
  # batch-delete of images (100 per call) by hand.
  force_delete = !var.deletion_protection

  image_scanning_configuration {
    scan_on_push = true
  }

  # KMS with the AWS-managed key aws/ecr: no key to pay for or administer.
  encryption_configuration {
    encryption_type = "KMS"
  }
}

resource "aws_ecr_lifecycle_policy" "app" {
  repository = aws_ecr_repository.app.name

  policy = jsonencode({
    rules = [
      {
        rulePriority = 1
        description  = "Untagged layers of interrupted pushes go after a week"
        selection = {
          tagStatus   = "untagged"
          countType   = "sinceImagePushed"
          countUnit   = "days"
          countNumber = 7
        }
        action = { type = "expire" }
      },
      {
        # A deploy pushes three images, all tagged: <sha>-amd64, <sha>-arm64 and their
        # index <sha> (.github/workflows/deploy.yml).
        rulePriority = 2
        description  = "Keep the newest images: the rollback window"
        selection = {
          tagStatus   = "any"
          countType   = "imageCountMoreThan"
          countNumber = var.ecr_keep_images * 3
        }
        action = { type = "expire" }
      },
    ]
  })
}
