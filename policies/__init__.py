"""Policy modules: what is allowed. Filled by the guards issue (#3)."""
