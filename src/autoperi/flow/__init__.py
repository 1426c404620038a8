"""Flow matching on (lattice, fractional coordinates, atom types)."""
