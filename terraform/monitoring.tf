# Alarms and a dashboard. Application metrics arrive as CloudWatch Embedded Metric Format
# lines on each task's stdout: namespace "logpipe", dimension Role, DESIGN.md's Prometheus
# names without the "logpipe_" prefix. Queue and load balancer metrics are AWS's own.
locals {
  emf_namespace  = "logpipe"
  dashboard_name = var.name
  alarm_actions  = [aws_sns_topic.alarms.arn]
  # Running tasks per role, counted from their EMF lines (below): no Container Insights.
  running_tasks_metric = "running_tasks"
  # The services whose task count autoscaling drives, and the most it may run.
  scaled_services = merge(
    var.ingestor_count > 0 ? { ingestor = max(var.ingestor_max_count, var.ingestor_count) } : {},
    { processor = max(var.processor_max_count, var.processor_min_count) },
  )
}

# Every ingestor and processor task writes one EMF line of the main queue's gauges (Role,
# Queue = main) every LOGPIPE_EMF_INTERVAL_S (60 s): counted, they are the tasks running.
# One custom metric per role ($0.30 a month) instead of Container Insights' ninety.
resource "aws_cloudwatch_log_metric_filter" "running_tasks" {
  for_each = toset(["ingestor", "processor"])

  name           = "${var.name}-${each.key}-running-tasks"
  log_group_name = aws_cloudwatch_log_group.service[each.key].name
  pattern        = "{ ($.Role = \"${each.key}\") && ($.Queue = \"main\") && ($._aws.CloudWatchMetrics[0].Namespace = \"${local.emf_namespace}\") }"

  metric_transformation {
    namespace  = local.emf_namespace
    name       = local.running_tasks_metric
    value      = "1"
    dimensions = { Role = "$.Role" }
    unit       = "Count"
  }
}

resource "aws_sns_topic" "alarms" {
  name = "${var.name}-alarms"
}

resource "aws_sns_topic_subscription" "alarm_email" {
  count = var.alarm_email == "" ? 0 : 1

  topic_arn = aws_sns_topic.alarms.arn
  protocol  = "email"
  endpoint  = var.alarm_email
}

data "aws_iam_policy_document" "alarms_topic" {
  statement {
    sid       = "CloudWatchAlarmsPublish"
    actions   = ["sns:Publish"]
    resources = [aws_sns_topic.alarms.arn]

    principals {
      type        = "Service"
      identifiers = ["cloudwatch.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }

  statement {
    sid       = "FailedDeploymentsPublish"
    actions   = ["sns:Publish"]
    resources = [aws_sns_topic.alarms.arn]

    principals {
      type        = "Service"
      identifiers = ["events.amazonaws.com"]
    }

    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = [aws_cloudwatch_event_rule.deployment_failed.arn]
    }
  }
}

# A deployment the circuit breaker stopped (and rolled back) is news even though the
# service is healthy again on the old revision: the code that was meant to ship did not.
resource "aws_cloudwatch_event_rule" "deployment_failed" {
  name        = "${var.name}-ecs-deployment-failed"
  description = "An ECS deployment of the ${var.name} cluster failed (circuit breaker, rolled back)."

  event_pattern = jsonencode({
    source      = ["aws.ecs"]
    detail-type = ["ECS Deployment State Change"]
    resources   = [{ prefix = "arn:${data.aws_partition.current.partition}:ecs:${var.region}:${local.account_id}:service/${aws_ecs_cluster.main.name}/" }]
    detail      = { eventName = ["SERVICE_DEPLOYMENT_FAILED"] }
  })
}

resource "aws_cloudwatch_event_target" "deployment_failed" {
  rule = aws_cloudwatch_event_rule.deployment_failed.name
  arn  = aws_sns_topic.alarms.arn

  input_transformer {
    input_paths = {
      service    = "$.resources[0]"
      deployment = "$.detail.deploymentId"
      reason     = "$.detail.reason"
    }
    input_template = "\"ECS deployment <deployment> of <service> failed: <reason>\""
  }
}

resource "aws_sns_topic_policy" "alarms" {
  arn    = aws_sns_topic.alarms.arn
  policy = data.aws_iam_policy_document.alarms_topic.json
}

# Anything in the DLQ is an event that could not be stored after maxReceiveCount receives.
resource "aws_cloudwatch_metric_alarm" "dlq_not_empty" {
  alarm_name          = "${var.name}-dlq-not-empty"
  alarm_description   = "Messages in ${local.dlq_name}: inspect with `logpipe dlq inspect`, fix, then `logpipe dlq redrive`."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = aws_sqs_queue.dlq.name }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "oldest_message_age" {
  alarm_name          = "${var.name}-oldest-message-age"
  alarm_description   = "The oldest message of ${local.queue_name} waits longer than ${var.max_message_age_seconds} s: the processors are behind or stuck."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateAgeOfOldestMessage"
  dimensions          = { QueueName = aws_sqs_queue.events.name }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 5
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.max_message_age_seconds
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

# Throttled writes: the processors retry them (nothing is lost), but sustained throttling
# means the table takes less than the pipeline sends (table_max_write_units, provisioned
# capacity at its max, or one hot partition: raise `shards`).
resource "aws_cloudwatch_metric_alarm" "table_write_throttles" {
  alarm_name          = "${var.name}-table-write-throttles"
  alarm_description   = "DynamoDB throttles writes to ${local.table_name} in 3 of 5 minutes: the backlog grows. See README \"Scaling\"."
  namespace           = "AWS/DynamoDB"
  metric_name         = "WriteThrottleEvents"
  dimensions          = { TableName = aws_dynamodb_table.logs.name }
  statistic           = "Sum"
  period              = 60
  evaluation_periods  = 5
  datapoints_to_alarm = 3
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

# A service autoscaling cannot grow any more: the next load peak is not absorbed. Tasks
# averaged over 5 minutes (the EMF count may see a task's line twice in one minute).
resource "aws_cloudwatch_metric_alarm" "at_max_tasks" {
  for_each = local.scaled_services

  alarm_name          = "${var.name}-${each.key}-at-max-tasks"
  alarm_description   = "The ${each.key} service runs its maximum of ${each.value} tasks for 15 minutes: raise ${each.key}_max_count (within what the table takes) or find what slows it."
  evaluation_periods  = 3
  comparison_operator = "GreaterThanOrEqualToThreshold"
  threshold           = each.value - 0.5
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions

  metric_query {
    id = "reports"

    metric {
      namespace   = local.emf_namespace
      metric_name = local.running_tasks_metric
      dimensions  = { Role = each.key }
      stat        = "Sum"
      period      = 300
    }
  }

  metric_query {
    id          = "tasks"
    label       = "Running ${each.key} tasks"
    expression  = "reports / ${300 / local.emf_interval_s}"
    return_data = true
  }

  depends_on = [aws_cloudwatch_log_metric_filter.running_tasks]
}

# SQS deletes a message at the queue's retention whether or not it was stored: halfway
# there (7 days), a person must act.
resource "aws_cloudwatch_metric_alarm" "queue_age_near_retention" {
  alarm_name          = "${var.name}-queue-age-near-retention"
  alarm_description   = "The oldest message of ${local.queue_name} is ${local.queue_retention_s / 2 / 86400} days old; SQS deletes it, stored or not, at ${local.queue_retention_s / 86400} days."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateAgeOfOldestMessage"
  dimensions          = { QueueName = aws_sqs_queue.events.name }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = local.queue_retention_s / 2
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

# Ingest requests the ingestors refused whole, as a share of the requests the load
# balancer sent them: 429 (memory budget or SQS backlog full) and 503 (SQS unavailable,
# draining). logpipe's EMF sums requests_rejected_total over its reasons, so client
# errors refused whole (401, 413, 415) count too; below 20 requests a minute, nothing.
resource "aws_cloudwatch_metric_alarm" "ingest_refused" {
  count = var.ingestor_count > 0 ? 1 : 0

  alarm_name          = "${var.name}-ingest-refused"
  alarm_description   = "The ingestors refuse more than ${var.ingest_refused_percent} % of requests (429/503: overloaded or SQS unavailable; also bad keys or bodies) in 3 of 5 minutes. See requests_rejected_total by reason on /metrics."
  evaluation_periods  = 5
  datapoints_to_alarm = 3
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.ingest_refused_percent
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions

  metric_query {
    id = "refused"

    metric {
      namespace   = local.emf_namespace
      metric_name = "requests_rejected_total"
      dimensions  = { Role = "ingestor" }
      stat        = "Sum"
      period      = 60
    }
  }

  metric_query {
    id = "requests"

    metric {
      namespace   = "AWS/ApplicationELB"
      metric_name = "RequestCount"
      dimensions  = { LoadBalancer = aws_lb.main.arn_suffix, TargetGroup = aws_lb_target_group.ingestor.arn_suffix }
      stat        = "Sum"
      period      = 60
    }
  }

  metric_query {
    id          = "refused_percent"
    label       = "Ingest requests refused, %"
    expression  = "IF(requests >= 20, 100 * refused / requests, 0)"
    return_data = true
  }
}

# The processor's JSON log lines at level error or critical, counted per role.
resource "aws_cloudwatch_log_metric_filter" "processor_errors" {
  name           = "${var.name}-processor-errors"
  log_group_name = aws_cloudwatch_log_group.service["processor"].name
  pattern        = "{ ($.level = \"error\") || ($.level = \"critical\") }"

  metric_transformation {
    namespace  = local.emf_namespace
    name       = "log_errors_total"
    value      = "1"
    dimensions = { Role = "$.role" }
    unit       = "Count"
  }
}

resource "aws_cloudwatch_metric_alarm" "processor_errors" {
  alarm_name          = "${var.name}-processor-errors"
  alarm_description   = "The processor logged errors; see /ecs/${var.name}/processor."
  namespace           = local.emf_namespace
  metric_name         = "log_errors_total"
  dimensions          = { Role = "processor" }
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanOrEqualToThreshold"
  threshold           = 1
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions

  depends_on = [aws_cloudwatch_log_metric_filter.processor_errors]
}

resource "aws_cloudwatch_metric_alarm" "ingest_5xx" {
  alarm_name          = "${var.name}-ingest-5xx"
  alarm_description   = "Ingestor tasks answer 5xx: clients are retrying or losing logs."
  namespace           = "AWS/ApplicationELB"
  metric_name         = "HTTPCode_Target_5XX_Count"
  dimensions          = { LoadBalancer = aws_lb.main.arn_suffix, TargetGroup = aws_lb_target_group.ingestor.arn_suffix }
  statistic           = "Sum"
  period              = 60
  evaluation_periods  = 5
  datapoints_to_alarm = 3
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.ingest_5xx_threshold
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

# 5xx the load balancer itself answers: 502 (a task closed a connection the load balancer
# reused, or crashed), 503 (no healthy target), 504 (a task too slow).
resource "aws_cloudwatch_metric_alarm" "alb_5xx" {
  alarm_name          = "${var.name}-alb-5xx"
  alarm_description   = "The load balancer answers 5xx itself (502/503/504): ingest tasks are down, overloaded or closing connections early."
  namespace           = "AWS/ApplicationELB"
  metric_name         = "HTTPCode_ELB_5XX_Count"
  dimensions          = { LoadBalancer = aws_lb.main.arn_suffix }
  statistic           = "Sum"
  period              = 60
  evaluation_periods  = 5
  datapoints_to_alarm = 3
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.ingest_5xx_threshold
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "ingestor_unhealthy" {
  count = var.ingestor_count > 0 ? 1 : 0

  alarm_name          = "${var.name}-ingestor-no-healthy-target"
  alarm_description   = "No ingestor task passes /healthz: ingest is down."
  namespace           = "AWS/ApplicationELB"
  metric_name         = "HealthyHostCount"
  dimensions          = { LoadBalancer = aws_lb.main.arn_suffix, TargetGroup = aws_lb_target_group.ingestor.arn_suffix }
  statistic           = "Minimum"
  period              = 60
  evaluation_periods  = 3
  comparison_operator = "LessThanThreshold"
  threshold           = 1
  treat_missing_data  = "breaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_dashboard" "main" {
  dashboard_name = local.dashboard_name

  dashboard_body = jsonencode({
    widgets = [
      {
        type = "metric", x = 0, y = 0, width = 12, height = 6
        properties = {
          title  = "Events per minute: accepted, stored"
          region = var.region
          stat   = "Sum"
          period = 60
          view   = "timeSeries"
          metrics = [
            [local.emf_namespace, "events_accepted_total", "Role", "ingestor", { label = "accepted (ingestor)" }],
            [local.emf_namespace, "events_rejected_total", "Role", "ingestor", { label = "rejected (ingestor)" }],
            # Stored events carry a Service dimension as well: summed over every service.
            [{ id = "stored", label = "stored (processor)", expression = "SUM(SEARCH('{${local.emf_namespace},Role,Service} MetricName=\"events_stored_total\" Role=\"processor\"', 'Sum', 60))" }],
          ]
        }
      },
      {
        type = "metric", x = 12, y = 0, width = 12, height = 6
        properties = {
          title  = "End-to-end latency, ingest to stored (s)"
          region = var.region
          stat   = "Maximum"
          period = 60
          view   = "timeSeries"
          # The processor reports each interval's quantiles of its latency histogram.
          metrics = [
            [local.emf_namespace, "e2e_latency_seconds_p50", "Role", "processor", { label = "p50" }],
            [local.emf_namespace, "e2e_latency_seconds_p99", "Role", "processor", { label = "p99" }],
            [local.emf_namespace, "e2e_latency_seconds", "Role", "processor", { stat = "Average", label = "mean" }],
          ]
        }
      },
      {
        type = "metric", x = 0, y = 6, width = 12, height = 6
        properties = {
          title  = "Queue: visible messages and age of the oldest"
          region = var.region
          stat   = "Maximum"
          period = 60
          view   = "timeSeries"
          metrics = [
            ["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", aws_sqs_queue.events.name, { label = "visible (events)" }],
            ["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", aws_sqs_queue.dlq.name, { label = "visible (DLQ)" }],
            ["AWS/SQS", "ApproximateAgeOfOldestMessage", "QueueName", aws_sqs_queue.events.name, { label = "oldest age s (events)", yAxis = "right" }],
            [local.emf_namespace, "queue_oldest_age_seconds", "Role", "processor", "Queue", "dlq", { label = "oldest age s (DLQ)", yAxis = "right" }],
          ]
        }
      },
      {
        type = "metric", x = 12, y = 6, width = 12, height = 6
        properties = {
          title  = "SQS messages sent / deleted per minute"
          region = var.region
          stat   = "Sum"
          period = 60
          view   = "timeSeries"
          metrics = [
            [local.emf_namespace, "sqs_messages_sent_total", "Role", "ingestor", { label = "sent (ingestor)" }],
            [local.emf_namespace, "messages_deleted_total", "Role", "processor", { label = "deleted (processor)" }],
          ]
        }
      },
      {
        type = "metric", x = 0, y = 12, width = 12, height = 6
        properties = {
          title  = "Ingest load balancer: requests and 5xx"
          region = var.region
          stat   = "Sum"
          period = 60
          view   = "timeSeries"
          metrics = [
            ["AWS/ApplicationELB", "RequestCount", "LoadBalancer", aws_lb.main.arn_suffix, { label = "requests" }],
            ["AWS/ApplicationELB", "HTTPCode_Target_5XX_Count", "LoadBalancer", aws_lb.main.arn_suffix, { label = "target 5xx" }],
            ["AWS/ApplicationELB", "HTTPCode_ELB_5XX_Count", "LoadBalancer", aws_lb.main.arn_suffix, { label = "load balancer 5xx" }],
          ]
        }
      },
      {
        type = "metric", x = 12, y = 12, width = 12, height = 6
        properties = {
          title  = "Running tasks and processor errors"
          region = var.region
          period = 60
          view   = "timeSeries"
          metrics = [
            [local.emf_namespace, local.running_tasks_metric, "Role", "ingestor", { stat = "Sum", label = "ingestor tasks" }],
            [local.emf_namespace, local.running_tasks_metric, "Role", "processor", { stat = "Sum", label = "processor tasks" }],
            [local.emf_namespace, "log_errors_total", "Role", "processor", { stat = "Sum", label = "processor errors", yAxis = "right" }],
            ["AWS/DynamoDB", "WriteThrottleEvents", "TableName", aws_dynamodb_table.logs.name, { stat = "Sum", label = "table write throttles", yAxis = "right" }],
          ]
        }
      },
      {
        type = "alarm", x = 0, y = 18, width = 24, height = 3
        properties = {
          title = "Alarms"
          alarms = concat([
            aws_cloudwatch_metric_alarm.dlq_not_empty.arn,
            aws_cloudwatch_metric_alarm.oldest_message_age.arn,
            aws_cloudwatch_metric_alarm.queue_age_near_retention.arn,
            aws_cloudwatch_metric_alarm.processor_errors.arn,
            aws_cloudwatch_metric_alarm.table_write_throttles.arn,
            aws_cloudwatch_metric_alarm.ingest_5xx.arn,
            aws_cloudwatch_metric_alarm.alb_5xx.arn,
            ], aws_cloudwatch_metric_alarm.ingestor_unhealthy[*].arn, aws_cloudwatch_metric_alarm.ingest_refused[*].arn,
          [for alarm in aws_cloudwatch_metric_alarm.at_max_tasks : alarm.arn])
        }
      },
    ]
  })
}
