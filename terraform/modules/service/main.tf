# One logpipe role as an ECS Fargate service: its task definition (the shared image with
# ROLE set) and the service, optionally behind a load balancer target group.
locals {
  # ROLE is merged last: no shared or role variable can change which role a task runs.
  environment = merge(var.environment, var.role_environment, { ROLE = var.role })

  container = {
    name                   = "logpipe"
    image                  = var.image
    essential              = true
    readonlyRootFilesystem = true
    stopTimeout            = var.stop_timeout
    environment            = [for name, value in local.environment : { name = name, value = value }]
    secrets                = [for name, arn in var.secrets : { name = name, valueFrom = arn }]
    portMappings           = var.container_port == null ? [] : [{ containerPort = var.container_port, protocol = "tcp" }]
    # tini as PID 1 forwards SIGTERM to logpipe and reaps the health check's processes.
    linuxParameters = { initProcessEnabled = true }

    healthCheck = {
      command     = var.defaults.health_check_command
      interval    = 15
      timeout     = 5
      retries     = 3
      startPeriod = 20
    }

    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = var.log_group_name
        awslogs-region        = var.defaults.region
        awslogs-stream-prefix = var.role
        # Never block the event loop on CloudWatch Logs; the buffer absorbs bursts.
        mode            = "non-blocking"
        max-buffer-size = "25m"
      }
    }
  }

  network_configuration = {
    subnets         = var.defaults.subnet_ids
    security_groups = [var.security_group_id]
    # Only where the stack's own VPC has no NAT gateway (network.tf): the tasks reach AWS
    # APIs through the internet gateway; their security groups admit nothing from outside.
    assign_public_ip = var.defaults.assign_public_ip
  }
  spot = var.capacity_provider == "FARGATE_SPOT"
}

resource "aws_ecs_task_definition" "this" {
  family                   = var.name
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.cpu
  memory                   = var.memory
  execution_role_arn       = var.defaults.execution_role_arn
  task_role_arn            = var.task_role_arn
  container_definitions    = jsonencode([local.container])
  # A new image registers a new revision and keeps the old one: a rollback (the circuit
  # breaker's or an operator's) needs the revision it goes back to.
  skip_destroy = true

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.cpu_architecture
  }

  lifecycle {
    precondition {
      condition     = !(local.spot && var.cpu_architecture == "ARM64")
      error_message = "Fargate Spot runs X86_64 tasks only."
    }
  }
}

# Two variants of the service, one of which exists: when autoscaling owns the desired count,
# Terraform must ignore it, or every apply would reset the scaled-out count.
resource "aws_ecs_service" "this" {
  count = var.autoscaled ? 0 : 1

  name                    = var.name
  cluster                 = var.defaults.cluster_arn
  task_definition         = aws_ecs_task_definition.this.arn
  desired_count           = var.desired_count
  launch_type             = local.spot ? null : "FARGATE"
  platform_version        = "LATEST"
  propagate_tags          = "SERVICE"
  enable_ecs_managed_tags = true
  # Deployments replace tasks only once the new ones are healthy.
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200
  health_check_grace_period_seconds  = var.target_group_arn == null ? null : 30

  dynamic "capacity_provider_strategy" {
    for_each = local.spot ? ["FARGATE_SPOT"] : []

    content {
      capacity_provider = capacity_provider_strategy.value
      weight            = 1
    }
  }

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = local.network_configuration.subnets
    security_groups  = local.network_configuration.security_groups
    assign_public_ip = local.network_configuration.assign_public_ip
  }

  dynamic "load_balancer" {
    for_each = var.target_group_arn == null ? [] : [var.target_group_arn]

    content {
      target_group_arn = load_balancer.value
      container_name   = local.container.name
      container_port   = var.container_port
    }
  }
}

resource "aws_ecs_service" "autoscaled" {
  count = var.autoscaled ? 1 : 0

  name                               = var.name
  cluster                            = var.defaults.cluster_arn
  task_definition                    = aws_ecs_task_definition.this.arn
  desired_count                      = var.desired_count
  launch_type                        = local.spot ? null : "FARGATE"
  platform_version                   = "LATEST"
  propagate_tags                     = "SERVICE"
  enable_ecs_managed_tags            = true
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200
  health_check_grace_period_seconds  = var.target_group_arn == null ? null : 30

  dynamic "capacity_provider_strategy" {
    for_each = local.spot ? ["FARGATE_SPOT"] : []

    content {
      capacity_provider = capacity_provider_strategy.value
      weight            = 1
    }
  }

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = local.network_configuration.subnets
    security_groups  = local.network_configuration.security_groups
    assign_public_ip = local.network_configuration.assign_public_ip
  }

  dynamic "load_balancer" {
    for_each = var.target_group_arn == null ? [] : [var.target_group_arn]

    content {
      target_group_arn = load_balancer.value
      container_name   = local.container.name
      container_port   = var.container_port
    }
  }

  lifecycle {
    ignore_changes = [desired_count]
  }
}
