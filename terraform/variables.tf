variable "region" {
  description = "AWS region for the whole stack."
  type        = string
  default     = "us-east-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must be an AWS region name such as us-east-1."
  }
}

variable "name" {
  description = "Name prefix of every resource; the queue, DLQ and table are <name>-events, <name>-events-dlq and <name>-logs."
  type        = string
  default     = "logpipe"

  validation {
    # The ALB target group names (<name>-ingestor, <name>-console) must fit in 32 characters.
    condition     = can(regex("^[a-z][a-z0-9-]{1,22}$", var.name))
    error_message = "name must be 2-23 characters of a-z, 0-9 and -, starting with a letter."
  }
}

variable "image_tag" {
  description = "Tag of the logpipe image in the stack's ECR repository (the deploy workflow uses the commit SHA)."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.image_tag)) && var.image_tag != "latest"
    error_message = "image_tag must be a valid, immutable Docker tag (not \"latest\"), e.g. a commit SHA."
  }
}

variable "api_keys_secret_arn" {
  description = "ARN of a Secrets Manager secret or SSM SecureString parameter whose value is the comma-separated ingest API keys; injected as LOGPIPE_API_KEYS through ECS secrets, never as plain environment."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:(secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:.+|ssm:[a-z0-9-]+:[0-9]{12}:parameter/.+)$", var.api_keys_secret_arn))
    error_message = "api_keys_secret_arn must be the ARN of a Secrets Manager secret or an SSM parameter."
  }
}

variable "ingestor_count" {
  description = "Fewest ingestor tasks behind the load balancer; autoscaling adds up to ingestor_max_count. 0 turns ingest off. One at rest (README \"What it costs at rest\"): if its AZ fails, ECS starts it again in the other one within minutes while clients retry; 2 keeps one in each AZ ($18 a month more)."
  type        = number
  default     = 1

  validation {
    condition     = var.ingestor_count >= 0 && var.ingestor_count <= 50 && floor(var.ingestor_count) == var.ingestor_count
    error_message = "ingestor_count must be a whole number 0-50."
  }
}

variable "ingestor_max_count" {
  description = "Most ingestor tasks autoscaling may run (ingestor_count is the fewest)."
  type        = number
  default     = 10

  validation {
    condition     = var.ingestor_max_count >= 1 && var.ingestor_max_count <= 100 && floor(var.ingestor_max_count) == var.ingestor_max_count
    error_message = "ingestor_max_count must be a whole number 1-100."
  }
}

variable "ingestor_requests_per_task" {
  description = "Target of the ingestor's autoscaling: load balancer requests per task per minute (ALBRequestCountPerTarget). One request may carry many events."
  type        = number
  default     = 3000

  validation {
    condition     = var.ingestor_requests_per_task >= 10
    error_message = "ingestor_requests_per_task must be at least 10."
  }
}

variable "ingestor_cpu_percent" {
  description = "Target of the ingestor's second autoscaling policy: average CPU of its tasks, percent."
  type        = number
  default     = 60

  validation {
    condition     = var.ingestor_cpu_percent >= 10 && var.ingestor_cpu_percent <= 90
    error_message = "ingestor_cpu_percent must be 10-90."
  }
}

variable "processor_min_count" {
  description = "Fewest processor tasks; autoscaling on queue backlog per task adds more."
  type        = number
  default     = 1

  validation {
    condition     = var.processor_min_count >= 1 && var.processor_min_count <= 50 && floor(var.processor_min_count) == var.processor_min_count
    error_message = "processor_min_count must be a whole number 1-50."
  }
}

variable "processor_max_count" {
  description = "Most processor tasks autoscaling may run. Each writes up to processor_write_units_per_task write units a second, and all of them together must fit what the table takes (table_max_write_units): more tasks would only be throttled."
  type        = number
  default     = 10

  validation {
    condition     = var.processor_max_count >= 1 && var.processor_max_count <= 100 && floor(var.processor_max_count) == var.processor_max_count
    error_message = "processor_max_count must be a whole number 1-100."
  }

  validation {
    # Cross-variable validation needs Terraform 1.9+ (required_version is 1.10).
    condition     = var.processor_max_count * var.processor_write_units_per_task <= (var.billing_mode == "PROVISIONED" ? var.table_write_capacity.max : coalesce(var.table_max_write_units, 40000))
    error_message = "processor_max_count × processor_write_units_per_task is more than the table takes (table_write_capacity.max when PROVISIONED, else table_max_write_units, by default the 40,000 write units a second an on-demand table is allowed): lower processor_max_count or raise the table's limit (an on-demand table above 40,000 needs a quota increase)."
  }
}

variable "processor_write_units_per_task" {
  description = "DynamoDB write units a second one processor task writes at full speed: the planning figure processor_max_count is checked with. 4,000: a 0.5-vCPU task stores a few thousand ~1 KB events a second (43 µs of CPU each in bench/, at one write unit each); measure yours with `logpipe bench` (wru_per_event, events_per_s)."
  type        = number
  default     = 4000

  validation {
    condition     = var.processor_write_units_per_task >= 1
    error_message = "processor_write_units_per_task must be at least 1."
  }
}

variable "processor_backlog_per_task" {
  description = "Target of the processor's autoscaling: visible SQS messages per running processor task (target tracking; it scales out in proportion to the backlog in one step, once its alarm has seen three minutes above the target). One message holds up to LOGPIPE_SQS_MAX_BYTES as sent (256 KiB; gzipped, up to about 650 events of 1 KB)."
  type        = number
  default     = 100

  validation {
    condition     = var.processor_backlog_per_task >= 1
    error_message = "processor_backlog_per_task must be at least 1."
  }
}

variable "processor_scale_out_age_seconds" {
  description = "Add processor tasks (half as many again, or twice as many when twice as old) while the oldest queued message is older than this, whatever the backlog per task."
  type        = number
  default     = 120

  validation {
    condition     = var.processor_scale_out_age_seconds >= 30
    error_message = "processor_scale_out_age_seconds must be at least 30."
  }
}

variable "console_count" {
  description = "Console tasks (read-only log search)."
  type        = number
  default     = 1

  validation {
    condition     = var.console_count >= 0 && var.console_count <= 10 && floor(var.console_count) == var.console_count
    error_message = "console_count must be a whole number 0-10."
  }
}

variable "demo_emitters" {
  description = "Create the demo emitter services (emitter-a, emitter-b), which send generated events to the ingest URL. Off by default: two emitters at 20 events/s store about 100 million events a month. The README's trial deploy turns them on."
  type        = bool
  default     = false
}

variable "emitter_a_count" {
  description = "Emitter tasks simulating service-a, with demo_emitters (demo and load only: they generate billable traffic)."
  type        = number
  default     = 1

  validation {
    condition     = var.emitter_a_count >= 0 && var.emitter_a_count <= 20 && floor(var.emitter_a_count) == var.emitter_a_count
    error_message = "emitter_a_count must be a whole number 0-20."
  }
}

variable "emitter_b_count" {
  description = "Emitter tasks simulating service-b, with demo_emitters (demo and load only: they generate billable traffic)."
  type        = number
  default     = 1

  validation {
    condition     = var.emitter_b_count >= 0 && var.emitter_b_count <= 20 && floor(var.emitter_b_count) == var.emitter_b_count
    error_message = "emitter_b_count must be a whole number 0-20."
  }
}

variable "emitter_rate" {
  description = "Events per second each emitter task sends (LOGPIPE_EMITTER_RATE)."
  type        = number
  default     = 20

  validation {
    condition     = var.emitter_rate > 0 && var.emitter_rate <= 10000
    error_message = "emitter_rate must be above 0 and at most 10000."
  }
}

variable "event_retention_days" {
  description = "Days a stored event lives before DynamoDB's TTL removes it (LOGPIPE_RETENTION_DAYS, attribute expires_at)."
  type        = number
  default     = 30

  validation {
    condition     = var.event_retention_days >= 1 && var.event_retention_days <= 36500 && floor(var.event_retention_days) == var.event_retention_days
    error_message = "event_retention_days must be a whole number 1-36500."
  }
}

variable "log_retention_days" {
  description = "Retention of the containers' own CloudWatch log groups (and the VPC flow logs)."
  type        = number
  default     = 30

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a value CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, 60, 90, ..., 3653)."
  }
}

variable "shards" {
  description = "Partitions per service and hour in the table key (LOGPIPE_SHARDS); the console reads every shard."
  type        = number
  default     = 8

  validation {
    condition     = var.shards >= 1 && var.shards <= 1000 && floor(var.shards) == var.shards
    error_message = "shards must be a whole number 1-1000."
  }
}

variable "log_level" {
  description = "LOGPIPE_LOG_LEVEL of every task."
  type        = string
  default     = "info"

  validation {
    condition     = contains(["debug", "info", "warning", "error"], var.log_level)
    error_message = "log_level must be debug, info, warning or error."
  }
}

variable "vpc_id" {
  description = "An existing VPC to deploy into, with public_subnet_ids and private_subnet_ids: the stack then creates no VPC, subnet, route, NAT gateway, endpoint or flow log. null (the default): the stack builds its own VPC (network.tf)."
  type        = string
  default     = null

  validation {
    condition     = var.vpc_id == null || can(regex("^vpc-[0-9a-f]{8,17}$", var.vpc_id))
    error_message = "vpc_id must be null or a VPC id (vpc-...)."
  }
}

variable "public_subnet_ids" {
  description = "With vpc_id: the load balancer's subnets, in at least two AZs, routed to an internet gateway."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for s in var.public_subnet_ids : can(regex("^subnet-[0-9a-f]{8,17}$", s))]) && (var.vpc_id == null ? length(var.public_subnet_ids) == 0 : length(var.public_subnet_ids) >= 2)
    error_message = "public_subnet_ids: subnet ids (subnet-...), at least two (in two AZs) with vpc_id and none without it."
  }
}

variable "private_subnet_ids" {
  description = "With vpc_id: the tasks' subnets (no public addresses), which must reach SQS, ECR, CloudWatch Logs and Secrets Manager through a NAT gateway or endpoints of the VPC, and DynamoDB."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for s in var.private_subnet_ids : can(regex("^subnet-[0-9a-f]{8,17}$", s))]) && (var.vpc_id == null ? length(var.private_subnet_ids) == 0 : length(var.private_subnet_ids) >= 1)
    error_message = "private_subnet_ids: subnet ids (subnet-...), at least one with vpc_id and none without it."
  }
}

variable "nat_gateways" {
  description = "In the stack's own VPC, how tasks reach AWS APIs: \"none\" (the default; tasks in the public subnets with a public IPv4 address each, inbound closed by their security groups; no NAT fee) or \"per_az\" (tasks in private subnets, one NAT gateway per AZ: about $73 a month more plus $0.045 per GB). Ignored with vpc_id."
  type        = string
  default     = "none"

  validation {
    condition     = contains(["none", "per_az"], var.nat_gateways)
    error_message = "nat_gateways must be \"none\" or \"per_az\"."
  }
}

variable "sqs_endpoint" {
  description = "In the stack's own VPC, an SQS interface endpoint in the tasks' subnets ($14.60 a month for two AZs plus $0.01 per GB): with nat_gateways = \"per_az\" it keeps SQS bytes off the NAT gateways ($0.045 per GB)."
  type        = bool
  default     = false
}

variable "vpc_cidr" {
  description = "CIDR block of the stack's VPC (a /16 to /20; subnets are /24s carved from it). Ignored with vpc_id."
  type        = string
  default     = "10.40.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && tonumber(split("/", var.vpc_cidr)[1]) <= 20
    error_message = "vpc_cidr must be an IPv4 CIDR block of /20 or larger."
  }
}

variable "ingest_allowed_cidrs" {
  description = "Client networks allowed to reach the ingest listener (applications that send logs)."
  type        = list(string)
  default     = ["0.0.0.0/0"]

  validation {
    condition     = alltrue([for c in var.ingest_allowed_cidrs : can(cidrhost(c, 0))])
    error_message = "ingest_allowed_cidrs must be IPv4 CIDR blocks."
  }
}

variable "console_allowed_cidrs" {
  description = "Networks allowed to reach the console listener; empty (the default) keeps the console unreachable from outside the VPC."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.console_allowed_cidrs : can(cidrhost(c, 0)) && c != "0.0.0.0/0"])
    error_message = "console_allowed_cidrs must be IPv4 CIDR blocks, and not 0.0.0.0/0: the console reads every stored log."
  }
}

variable "console_port" {
  description = "Load balancer port of the console listener."
  type        = number
  default     = 8443

  validation {
    condition     = var.console_port >= 1024 && var.console_port <= 65535 && var.console_port != 8080
    error_message = "console_port must be 1024-65535 and not 8080."
  }
}

variable "certificate_arn" {
  description = "ACM certificate for HTTPS on the load balancer (port 443; port 80 redirects to it). Required unless allow_plain_http = true."
  type        = string
  default     = ""

  validation {
    condition     = var.certificate_arn == "" || can(regex("^arn:aws[a-z-]*:acm:[a-z0-9-]+:[0-9]{12}:certificate/.+$", var.certificate_arn))
    error_message = "certificate_arn must be empty or an ACM certificate ARN."
  }

  validation {
    condition     = var.certificate_arn != "" || var.allow_plain_http
    error_message = "HTTPS is the default: set certificate_arn and domain_name, or allow_plain_http = true for a trial without a domain (API keys and logs then cross the internet in clear)."
  }
}

variable "allow_plain_http" {
  description = "Serve ingest and console over plain HTTP on port 80 when no certificate_arn is set. For trials only: bearer keys and log lines travel unencrypted."
  type        = bool
  default     = false
}

variable "domain_name" {
  description = "DNS name covered by certificate_arn that points at the load balancer (a CNAME or alias you create); required with certificate_arn."
  type        = string
  default     = ""

  validation {
    # Cross-variable validation needs Terraform 1.9+ (required_version is 1.10).
    condition     = (var.domain_name == "") == (var.certificate_arn == "") && (var.domain_name == "" || can(regex("^([a-z0-9-]+\\.)+[a-z]{2,}$", var.domain_name)))
    error_message = "domain_name must be set exactly when certificate_arn is, to a DNS name such as logs.example.com."
  }
}

variable "alarm_email" {
  description = "E-mail address subscribed to the alarm topic (confirm the subscription mail); empty subscribes nobody."
  type        = string
  default     = ""

  validation {
    condition     = var.alarm_email == "" || can(regex("^[^@ ]+@[^@ ]+\\.[^@ ]+$", var.alarm_email))
    error_message = "alarm_email must be empty or an e-mail address."
  }
}

variable "max_message_age_seconds" {
  description = "Alarm when the oldest message of the queue is older than this (the processor is behind or stuck); above processor_scale_out_age_seconds, so scaling out gets its chance first."
  type        = number
  default     = 300

  validation {
    condition     = var.max_message_age_seconds >= 60
    error_message = "max_message_age_seconds must be at least 60."
  }
}

variable "ingest_5xx_threshold" {
  description = "Alarm when the ingestors answer more 5xx than this per minute, for 3 of 5 minutes."
  type        = number
  default     = 5

  validation {
    condition     = var.ingest_5xx_threshold >= 0
    error_message = "ingest_5xx_threshold must not be negative."
  }
}

variable "ingest_refused_percent" {
  description = "Alarm when the ingestors refuse more than this percentage of requests whole (429/503 when the pipeline cannot take more), for 3 of 5 minutes."
  type        = number
  default     = 5

  validation {
    condition     = var.ingest_refused_percent > 0 && var.ingest_refused_percent <= 100
    error_message = "ingest_refused_percent must be above 0 and at most 100."
  }
}

variable "ecr_keep_images" {
  description = "Deploys whose images are kept in ECR (three images each: one per architecture and their index; older ones expire): how far back a rollback can go."
  type        = number
  default     = 30

  validation {
    condition     = var.ecr_keep_images >= 5 && var.ecr_keep_images <= 1000
    error_message = "ecr_keep_images must be 5-1000."
  }
}

variable "permissions_boundary_arn" {
  description = "ARN of the IAM policy set as permissions boundary of every role the stack creates. The README's deploy role may create roles only with this boundary, so it cannot mint an administrator; null when you deploy with broader rights."
  type        = string
  default     = null

  validation {
    condition     = var.permissions_boundary_arn == null || can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:policy/.+$", var.permissions_boundary_arn))
    error_message = "permissions_boundary_arn must be null or an IAM policy ARN."
  }
}

variable "deletion_protection" {
  description = "Protect the table and the load balancer from deletion, and the ECR repository from deletion while it holds images; set false (and apply) before `terraform destroy`."
  type        = bool
  default     = true
}

variable "cpu_architecture" {
  description = "CPU architecture of every task: X86_64, or ARM64 (Graviton, about 20 % cheaper per vCPU and GB). The deploy and release workflows build the image for both."
  type        = string
  default     = "X86_64"

  validation {
    condition     = contains(["X86_64", "ARM64"], var.cpu_architecture)
    error_message = "cpu_architecture must be X86_64 or ARM64."
  }
}

variable "processor_spot" {
  description = "Run the processors on Fargate Spot (about two thirds cheaper; a task may be stopped with two minutes' notice, and the processor drains in 25 s: a message it had not finished reappears and is stored by another). Fargate Spot runs X86_64 only, so the processors then run X86_64 whatever cpu_architecture says."
  type        = bool
  default     = false
}

variable "container_insights" {
  description = "Container Insights on the ECS cluster: per-service CPU, memory and task counts in ECS/ContainerInsights, about 90 custom metrics ($26 a month at rest). Off by default: scaling and alarms read logpipe's own metrics and the load balancer's."
  type        = bool
  default     = false
}

variable "point_in_time_recovery" {
  description = "Point-in-time recovery of the table (continuous backups for 35 days): $0.20 per GB-month on top of $0.25 of storage, 80 % more. Off by default: the table holds logs that expire by TTL after event_retention_days and can be sent again; turn it on if the stored logs are your only copy."
  type        = bool
  default     = false
}

variable "billing_mode" {
  description = "The table's billing: PAY_PER_REQUEST (on demand, the default: nothing at rest, $0.625 per million write units) or PROVISIONED (capacity autoscaled between table_write_capacity.min and .max: cheaper under steady load, a few dollars a month at rest)."
  type        = string
  default     = "PAY_PER_REQUEST"

  validation {
    condition     = contains(["PAY_PER_REQUEST", "PROVISIONED"], var.billing_mode)
    error_message = "billing_mode must be PAY_PER_REQUEST or PROVISIONED."
  }
}

variable "table_write_capacity" {
  description = "With billing_mode = PROVISIONED: write capacity units the table's autoscaling keeps between (target 70 % used)."
  type        = object({ min = number, max = number })
  default     = { min = 5, max = 40000 }

  validation {
    condition     = var.table_write_capacity.min >= 1 && var.table_write_capacity.max >= var.table_write_capacity.min
    error_message = "table_write_capacity: min at least 1, max at least min."
  }
}

variable "table_read_capacity" {
  description = "With billing_mode = PROVISIONED: read capacity units the table's autoscaling keeps between (target 70 % used); the console and `logpipe query` read."
  type        = object({ min = number, max = number })
  default     = { min = 5, max = 1000 }

  validation {
    condition     = var.table_read_capacity.min >= 1 && var.table_read_capacity.max >= var.table_read_capacity.min
    error_message = "table_read_capacity: min at least 1, max at least min."
  }
}

variable "table_max_write_units" {
  description = "With billing_mode = PAY_PER_REQUEST: the most write units a second the table may use (its on-demand maximum throughput, a cap on cost); null: no cap of the stack's own, and the 40,000 AWS allows an on-demand table by default are what processor_max_count is checked against."
  type        = number
  default     = null

  validation {
    condition     = var.table_max_write_units == null || try(var.table_max_write_units >= 1, false)
    error_message = "table_max_write_units must be null or at least 1."
  }
}

variable "embedded_endpoint" {
  description = "Only for `make deploy-rehearsal`, which applies this stack to moto's server: leaves out what that endpoint does not implement (Application Auto Scaling of the services and of a provisioned table, whose tags it cannot list, the alarm that drives a scaling policy, and the DLQ's redrive-allow policy, which it never reports back as applied). Never set it for AWS."
  type        = bool
  default     = false
}
