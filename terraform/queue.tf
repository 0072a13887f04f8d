locals {
  queue_name = "${var.name}-events"
  dlq_name   = "${var.name}-events-dlq"

  # Receives before a message is dead-lettered (the code's LOGPIPE_MAX_RECEIVE_COUNT).
  max_receive_count = 5
  # The processor holds a message for one long poll (20 s) plus its writes, which retry
  # with backoff for a few seconds, and it extends the visibility of messages still being
  # written every half timeout. Five minutes leaves a wide margin: a message only
  # reappears early if its processor died.
  visibility_timeout_s = 300
  # 14 days, SQS's maximum, for both: a backlog (processors down, the table throttled) has
  # two weeks before SQS deletes events it had accepted, and the queue_age_near_retention
  # alarm fires halfway. A dead letter's age counts from when it entered the main queue,
  # so the DLQ cannot give it longer; the DLQ alarm fires on the first one.
  queue_retention_s = 1209600
}

resource "aws_sqs_queue" "dlq" {
  name                      = local.dlq_name
  message_retention_seconds = local.queue_retention_s # time to inspect and redrive
  sqs_managed_sse_enabled   = true
}

resource "aws_sqs_queue" "events" {
  name                       = local.queue_name
  visibility_timeout_seconds = local.visibility_timeout_s
  message_retention_seconds  = local.queue_retention_s
  receive_wait_time_seconds  = 20
  max_message_size           = 262144 # LOGPIPE_SQS_MAX_BYTES default
  sqs_managed_sse_enabled    = true

  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dlq.arn
    maxReceiveCount     = local.max_receive_count
  })
}

# Only the events queue may dead-letter into the DLQ (and `logpipe dlq redrive` moves
# messages back to it).
resource "aws_sqs_queue_redrive_allow_policy" "dlq" {
  # Left out on the embedded endpoint: the provider waits for moto to report it, forever.
  count = var.embedded_endpoint ? 0 : 1

  queue_url = aws_sqs_queue.dlq.id

  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.events.arn]
  })
}

data "aws_iam_policy_document" "queue_tls_only" {
  for_each = {
    events = aws_sqs_queue.events.arn
    dlq    = aws_sqs_queue.dlq.arn
  }

  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["sqs:*"]
    resources = [each.value]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_sqs_queue_policy" "events" {
  queue_url = aws_sqs_queue.events.id
  policy    = data.aws_iam_policy_document.queue_tls_only["events"].json
}

resource "aws_sqs_queue_policy" "dlq" {
  queue_url = aws_sqs_queue.dlq.id
  policy    = data.aws_iam_policy_document.queue_tls_only["dlq"].json
}
