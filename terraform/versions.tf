terraform {
  # S3-native state locking (use_lockfile) needs Terraform 1.10 or newer.
  required_version = ">= 1.10.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.100"
    }
  }

  # Partial configuration: bucket, key and region are passed to `terraform init` with
  # -backend-config (README "Deploy"), so no account-specific name is committed.
  backend "s3" {
    encrypt      = true
    use_lockfile = true
  }
}
