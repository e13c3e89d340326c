"""modeldeploy: serve open models on Kubernetes with Text Generation Inference."""

GROUP = "modeldeploy.dev"
VERSION = "v1alpha1"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
FIELD_MANAGER = "modeldeploy"

__version__ = "0.1.0"
