"""The data layer: data sets as uint8 tensors (or streamed files), the label split, step sampling, batches.

Importing it registers every data set in `DATASETS`.
"""

from ssl_cli.data import csvlist, datasets, folders  # noqa: F401  (registers the data sets)
from ssl_cli.data.base import DATASETS, DatasetOptions, ImageData, load_dataset
from ssl_cli.data.batches import Batch, BatchBuilder, DataInfo, TrainingData

__all__ = ["DATASETS", "DatasetOptions", "ImageData", "load_dataset", "Batch", "BatchBuilder", "DataInfo",
           "TrainingData"]
