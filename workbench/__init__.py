"""workbench: curate a fine-tuning dataset, train a LoRA adapter, evaluate, close the loop."""

from .exceptions import WorkbenchError
from .schema import Example, StepResult
from .store import RowFilter, Store

__all__ = ["Example", "RowFilter", "StepResult", "Store", "WorkbenchError"]
__version__ = "0.1.0"
