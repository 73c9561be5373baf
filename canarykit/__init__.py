"""canarykit: Istio canary releases as auditable, scheduled notebooks."""

__version__ = "0.1.0"
