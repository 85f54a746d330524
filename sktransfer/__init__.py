"""sktransfer: transfer learning as a first-class citizen of scikit-learn.

Load a pretrained PyTorch network, see its blocks, use it as a frozen feature
extractor or fine-tune it, all inside scikit-learn's Pipelines and model
selection tools.
"""

from ._blocks import BlockNet, list_blocks, split_model
from ._extract import FeatureExtractorTransformer
from ._finetune import FineTunedClassifier, FineTunedRegressor
from ._prefix_cache import clear_cache
from ._pretrain import TabularPretrainer
from ._weights import WeightsUnavailableError

__version__ = "0.1.0.dev0"

__all__ = [
    "BlockNet",
    "FeatureExtractorTransformer",
    "FineTunedClassifier",
    "FineTunedRegressor",
    "WeightsUnavailableError",
    "clear_cache",
    "list_blocks",
    "split_model",
    "TabularPretrainer",
    "__version__",
]
