variable "name" {
  description = "Name of the ECS service and task definition family."
  type        = string
}

variable "role" {
  description = "The logpipe role this service runs: the container's ROLE."
  type        = string

  validation {
    condition     = contains(["ingestor", "processor", "emitter", "console"], var.role)
    error_message = "role must be ingestor, processor, emitter or console."
  }
}

variable "image" {
  description = "The logpipe image (repository URL and tag); the same for every role."
  type        = string
}

variable "environment" {
  description = "Environment shared by every role."
  type        = map(string)
}

variable "role_environment" {
  description = "Environment of this role only (added to, and overriding, the shared one)."
  type        = map(string)
  default     = {}
}

variable "secrets" {
  description = "Environment variables read from Secrets Manager or SSM at start: name => ARN."
  type        = map(string)
  default     = {}
}

variable "task_role_arn" {
  description = "IAM role the container's AWS calls use; null for a role that calls no AWS API."
  type        = string
  default     = null
}

variable "security_group_id" {
  description = "Security group of the tasks."
  type        = string
}

variable "log_group_name" {
  description = "CloudWatch log group of the container's stdout and stderr."
  type        = string
}

variable "desired_count" {
  description = "Tasks to run (the initial count when autoscaled)."
  type        = number
}

variable "autoscaled" {
  description = "Whether Application Auto Scaling owns the desired count after creation."
  type        = bool
  default     = false
}

variable "cpu" {
  description = "Fargate CPU units of one task."
  type        = number
}

variable "memory" {
  description = "Fargate memory of one task, MiB."
  type        = number
}

variable "container_port" {
  description = "Port the container serves HTTP on, registered with target_group_arn; null for none."
  type        = number
  default     = null
}

variable "target_group_arn" {
  description = "Load balancer target group of the service; null for none."
  type        = string
  default     = null
}

variable "stop_timeout" {
  description = "Seconds between SIGTERM and SIGKILL: the role drains within LOGPIPE_DRAIN_SECONDS (25) of it."
  type        = number
  default     = 30

  validation {
    condition     = var.stop_timeout >= 30 && var.stop_timeout <= 120
    error_message = "stop_timeout must be 30-120 seconds (Fargate's maximum is 120)."
  }
}

variable "cpu_architecture" {
  description = "CPU architecture of the task: X86_64 or ARM64 (the image is built for both)."
  type        = string
  default     = "X86_64"

  validation {
    condition     = contains(["X86_64", "ARM64"], var.cpu_architecture)
    error_message = "cpu_architecture must be X86_64 or ARM64."
  }
}

variable "capacity_provider" {
  description = "FARGATE, or FARGATE_SPOT (X86_64 only) for interruptible work at a discount."
  type        = string
  default     = "FARGATE"

  validation {
    condition     = contains(["FARGATE", "FARGATE_SPOT"], var.capacity_provider)
    error_message = "capacity_provider must be FARGATE or FARGATE_SPOT."
  }
}

variable "defaults" {
  description = "Settings every service of the stack shares."
  type = object({
    region               = string
    cluster_arn          = string
    execution_role_arn   = string
    subnet_ids           = list(string)
    assign_public_ip     = bool
    health_check_command = list(string)
  })
}
