"""sktransfer: transfer learning as a first-class citizen of scikit-learn.

Load a pretrained PyTorch network, see its blocks, use it as a frozen feature
extractor or fine-tune it, all inside scikit-learn's Pipelines and model
selection tools.
"""

from ._blocknet import BlockNet
from ._blocks import split_model
from ._extract import FeatureExtractorTransformer
from ._finetune import FineTunedClassifier, FineTunedRegressor
from ._inspect import list_blocks
from ._prefix_cache import clear_cache
from ._pretrain import TabularPretrainer
from ._version import __version__
from ._weights import WeightsUnavailableError

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
