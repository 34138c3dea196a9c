"""Kubernetes for `oracle submit --target k8s`: the manifests (typed, from the client's models), their offline
validation against the API's schema, applying them, and the Helm chart generated from the same model."""
