"""The benchmark suite: metrics are pure functions of structures returning per-structure
arrays; aggregation and reports are separate. Reads structures, never model internals."""
