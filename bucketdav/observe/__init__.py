"""What an operator watches: Prometheus metrics and structured logs."""
