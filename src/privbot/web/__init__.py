"""The staff console and the operations endpoints (/healthz, /metrics)."""
