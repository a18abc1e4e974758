"""Label and annotation keys Peakwise sets on what it manages."""

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "peakwise"
FIELD_MANAGER = "peakwise"
INFERENCE_DEPLOYMENT = "peakwise.dev/inference-deployment"
POOL = "peakwise.dev/pool"
GPU_RESOURCE = "nvidia.com/gpu"
