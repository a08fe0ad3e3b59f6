"""The model-serving service."""

from service import metrics_files

# Before any metric exists: prometheus_client's multiprocess files, safe on a full disk.
metrics_files.install()
