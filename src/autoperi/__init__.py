"""AutoPeri: generative modeling of crystalline materials."""

from autoperi.data.crystal import CrystalBatch
from autoperi.data.io import ReadResult, read_structures, write_structures

__version__ = "0.1.0"

__all__ = ["CrystalBatch", "ReadResult", "read_structures", "write_structures", "__version__"]
