# One image, five services: ROLE (and for the emitters LOGPIPE_EMITTER_SERVICE) is the only
# difference between them. Every value a role needs comes from the resources above, so a
# task can never point at a queue or table this stack did not create.
locals {
  image = "${aws_ecr_repository.app.repository_url}:${var.image_tag}"

  environment = {
    AWS_REGION                   = var.region
    LOGPIPE_QUEUE_NAME           = aws_sqs_queue.events.name
    LOGPIPE_DLQ_NAME             = aws_sqs_queue.dlq.name
    LOGPIPE_TABLE_NAME           = aws_dynamodb_table.logs.name
    LOGPIPE_RETENTION_DAYS       = tostring(var.event_retention_days)
    LOGPIPE_SHARDS               = tostring(var.shards)
    LOGPIPE_LOG_LEVEL            = var.log_level
    LOGPIPE_VISIBILITY_TIMEOUT_S = tostring(local.visibility_timeout_s)
    LOGPIPE_MAX_RECEIVE_COUNT    = tostring(local.max_receive_count)
    LOGPIPE_PORT                 = tostring(local.http_port)
    LOGPIPE_METRICS_PORT         = tostring(local.metrics_port)
    LOGPIPE_DRAIN_SECONDS        = "25"
    # Metrics as EMF lines on stdout; awslogs ships them and CloudWatch extracts them. One
    # line per group a minute per task: monitoring.tf counts running tasks by them.
    LOGPIPE_EMF            = "true"
    LOGPIPE_EMF_INTERVAL_S = tostring(local.emf_interval_s)
  }
  emf_interval_s = 60

  # The same command as the image's HEALTHCHECK (ECS ignores the Dockerfile's): GET /healthz
  # on LOGPIPE_PORT for the HTTP roles, /metrics on LOGPIPE_METRICS_PORT for the others.
  health_check_command = ["CMD", "python", "-c", "import os, urllib.request as r; h = os.environ.get('ROLE') in ('ingestor', 'console'); p = os.environ.get('LOGPIPE_PORT' if h else 'LOGPIPE_METRICS_PORT') or ('8080' if h else '9100'); r.urlopen(f'http://127.0.0.1:{p}/' + ('healthz' if h else 'metrics'), timeout=4)"]

  # The demo emitters exist only with demo_emitters (variables.tf).
  services = concat(["ingestor", "processor", "console"], var.demo_emitters ? ["emitter-a", "emitter-b"] : [])

  service_defaults = {
    region               = var.region
    cluster_arn          = aws_ecs_cluster.main.arn
    execution_role_arn   = aws_iam_role.execution.arn
    subnet_ids           = local.task_subnet_ids
    assign_public_ip     = local.task_public_ip
    health_check_command = local.health_check_command
  }
}

resource "aws_ecs_cluster" "main" {
  name = var.name

  setting {
    name  = "containerInsights"
    value = var.container_insights ? "enabled" : "disabled"
  }
}

# Fargate Spot for the processors (processor_spot) needs the capacity provider on the cluster.
resource "aws_ecs_cluster_capacity_providers" "main" {
  count = var.processor_spot ? 1 : 0

  cluster_name       = aws_ecs_cluster.main.name
  capacity_providers = ["FARGATE", "FARGATE_SPOT"]
}

resource "aws_cloudwatch_log_group" "service" {
  for_each = toset(local.services)

  name              = "/ecs/${var.name}/${each.key}"
  retention_in_days = var.log_retention_days
}

module "ingestor" {
  source = "./modules/service"

  name              = "${var.name}-ingestor"
  role              = "ingestor"
  image             = local.image
  environment       = local.environment
  secrets           = { LOGPIPE_API_KEYS = var.api_keys_secret_arn }
  task_role_arn     = aws_iam_role.ingestor.arn
  security_group_id = aws_security_group.ingestor.id
  log_group_name    = aws_cloudwatch_log_group.service["ingestor"].name
  desired_count     = var.ingestor_count
  autoscaled        = true
  cpu               = 512
  memory            = 1024
  cpu_architecture  = var.cpu_architecture
  container_port    = local.http_port
  target_group_arn  = aws_lb_target_group.ingestor.arn
  defaults          = local.service_defaults

  depends_on = [aws_lb_listener_rule.ingest, aws_iam_role_policy.execution, aws_iam_role_policy.ingestor]
}

module "processor" {
  source = "./modules/service"

  name              = "${var.name}-processor"
  role              = "processor"
  image             = local.image
  environment       = local.environment
  secrets           = {}
  task_role_arn     = aws_iam_role.processor.arn
  security_group_id = aws_security_group.processor.id
  log_group_name    = aws_cloudwatch_log_group.service["processor"].name
  desired_count     = var.processor_min_count
  autoscaled        = true
  cpu               = 512
  memory            = 1024
  # Fargate Spot runs X86_64 only: a Spot processor runs X86_64 whatever cpu_architecture says.
  cpu_architecture  = var.processor_spot ? "X86_64" : var.cpu_architecture
  capacity_provider = var.processor_spot ? "FARGATE_SPOT" : "FARGATE"
  defaults          = local.service_defaults

  depends_on = [aws_iam_role_policy.execution, aws_iam_role_policy.processor, aws_ecs_cluster_capacity_providers.main]
}

module "console" {
  source = "./modules/service"

  name              = "${var.name}-console"
  role              = "console"
  image             = local.image
  environment       = local.environment
  secrets           = { LOGPIPE_READ_KEYS = var.read_keys_secret_arn, LOGPIPE_CURSOR_SECRET = var.cursor_secret_arn }
  task_role_arn     = aws_iam_role.console.arn
  security_group_id = aws_security_group.console.id
  log_group_name    = aws_cloudwatch_log_group.service["console"].name
  desired_count     = var.console_count
  cpu               = 256
  memory            = 512
  cpu_architecture  = var.cpu_architecture
  container_port    = local.http_port
  target_group_arn  = aws_lb_target_group.console.arn
  defaults          = local.service_defaults

  depends_on = [aws_lb_listener.console, aws_iam_role_policy.execution, aws_iam_role_policy.console]
}

# The emitters send with the first API key, so they get the same secret as the ingestor.
# Demo and load only (demo_emitters): before it, these services always existed.
module "emitter_a" {
  source = "./modules/service"
  count  = var.demo_emitters ? 1 : 0

  name  = "${var.name}-emitter-a"
  role  = "emitter"
  image = local.image
  role_environment = {
    LOGPIPE_EMITTER_SERVICE = "service-a"
    LOGPIPE_INGESTOR_URL    = local.ingest_url
    LOGPIPE_EMITTER_RATE    = tostring(var.emitter_rate)
  }
  environment       = local.environment
  secrets           = { LOGPIPE_API_KEYS = var.api_keys_secret_arn }
  task_role_arn     = null
  security_group_id = aws_security_group.emitter.id
  log_group_name    = aws_cloudwatch_log_group.service["emitter-a"].name
  desired_count     = var.emitter_a_count
  cpu               = 256
  memory            = 512
  cpu_architecture  = var.cpu_architecture
  defaults          = local.service_defaults

  depends_on = [aws_iam_role_policy.execution]
}

module "emitter_b" {
  source = "./modules/service"
  count  = var.demo_emitters ? 1 : 0

  name  = "${var.name}-emitter-b"
  role  = "emitter"
  image = local.image
  role_environment = {
    LOGPIPE_EMITTER_SERVICE = "service-b"
    LOGPIPE_INGESTOR_URL    = local.ingest_url
    LOGPIPE_EMITTER_RATE    = tostring(var.emitter_rate)
  }
  environment       = local.environment
  secrets           = { LOGPIPE_API_KEYS = var.api_keys_secret_arn }
  task_role_arn     = null
  security_group_id = aws_security_group.emitter.id
  log_group_name    = aws_cloudwatch_log_group.service["emitter-b"].name
  desired_count     = var.emitter_b_count
  cpu               = 256
  memory            = 512
  cpu_architecture  = var.cpu_architecture
  defaults          = local.service_defaults

  depends_on = [aws_iam_role_policy.execution]
}

# --- ingestor autoscaling: requests per task from the load balancer, and CPU ---
# Two target-tracking policies: the service scales out when either is above its target and
# in only when both are below. ingestor_count is the floor (0 keeps the service off).
# All of it is left out on the embedded endpoint: moto's Application Auto Scaling answers
# ListTagsForResource with a 500, which the provider retries for as long as it may.

resource "aws_appautoscaling_target" "ingestor" {
  count = var.embedded_endpoint ? 0 : 1

  service_namespace  = "ecs"
  scalable_dimension = "ecs:service:DesiredCount"
  resource_id        = "service/${aws_ecs_cluster.main.name}/${module.ingestor.service_name}"
  min_capacity       = var.ingestor_count
  max_capacity       = var.ingestor_count == 0 ? 0 : max(var.ingestor_max_count, var.ingestor_count)
}

resource "aws_appautoscaling_policy" "ingestor_requests" {
  count = var.embedded_endpoint ? 0 : 1

  name               = "${var.name}-ingestor-requests-per-task"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.ingestor[0].service_namespace
  scalable_dimension = aws_appautoscaling_target.ingestor[0].scalable_dimension
  resource_id        = aws_appautoscaling_target.ingestor[0].resource_id

  target_tracking_scaling_policy_configuration {
    target_value       = var.ingestor_requests_per_task
    scale_out_cooldown = 60
    scale_in_cooldown  = 300

    predefined_metric_specification {
      predefined_metric_type = "ALBRequestCountPerTarget"
      resource_label         = "${aws_lb.main.arn_suffix}/${aws_lb_target_group.ingestor.arn_suffix}"
    }
  }
}

resource "aws_appautoscaling_policy" "ingestor_cpu" {
  count = var.embedded_endpoint ? 0 : 1

  name               = "${var.name}-ingestor-cpu"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.ingestor[0].service_namespace
  scalable_dimension = aws_appautoscaling_target.ingestor[0].scalable_dimension
  resource_id        = aws_appautoscaling_target.ingestor[0].resource_id

  target_tracking_scaling_policy_configuration {
    target_value       = var.ingestor_cpu_percent
    scale_out_cooldown = 60
    scale_in_cooldown  = 300

    predefined_metric_specification {
      predefined_metric_type = "ECSServiceAverageCPUUtilization"
    }
  }
}

# --- processor autoscaling: target tracking on visible messages per running task, and a
# step out when the oldest message waits too long (few but slow messages) ---
# Target tracking sets the count in proportion to the metric, in one step: 1 task with
# 10 × processor_backlog_per_task waiting becomes 10 tasks as soon as its alarm fires (three
# minutes), not one task more per cooldown. Running tasks are counted from the
# processors' own EMF lines (monitoring.tf, running_tasks), so this needs no Container
# Insights; without a count (no processor reporting) the age policy below still acts.

resource "aws_appautoscaling_target" "processor" {
  count = var.embedded_endpoint ? 0 : 1

  service_namespace  = "ecs"
  scalable_dimension = "ecs:service:DesiredCount"
  resource_id        = "service/${aws_ecs_cluster.main.name}/${module.processor.service_name}"
  min_capacity       = var.processor_min_count
  max_capacity       = max(var.processor_max_count, var.processor_min_count)
}

resource "aws_appautoscaling_policy" "processor_backlog" {
  count = var.embedded_endpoint ? 0 : 1

  name               = "${var.name}-processor-backlog-per-task"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.processor[0].service_namespace
  scalable_dimension = aws_appautoscaling_target.processor[0].scalable_dimension
  resource_id        = aws_appautoscaling_target.processor[0].resource_id

  target_tracking_scaling_policy_configuration {
    target_value       = var.processor_backlog_per_task
    scale_out_cooldown = 30
    scale_in_cooldown  = 300

    customized_metric_specification {
      metrics {
        id          = "visible"
        return_data = false

        metric_stat {
          stat = "Average"

          metric {
            namespace   = "AWS/SQS"
            metric_name = "ApproximateNumberOfMessagesVisible"

            dimensions {
              name  = "QueueName"
              value = aws_sqs_queue.events.name
            }
          }
        }
      }

      metrics {
        id          = "tasks"
        return_data = false

        metric_stat {
          stat = "Sum"

          metric {
            namespace   = local.emf_namespace
            metric_name = local.running_tasks_metric

            dimensions {
              name  = "Role"
              value = "processor"
            }
          }
        }
      }

      metrics {
        id          = "backlog_per_task"
        label       = "Visible messages per processor task"
        expression  = "visible / tasks"
        return_data = true
      }
    }
  }

  depends_on = [aws_cloudwatch_log_metric_filter.running_tasks]
}

resource "aws_appautoscaling_policy" "processor_oldest_message" {
  count = var.embedded_endpoint ? 0 : 1

  name               = "${var.name}-processor-oldest-message"
  policy_type        = "StepScaling"
  service_namespace  = aws_appautoscaling_target.processor[0].service_namespace
  scalable_dimension = aws_appautoscaling_target.processor[0].scalable_dimension
  resource_id        = aws_appautoscaling_target.processor[0].resource_id

  step_scaling_policy_configuration {
    adjustment_type          = "PercentChangeInCapacity"
    min_adjustment_magnitude = 1
    cooldown                 = 60
    metric_aggregation_type  = "Maximum"

    # Bounds are relative to the alarm's threshold (processor_scale_out_age_seconds): half
    # as many tasks again, twice as many once the oldest message is twice as old.
    step_adjustment {
      metric_interval_lower_bound = 0
      metric_interval_upper_bound = var.processor_scale_out_age_seconds
      scaling_adjustment          = 50
    }

    step_adjustment {
      metric_interval_lower_bound = var.processor_scale_out_age_seconds
      scaling_adjustment          = 100
    }
  }
}

# Drives the step policy above only; the oldest_message_age alarm (monitoring.tf) is the
# one that notifies people, at a higher threshold.
resource "aws_cloudwatch_metric_alarm" "processor_scale_out_age" {
  count = var.embedded_endpoint ? 0 : 1

  alarm_name          = "${var.name}-processor-scale-out-oldest-message"
  alarm_description   = "Adds processor tasks while the oldest message of ${local.queue_name} waits longer than ${var.processor_scale_out_age_seconds} s."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateAgeOfOldestMessage"
  dimensions          = { QueueName = aws_sqs_queue.events.name }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.processor_scale_out_age_seconds
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_appautoscaling_policy.processor_oldest_message[0].arn]
}

moved {
  from = module.emitter_a
  to   = module.emitter_a[0]
}

moved {
  from = module.emitter_b
  to   = module.emitter_b[0]
}
