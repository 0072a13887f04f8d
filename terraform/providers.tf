provider "aws" {
  region = var.region

  default_tags {
    tags = {
      Project   = "logpipe"
      Stack     = var.name
      ManagedBy = "terraform"
    }
  }
}

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

# Regular AZs only (no Local or Wavelength Zones); network.tf takes the first two by name.
data "aws_availability_zones" "available" {
  state = "available"

  filter {
    name   = "opt-in-status"
    values = ["opt-in-not-required"]
  }
}
