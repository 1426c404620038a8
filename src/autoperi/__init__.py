"""AutoPeri: generative modeling of crystalline materials.

Public API: read_structures, write_structures, CrystalBatch, load_model, sample,
predict_structures, train, evaluate, __version__.
"""

__version__ = "0.1.0"  # before the imports: submodules read it

from autoperi.checkpoint import load_model  # noqa: E402
from autoperi.data.crystal import CrystalBatch  # noqa: E402
from autoperi.data.io import ReadResult, read_structures, write_structures  # noqa: E402
from autoperi.eval.suite import evaluate  # noqa: E402
from autoperi.generate import predict_structures, sample  # noqa: E402
from autoperi.train import train  # noqa: E402

__all__ = ["CrystalBatch", "ReadResult", "evaluate", "load_model", "predict_structures",
           "read_structures", "sample", "train", "write_structures", "__version__"]
