#!/usr/bin/env bash
# `terraform validate` of a Terraform directory (default: terraform/) without the network:
# the AWS provider comes from a filesystem mirror (LOGPIPE_TF_PLUGIN_MIRROR, default
# /opt/tf-plugins; CI fills one with `terraform providers mirror`), checked against the
# committed .terraform.lock.hcl, which this never rewrites. No backend, no state.
# Exit 0 valid, 1 invalid, 2 when terraform or the mirror is missing (the reason on stderr).
set -euo pipefail
dir="${1:-terraform}"
mirror="${LOGPIPE_TF_PLUGIN_MIRROR:-/opt/tf-plugins}"
terraform="${TERRAFORM:-terraform}"

if ! command -v "${terraform}" >/dev/null 2>&1; then
  echo "skip: no terraform on PATH (1.10 or newer)" >&2
  exit 2
fi
if [ ! -d "${mirror}/registry.terraform.io/hashicorp/aws" ]; then
  echo "skip: no hashicorp/aws provider in the mirror ${mirror}" >&2
  exit 2
fi

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
printf 'provider_installation {\n  filesystem_mirror {\n    path = "%s"\n  }\n}\n' "${mirror}" \
  > "${work}/terraformrc"
export TF_CLI_CONFIG_FILE="${work}/terraformrc" TF_DATA_DIR="${work}/data" TF_IN_AUTOMATION=1

"${terraform}" -chdir="${dir}" init -backend=false -input=false -no-color -lockfile=readonly >"${work}/init.log" 2>&1 \
  || { cat "${work}/init.log" >&2; exit 1; }
"${terraform}" -chdir="${dir}" validate -no-color || exit 1
