"""The Kubernetes operator: kopf handlers, the Kubernetes adapter and node-pool providers."""
