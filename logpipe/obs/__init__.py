"""Observability: Prometheus metrics and CloudWatch EMF."""
