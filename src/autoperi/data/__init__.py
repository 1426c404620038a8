"""Crystals in and out: files, CrystalBatch, datasets, elemental features."""
