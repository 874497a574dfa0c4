"""What an operator watches: Prometheus metrics, the lifecycle log, structured log lines."""
