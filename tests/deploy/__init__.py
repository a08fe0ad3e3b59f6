"""Container and deployment checks: Dockerfile, Kubernetes, KServe and compose files."""
