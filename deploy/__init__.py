"""Deployment tooling (dependency locks) beside the manifests in this folder: compose files,
Kubernetes and KServe manifests, vendored schemas. Not part of the installed package."""
