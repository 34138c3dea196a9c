"""The cluster gate and infrastructure definitions. Filled by the cluster submission issue (#6)."""
