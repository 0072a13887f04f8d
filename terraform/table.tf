locals {
  table_name  = "${var.name}-logs"
  provisioned = var.billing_mode == "PROVISIONED"
}

# The item shape is DESIGN.md's: pk = service#hour#shard, sk = ms#id, TTL on expires_at.
resource "aws_dynamodb_table" "logs" {
  name                        = local.table_name
  billing_mode                = var.billing_mode
  hash_key                    = "pk"
  range_key                   = "sk"
  deletion_protection_enabled = var.deletion_protection
  # Provisioned: the starting capacity; autoscaling owns it from then on (ignore_changes).
  write_capacity = local.provisioned ? var.table_write_capacity.min : null
  read_capacity  = local.provisioned ? var.table_read_capacity.min : null

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

  # Off by default (variables.tf): logs that expire by TTL, and that clients can send again.
  point_in_time_recovery {
    enabled = var.point_in_time_recovery
  }

  # On demand, an optional cap on the write units a second (and so on the cost).
  dynamic "on_demand_throughput" {
    for_each = !local.provisioned && var.table_max_write_units != null ? [var.table_max_write_units] : []

    content {
      max_write_request_units = on_demand_throughput.value
    }
  }

  # The AWS-managed key aws/dynamodb: the tasks need no KMS permission of their own.
  server_side_encryption {
    enabled = true
  }

  lifecycle {
    ignore_changes = [read_capacity, write_capacity]
  }
}

# --- provisioned capacity: target tracking at 70 % of what is provisioned ---
# Left out on the embedded endpoint like every Application Auto Scaling resource (ecs.tf).

resource "aws_appautoscaling_target" "table" {
  for_each = local.provisioned && !var.embedded_endpoint ? {
    write = var.table_write_capacity
    read  = var.table_read_capacity
  } : {}

  service_namespace  = "dynamodb"
  scalable_dimension = "dynamodb:table:${title(each.key)}CapacityUnits"
  resource_id        = "table/${aws_dynamodb_table.logs.name}"
  min_capacity       = each.value.min
  max_capacity       = each.value.max
}

resource "aws_appautoscaling_policy" "table" {
  for_each = aws_appautoscaling_target.table

  name               = "${var.name}-table-${each.key}-capacity"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = each.value.service_namespace
  scalable_dimension = each.value.scalable_dimension
  resource_id        = each.value.resource_id

  target_tracking_scaling_policy_configuration {
    target_value       = 70
    scale_out_cooldown = 60
    scale_in_cooldown  = 300

    predefined_metric_specification {
      predefined_metric_type = each.key == "write" ? "DynamoDBWriteCapacityUtilization" : "DynamoDBReadCapacityUtilization"
    }
  }
}
