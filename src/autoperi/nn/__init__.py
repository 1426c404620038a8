"""Reusable periodic message passing (usable outside AutoPeri): bases, embeddings, layers
and the periodic encoder. Knows nothing of flows or training."""
