# The network: the stack's own VPC over two AZs (the default), or an existing VPC and
# subnets you name (vpc_id, public_subnet_ids, private_subnet_ids), in which the stack
# creates no VPC, NAT gateway, route or endpoint at all.
#
# In its own VPC the tasks reach AWS APIs one of two ways (nat_gateways):
# - "none" (the default): tasks run in the public subnets with a public IPv4 address each
#   ($3.65 a month per task) and reach SQS, ECR, CloudWatch Logs and Secrets Manager through
#   the internet gateway. Their security groups admit nothing but the load balancer, so no
#   connection can be opened to them. No NAT gateway: no $0.045 per GB on every SQS byte,
#   no hourly fee, no single AZ everyone depends on.
# - "per_az": tasks run in private subnets, each AZ with a NAT gateway of its own ($32.85 a
#   month each plus $0.045 per GB, $73 a month with their addresses for two AZs): an AZ
#   failure takes only its own tasks' way out. Add sqs_endpoint = true at volume so the
#   SQS bytes go through an interface endpoint ($0.01 per GB) instead of the NATs.
# DynamoDB and S3 (ECR image layers) go through free gateway endpoints in both modes.
locals {
  create_network = var.vpc_id == null
  nat_per_az     = local.create_network && var.nat_gateways == "per_az"
  azs            = slice(data.aws_availability_zones.available.names, 0, 2)
  # The route tables the gateway endpoints attach to: where the tasks' subnets route.
  task_route_table_ids = local.nat_per_az ? aws_route_table.private[*].id : aws_route_table.public[*].id

  vpc_id                   = local.create_network ? aws_vpc.main[0].id : var.vpc_id
  load_balancer_subnet_ids = local.create_network ? aws_subnet.public[*].id : var.public_subnet_ids
  task_subnet_ids          = local.create_network ? (local.nat_per_az ? aws_subnet.private[*].id : aws_subnet.public[*].id) : var.private_subnet_ids
  # Only in the stack's own VPC without NAT gateways; an existing network provides its own
  # way out (a NAT gateway, endpoints) for its private subnets.
  task_public_ip = local.create_network && !local.nat_per_az
  # The addresses the emitters reach the ingest listener from (alb.tf).
  nat_public_ips = aws_eip.nat[*].public_ip
}

# Before the network modes these were single resources: the same objects, not new ones.
moved {
  from = aws_vpc.main
  to   = aws_vpc.main[0]
}

moved {
  from = aws_default_security_group.main
  to   = aws_default_security_group.main[0]
}

moved {
  from = aws_internet_gateway.main
  to   = aws_internet_gateway.main[0]
}

moved {
  from = aws_route_table.public
  to   = aws_route_table.public[0]
}

moved {
  from = aws_eip.nat
  to   = aws_eip.nat[0]
}

moved {
  from = aws_nat_gateway.main
  to   = aws_nat_gateway.main[0]
}

moved {
  from = aws_route_table.private
  to   = aws_route_table.private[0]
}

moved {
  from = aws_vpc_endpoint.dynamodb
  to   = aws_vpc_endpoint.dynamodb[0]
}

moved {
  from = aws_vpc_endpoint.s3
  to   = aws_vpc_endpoint.s3[0]
}

moved {
  from = aws_flow_log.main
  to   = aws_flow_log.main[0]
}

moved {
  from = aws_cloudwatch_log_group.flow_logs
  to   = aws_cloudwatch_log_group.flow_logs[0]
}

moved {
  from = aws_iam_role.flow_logs
  to   = aws_iam_role.flow_logs[0]
}

moved {
  from = aws_iam_role_policy.flow_logs
  to   = aws_iam_role_policy.flow_logs[0]
}

resource "aws_vpc" "main" {
  count = local.create_network ? 1 : 0

  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true

  tags = { Name = var.name }
}

# The default security group of the VPC allows nothing; every resource has its own group.
resource "aws_default_security_group" "main" {
  count = local.create_network ? 1 : 0

  vpc_id = aws_vpc.main[0].id
}

resource "aws_internet_gateway" "main" {
  count = local.create_network ? 1 : 0

  vpc_id = aws_vpc.main[0].id

  tags = { Name = var.name }
}

resource "aws_subnet" "public" {
  count = local.create_network ? 2 : 0

  vpc_id            = aws_vpc.main[0].id
  cidr_block        = cidrsubnet(var.vpc_cidr, 24 - tonumber(split("/", var.vpc_cidr)[1]), count.index)
  availability_zone = local.azs[count.index]

  tags = { Name = "${var.name}-public-${local.azs[count.index]}" }
}

resource "aws_subnet" "private" {
  count = local.nat_per_az ? 2 : 0

  vpc_id            = aws_vpc.main[0].id
  cidr_block        = cidrsubnet(var.vpc_cidr, 24 - tonumber(split("/", var.vpc_cidr)[1]), count.index + 10)
  availability_zone = local.azs[count.index]

  tags = { Name = "${var.name}-private-${local.azs[count.index]}" }
}

resource "aws_eip" "nat" {
  count = local.nat_per_az ? 2 : 0

  domain = "vpc"

  tags = { Name = "${var.name}-nat-${local.azs[count.index]}" }
}

resource "aws_nat_gateway" "main" {
  count = local.nat_per_az ? 2 : 0

  allocation_id = aws_eip.nat[count.index].id
  subnet_id     = aws_subnet.public[count.index].id

  tags = { Name = "${var.name}-${local.azs[count.index]}" }

  depends_on = [aws_internet_gateway.main]
}

resource "aws_route_table" "public" {
  count = local.create_network ? 1 : 0

  vpc_id = aws_vpc.main[0].id

  route {
    cidr_block = "0.0.0.0/0"
    gateway_id = aws_internet_gateway.main[0].id
  }

  tags = { Name = "${var.name}-public" }
}

resource "aws_route_table_association" "public" {
  count = local.create_network ? 2 : 0

  subnet_id      = aws_subnet.public[count.index].id
  route_table_id = aws_route_table.public[0].id
}

# One private route table per AZ, each through its own AZ's NAT gateway.
resource "aws_route_table" "private" {
  count = local.nat_per_az ? 2 : 0

  vpc_id = aws_vpc.main[0].id

  route {
    cidr_block     = "0.0.0.0/0"
    nat_gateway_id = aws_nat_gateway.main[count.index].id
  }

  tags = { Name = "${var.name}-private-${local.azs[count.index]}" }
}

resource "aws_route_table_association" "private" {
  count = local.nat_per_az ? 2 : 0

  subnet_id      = aws_subnet.private[count.index].id
  route_table_id = aws_route_table.private[count.index].id
}

resource "aws_vpc_endpoint" "dynamodb" {
  count = local.create_network ? 1 : 0

  vpc_id            = aws_vpc.main[0].id
  service_name      = "com.amazonaws.${var.region}.dynamodb"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = local.task_route_table_ids

  tags = { Name = "${var.name}-dynamodb" }
}

resource "aws_vpc_endpoint" "s3" {
  count = local.create_network ? 1 : 0

  vpc_id            = aws_vpc.main[0].id
  service_name      = "com.amazonaws.${var.region}.s3"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = local.task_route_table_ids

  tags = { Name = "${var.name}-s3" }
}

# SQS through an interface endpoint in the tasks' subnets (sqs_endpoint): private DNS makes
# the regional SQS name resolve to it, so the code needs no setting of its own.
resource "aws_vpc_endpoint" "sqs" {
  count = local.create_network && var.sqs_endpoint ? 1 : 0

  vpc_id              = aws_vpc.main[0].id
  service_name        = "com.amazonaws.${var.region}.sqs"
  vpc_endpoint_type   = "Interface"
  subnet_ids          = local.task_subnet_ids
  security_group_ids  = [aws_security_group.sqs_endpoint[0].id]
  private_dns_enabled = true

  tags = { Name = "${var.name}-sqs" }
}

resource "aws_security_group" "sqs_endpoint" {
  count = local.create_network && var.sqs_endpoint ? 1 : 0

  name        = "${var.name}-sqs-endpoint"
  description = "logpipe SQS interface endpoint: HTTPS from the tasks"
  vpc_id      = aws_vpc.main[0].id
}

resource "aws_vpc_security_group_ingress_rule" "sqs_endpoint" {
  for_each = local.create_network && var.sqs_endpoint ? {
    ingestor  = aws_security_group.ingestor.id
    processor = aws_security_group.processor.id
  } : {}

  security_group_id            = aws_security_group.sqs_endpoint[0].id
  description                  = "HTTPS from the ${each.key} tasks"
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
  referenced_security_group_id = each.value
}

# Rejected connections only: enough to debug a security group, cheap at rest. An existing
# VPC's flow logs are its owner's.
resource "aws_flow_log" "main" {
  count = local.create_network ? 1 : 0

  vpc_id               = aws_vpc.main[0].id
  traffic_type         = "REJECT"
  log_destination_type = "cloud-watch-logs"
  log_destination      = aws_cloudwatch_log_group.flow_logs[0].arn
  iam_role_arn         = aws_iam_role.flow_logs[0].arn
}

resource "aws_cloudwatch_log_group" "flow_logs" {
  count = local.create_network ? 1 : 0

  name              = "/${var.name}/vpc-flow-logs"
  retention_in_days = var.log_retention_days
}

data "aws_iam_policy_document" "flow_logs_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["vpc-flow-logs.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

resource "aws_iam_role" "flow_logs" {
  count = local.create_network ? 1 : 0

  name                 = "${var.name}-vpc-flow-logs"
  assume_role_policy   = data.aws_iam_policy_document.flow_logs_assume.json
  permissions_boundary = var.permissions_boundary_arn
}

data "aws_iam_policy_document" "flow_logs" {
  count = local.create_network ? 1 : 0

  statement {
    sid       = "WriteFlowLogs"
    actions   = ["logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.flow_logs[0].arn}:*"]
  }
}

resource "aws_iam_role_policy" "flow_logs" {
  count = local.create_network ? 1 : 0

  name   = "write-flow-logs"
  role   = aws_iam_role.flow_logs[0].id
  policy = data.aws_iam_policy_document.flow_logs[0].json
}
