# The ingestor is public (applications anywhere send logs) behind an application load
# balancer; the console listens on its own port, open only to console_allowed_cidrs.
# HTTPS with certificate_arn; without one, variables.tf insists on allow_plain_http = true
# (a trial without a domain), so plain HTTP is never an accident.
locals {
  https       = var.certificate_arn != ""
  ingest_url  = local.https ? "https://${var.domain_name}" : "http://${aws_lb.main.dns_name}"
  console_url = local.https ? "https://${var.domain_name}:${var.console_port}" : "http://${aws_lb.main.dns_name}:${var.console_port}"
  # Ports every task listens on (DESIGN.md defaults).
  http_port    = 8080
  metrics_port = 9100
  # The public port of the ingestor serves these and nothing else (404 otherwise);
  # /metrics and /readyz live on LOGPIPE_METRICS_PORT, which no listener reaches.
  ingest_paths       = ["/ingest", "/v1/logs", "/healthz"]
  alb_idle_timeout_s = 60
}

resource "aws_security_group" "alb" {
  name        = "${var.name}-alb"
  description = "logpipe load balancer: ingest and console listeners"
  vpc_id      = local.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "alb_ingest" {
  for_each = toset(var.ingest_allowed_cidrs)

  security_group_id = aws_security_group.alb.id
  description       = "Ingest clients"
  ip_protocol       = "tcp"
  from_port         = local.https ? 443 : 80
  to_port           = local.https ? 443 : 80
  cidr_ipv4         = each.value
}

# With HTTPS, port 80 only redirects to 443.
resource "aws_vpc_security_group_ingress_rule" "alb_redirect" {
  for_each = local.https ? toset(var.ingest_allowed_cidrs) : toset([])

  security_group_id = aws_security_group.alb.id
  description       = "HTTP to HTTPS redirect"
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
  cidr_ipv4         = each.value
}

# With NAT gateways the emitters reach the ingest URL from their addresses, whatever
# ingest_allowed_cidrs says. Without (nat_gateways = "none"), each emitter task has an
# address of its own: the demo emitters then need ingest_allowed_cidrs to admit them (the
# default, 0.0.0.0/0, does).
resource "aws_vpc_security_group_ingress_rule" "alb_ingest_from_nat" {
  count = local.nat_per_az ? 2 : 0

  security_group_id = aws_security_group.alb.id
  description       = "Emitters through the NAT gateway of ${local.azs[count.index]}"
  ip_protocol       = "tcp"
  from_port         = local.https ? 443 : 80
  to_port           = local.https ? 443 : 80
  cidr_ipv4         = "${local.nat_public_ips[count.index]}/32"
}

resource "aws_vpc_security_group_ingress_rule" "alb_console" {
  for_each = toset(var.console_allowed_cidrs)

  security_group_id = aws_security_group.alb.id
  description       = "Console users"
  ip_protocol       = "tcp"
  from_port         = var.console_port
  to_port           = var.console_port
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "alb_to_ingestor" {
  security_group_id            = aws_security_group.alb.id
  description                  = "Forward to the ingestor tasks"
  ip_protocol                  = "tcp"
  from_port                    = local.http_port
  to_port                      = local.http_port
  referenced_security_group_id = aws_security_group.ingestor.id
}

resource "aws_vpc_security_group_egress_rule" "alb_to_console" {
  security_group_id            = aws_security_group.alb.id
  description                  = "Forward to the console tasks"
  ip_protocol                  = "tcp"
  from_port                    = local.http_port
  to_port                      = local.http_port
  referenced_security_group_id = aws_security_group.console.id
}

resource "aws_lb" "main" {
  name                       = var.name
  load_balancer_type         = "application"
  internal                   = false
  security_groups            = [aws_security_group.alb.id]
  subnets                    = local.load_balancer_subnet_ids
  drop_invalid_header_fields = true
  enable_deletion_protection = var.deletion_protection
  # Below the ingestor's keep-alive idle timeout (75 s): the server, not the load balancer,
  # must be the last to close an idle connection, or a reused one answers 502.
  idle_timeout = local.alb_idle_timeout_s
}

resource "aws_lb_target_group" "ingestor" {
  name                 = "${var.name}-ingestor"
  port                 = local.http_port
  protocol             = "HTTP"
  target_type          = "ip"
  vpc_id               = local.vpc_id
  deregistration_delay = 20 # shorter than the task's drain: ECS deregisters, then stops

  health_check {
    path                = "/healthz"
    matcher             = "200"
    interval            = 15
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }
}

resource "aws_lb_target_group" "console" {
  name                 = "${var.name}-console"
  port                 = local.http_port
  protocol             = "HTTP"
  target_type          = "ip"
  vpc_id               = local.vpc_id
  deregistration_delay = 10

  health_check {
    path                = "/healthz"
    matcher             = "200"
    interval            = 30
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }
}

resource "aws_lb_listener" "ingest" {
  load_balancer_arn = aws_lb.main.arn
  port              = local.https ? 443 : 80
  protocol          = local.https ? "HTTPS" : "HTTP"
  ssl_policy        = local.https ? "ELBSecurityPolicy-TLS13-1-2-2021-06" : null
  certificate_arn   = local.https ? var.certificate_arn : null

  # Only the paths below reach a task; anything else ends here.
  default_action {
    type = "fixed-response"

    fixed_response {
      content_type = "application/json"
      message_body = "{\"error\": \"not found\"}"
      status_code  = "404"
    }
  }
}

resource "aws_lb_listener_rule" "ingest" {
  listener_arn = aws_lb_listener.ingest.arn
  priority     = 10

  condition {
    path_pattern {
      values = local.ingest_paths
    }
  }

  action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.ingestor.arn
  }
}

resource "aws_lb_listener" "redirect" {
  count = local.https ? 1 : 0

  load_balancer_arn = aws_lb.main.arn
  port              = 80
  protocol          = "HTTP"

  default_action {
    type = "redirect"

    redirect {
      port        = "443"
      protocol    = "HTTPS"
      status_code = "HTTP_301"
    }
  }
}

resource "aws_lb_listener" "console" {
  load_balancer_arn = aws_lb.main.arn
  port              = var.console_port
  protocol          = local.https ? "HTTPS" : "HTTP"
  ssl_policy        = local.https ? "ELBSecurityPolicy-TLS13-1-2-2021-06" : null
  certificate_arn   = local.https ? var.certificate_arn : null

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.console.arn
  }
}

# --- task security groups: nothing reaches a task except its load balancer ---

resource "aws_security_group" "ingestor" {
  name        = "${var.name}-ingestor"
  description = "logpipe ingestor tasks"
  vpc_id      = local.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "ingestor_from_alb" {
  security_group_id            = aws_security_group.ingestor.id
  description                  = "HTTP from the load balancer"
  ip_protocol                  = "tcp"
  from_port                    = local.http_port
  to_port                      = local.http_port
  referenced_security_group_id = aws_security_group.alb.id
}

resource "aws_security_group" "console" {
  name        = "${var.name}-console"
  description = "logpipe console tasks"
  vpc_id      = local.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "console_from_alb" {
  security_group_id            = aws_security_group.console.id
  description                  = "HTTP from the load balancer"
  ip_protocol                  = "tcp"
  from_port                    = local.http_port
  to_port                      = local.http_port
  referenced_security_group_id = aws_security_group.alb.id
}

resource "aws_security_group" "processor" {
  name        = "${var.name}-processor"
  description = "logpipe processor tasks (no inbound)"
  vpc_id      = local.vpc_id
}

resource "aws_security_group" "emitter" {
  name        = "${var.name}-emitter"
  description = "logpipe emitter tasks (no inbound)"
  vpc_id      = local.vpc_id
}

# Every task calls AWS APIs over HTTPS (directly, through a NAT gateway or an endpoint) and
# nothing else; the emitters also call the ingest URL.
resource "aws_vpc_security_group_egress_rule" "aws_apis" {
  for_each = {
    ingestor  = aws_security_group.ingestor.id
    processor = aws_security_group.processor.id
    console   = aws_security_group.console.id
    emitter   = aws_security_group.emitter.id
  }

  security_group_id = each.value
  description       = "AWS APIs over HTTPS"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_egress_rule" "emitter_ingest_http" {
  count = local.https ? 0 : 1

  security_group_id = aws_security_group.emitter.id
  description       = "The ingest URL over plain HTTP"
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
  cidr_ipv4         = "0.0.0.0/0"
}

moved {
  from = aws_vpc_security_group_ingress_rule.alb_ingest_from_nat
  to   = aws_vpc_security_group_ingress_rule.alb_ingest_from_nat[0]
}
