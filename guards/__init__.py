"""Gate machinery: when and how policies run. Filled by the guards issue (#3)."""
