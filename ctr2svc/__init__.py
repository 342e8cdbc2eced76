"""ctr2svc: container images as native, package-managed services."""

__version__ = "0.1.0"
