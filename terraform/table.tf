locals {
  table_name = "${var.name}-logs"
}

# The item shape is DESIGN.md's: pk = service#hour#shard, sk = ms#id, TTL on expires_at.
resource "aws_dynamodb_table" "logs" {
  name                        = local.table_name
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = "pk"
  range_key                   = "sk"
  deletion_protection_enabled = var.deletion_protection

  attribute {
    name = "pk"
    type = "S"
  }

  attribute {
    name = "sk"
    type = "S"
  }

  ttl {
    attribute_name = "expires_at"
    enabled        = true
  }

  point_in_time_recovery {
    enabled = true
  }

  # The AWS-managed key aws/dynamodb: the tasks need no KMS permission of their own.
  server_side_encryption {
    enabled = true
  }
}
