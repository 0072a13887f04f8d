# Who may read the stored logs. The console's API answers only a read key (ingest keys never
# grant reading); optionally the load balancer also signs users in with OpenID Connect
# (Cognito or any OIDC provider) before a request reaches the console at all.

variable "read_keys_secret_arn" {
  description = "ARN of a Secrets Manager secret whose value is the comma-separated console read keys; injected as LOGPIPE_READ_KEYS through ECS secrets. Ingest keys never grant reading."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:.+$", var.read_keys_secret_arn))
    error_message = "read_keys_secret_arn must be the ARN of a Secrets Manager secret."
  }
}

variable "cursor_secret_arn" {
  description = "ARN of a Secrets Manager secret (at least 16 characters) every console task signs its cursors with (LOGPIPE_CURSOR_SECRET), so a cursor one task made is honoured by the others."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:.+$", var.cursor_secret_arn))
    error_message = "cursor_secret_arn must be the ARN of a Secrets Manager secret."
  }
}

variable "console_oidc" {
  description = "Optional OpenID Connect sign-in the load balancer puts in front of the console (authenticate-oidc): the provider's endpoints and client id. Needs certificate_arn (HTTPS). null: no sign-in, the read keys alone guard the API."
  type = object({
    issuer                 = string
    authorization_endpoint = string
    token_endpoint         = string
    user_info_endpoint     = string
    client_id              = string
    scope                  = optional(string, "openid")
    session_timeout        = optional(number, 28800)
  })
  default = null

  validation {
    condition = var.console_oidc == null ? true : alltrue([
      for url in [
        var.console_oidc.issuer,
        var.console_oidc.authorization_endpoint,
        var.console_oidc.token_endpoint,
        var.console_oidc.user_info_endpoint,
      ] : startswith(url, "https://")
    ])
    error_message = "console_oidc: issuer and endpoints must be https:// URLs."
  }
}

variable "console_oidc_client_secret" {
  description = "The OIDC client's secret, with console_oidc (the load balancer's rule holds it)."
  type        = string
  default     = ""
  sensitive   = true
}

resource "aws_lb_listener_rule" "console_oidc" {
  count = var.console_oidc == null ? 0 : 1

  listener_arn = aws_lb_listener.console.arn
  priority     = 1

  action {
    type  = "authenticate-oidc"
    order = 1

    authenticate_oidc {
      issuer                     = var.console_oidc.issuer
      authorization_endpoint     = var.console_oidc.authorization_endpoint
      token_endpoint             = var.console_oidc.token_endpoint
      user_info_endpoint         = var.console_oidc.user_info_endpoint
      client_id                  = var.console_oidc.client_id
      client_secret              = var.console_oidc_client_secret
      scope                      = var.console_oidc.scope
      session_timeout            = var.console_oidc.session_timeout
      on_unauthenticated_request = "authenticate"
    }
  }

  action {
    type             = "forward"
    order            = 2
    target_group_arn = aws_lb_target_group.console.arn
  }

  condition {
    path_pattern {
      values = ["/*"]
    }
  }

  lifecycle {
    precondition {
      condition     = local.https && var.console_oidc_client_secret != ""
      error_message = "console_oidc needs certificate_arn (the load balancer signs in over HTTPS only) and console_oidc_client_secret."
    }
  }
}
