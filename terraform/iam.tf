# One execution role (pull the image, write logs, read the API-key secret) and one task
# role per role, each allowed exactly the calls its code makes. The emitters call no AWS
# API, so they have no task role at all. Every role of the stack carries
# var.permissions_boundary_arn: the README's deploy role can create roles only with it.
locals {
  account_id = data.aws_caller_identity.current.account_id
  # SSM parameters are read with ssm:GetParameters, Secrets Manager secrets with
  # secretsmanager:GetSecretValue; the ARN says which one holds the keys.
  api_keys_in_ssm = can(regex("^arn:[^:]+:ssm:", var.api_keys_secret_arn))
}

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }

    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = ["arn:${data.aws_partition.current.partition}:ecs:${var.region}:${local.account_id}:*"]
    }
  }
}

# --- execution role: used by the ECS agent, not by logpipe ---

# The agent assumes the execution role outside any one task, so the source conditions of
# the task roles' trust policy do not apply to it.
data "aws_iam_policy_document" "ecs_agent_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "execution" {
  name                 = "${var.name}-execution"
  assume_role_policy   = data.aws_iam_policy_document.ecs_agent_assume.json
  permissions_boundary = var.permissions_boundary_arn
}

data "aws_iam_policy_document" "execution" {
  statement {
    sid = "EcrLogin"
    # GetAuthorizationToken has no resource-level permissions: AWS only accepts "*".
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }

  statement {
    sid       = "PullImage"
    actions   = ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]
    resources = [aws_ecr_repository.app.arn]
  }

  statement {
    sid       = "WriteLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = [for group in aws_cloudwatch_log_group.service : "${group.arn}:*"]
  }

  statement {
    sid       = "ReadApiKeys"
    actions   = [local.api_keys_in_ssm ? "ssm:GetParameters" : "secretsmanager:GetSecretValue"]
    resources = [var.api_keys_secret_arn]
  }

  statement {
    sid       = "ReadConsoleSecrets"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [var.read_keys_secret_arn, var.cursor_secret_arn]
  }
}

resource "aws_iam_role_policy" "execution" {
  name   = "pull-log-read-api-keys"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution.json
}

# --- ingestor: sends to the queue ---

resource "aws_iam_role" "ingestor" {
  name                 = "${var.name}-ingestor"
  assume_role_policy   = data.aws_iam_policy_document.ecs_tasks_assume.json
  permissions_boundary = var.permissions_boundary_arn
}

data "aws_iam_policy_document" "ingestor" {
  statement {
    sid = "SendEvents"
    # GetQueueUrl resolves LOGPIPE_QUEUE_NAME at start; GetQueueAttributes is /readyz.
    actions   = ["sqs:GetQueueAttributes", "sqs:GetQueueUrl", "sqs:SendMessage"]
    resources = [aws_sqs_queue.events.arn]
  }
}

resource "aws_iam_role_policy" "ingestor" {
  name   = "send-events"
  role   = aws_iam_role.ingestor.id
  policy = data.aws_iam_policy_document.ingestor.json
}

# --- processor: drains the queue into the table ---

resource "aws_iam_role" "processor" {
  name                 = "${var.name}-processor"
  assume_role_policy   = data.aws_iam_policy_document.ecs_tasks_assume.json
  permissions_boundary = var.permissions_boundary_arn
}

data "aws_iam_policy_document" "processor" {
  statement {
    sid = "DrainQueue"
    # GetQueueAttributes feeds the queue gauges (logpipe/monitor.py).
    actions   = ["sqs:ChangeMessageVisibility", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:GetQueueUrl", "sqs:ReceiveMessage"]
    resources = [aws_sqs_queue.events.arn]
  }

  statement {
    sid = "WatchDeadLetters"
    # The queue monitor resolves the DLQ at start, reads its depth, and peeks (receive with
    # a zero visibility timeout, never a delete) at the oldest dead letter's age. An event
    # that can never be stored is sent here on its own (SendMessage), with its reason.
    actions   = ["sqs:GetQueueAttributes", "sqs:GetQueueUrl", "sqs:ReceiveMessage", "sqs:SendMessage"]
    resources = [aws_sqs_queue.dlq.arn]
  }

  statement {
    sid       = "StoreEvents"
    actions   = ["dynamodb:BatchWriteItem", "dynamodb:PutItem"]
    resources = [aws_dynamodb_table.logs.arn]
  }
}

resource "aws_iam_role_policy" "processor" {
  name   = "drain-queue-store-events"
  role   = aws_iam_role.processor.id
  policy = data.aws_iam_policy_document.processor.json
}

# --- console: reads the table ---

resource "aws_iam_role" "console" {
  name                 = "${var.name}-console"
  assume_role_policy   = data.aws_iam_policy_document.ecs_tasks_assume.json
  permissions_boundary = var.permissions_boundary_arn
}

data "aws_iam_policy_document" "console" {
  statement {
    sid       = "ReadEvents"
    actions   = ["dynamodb:BatchGetItem", "dynamodb:GetItem", "dynamodb:Query"]
    resources = [aws_dynamodb_table.logs.arn]
  }
}

resource "aws_iam_role_policy" "console" {
  name   = "read-events"
  role   = aws_iam_role.console.id
  policy = data.aws_iam_policy_document.console.json
}
