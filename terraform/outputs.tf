output "ingest_url" {
  description = "Base URL of the ingestor: POST <ingest_url>/ingest."
  value       = local.ingest_url
}

output "console_url" {
  description = "Console URL, reachable from console_allowed_cidrs only."
  value       = local.console_url
}

output "queue_url" {
  description = "URL of the events queue."
  value       = aws_sqs_queue.events.url
}

output "dlq_url" {
  description = "URL of the dead-letter queue."
  value       = aws_sqs_queue.dlq.url
}

output "table_name" {
  description = "DynamoDB table of stored events."
  value       = aws_dynamodb_table.logs.name
}

output "dashboard_url" {
  description = "CloudWatch dashboard of the stack."
  value       = "https://${var.region}.console.aws.amazon.com/cloudwatch/home?region=${var.region}#dashboards:name=${aws_cloudwatch_dashboard.main.dashboard_name}"
}

output "ecr_repository_url" {
  description = "ECR repository the deploy workflow pushes the image to."
  value       = aws_ecr_repository.app.repository_url
}

output "cluster_name" {
  description = "ECS cluster of the services."
  value       = aws_ecs_cluster.main.name
}

output "service_names" {
  description = "ECS services of the stack, one per role (the deploy workflow redeploys and waits for each)."
  value = concat(
    [module.ingestor.service_name, module.processor.service_name, module.console.service_name],
    module.emitter_a[*].service_name,
    module.emitter_b[*].service_name,
  )
}

output "task_definitions" {
  description = "Task definition revision each ECS service must run after this apply: the deploy workflow checks every service's PRIMARY deployment against it."
  value = merge(
    {
      (module.ingestor.service_name)  = module.ingestor.task_definition_arn
      (module.processor.service_name) = module.processor.task_definition_arn
      (module.console.service_name)   = module.console.task_definition_arn
    },
    { for emitter in concat(module.emitter_a, module.emitter_b) : emitter.service_name => emitter.task_definition_arn },
  )
}

output "alarm_topic_arn" {
  description = "SNS topic the alarms notify; subscribe more endpoints to it as needed."
  value       = aws_sns_topic.alarms.arn
}
