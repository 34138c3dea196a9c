"""Oracle: the Oracle850B-MoE model and its workflows."""
