"""HTTP layer: routes translate HTTP to service calls and nothing else."""
