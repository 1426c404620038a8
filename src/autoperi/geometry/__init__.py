"""Pure, batched geometry on periodic crystals (torch). Knows nothing of models or files."""
