"""jaxsweep: hierarchical coarse-to-fine learning-rate sweeps for Flax models.

Every stage trains all of its learning rates at once in one vmapped, compiled program.
"""

from importlib import metadata as _metadata

from ._checkpoint import CheckpointWarning as CheckpointWarning
from ._checkpoint import ConfigurationMismatchError as ConfigurationMismatchError
from ._hosts import ProcessLostError as ProcessLostError
from ._hosts import ProcessMismatchError as ProcessMismatchError
from ._result import Evaluation as Evaluation
from ._result import Stage as Stage
from ._result import SweepResult as SweepResult
from ._result import load as load
from ._run import run as run
from ._sharding import is_writer as is_writer
from ._sources import columns as columns
from ._warnings import SearchRangeWarning as SearchRangeWarning
from .plots import plot as plot
from .report import report as report

try:
    __version__ = _metadata.version("jaxsweep")
except _metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "CheckpointWarning",
    "ConfigurationMismatchError",
    "Evaluation",
    "ProcessLostError",
    "ProcessMismatchError",
    "SearchRangeWarning",
    "Stage",
    "SweepResult",
    "columns",
    "is_writer",
    "load",
    "plot",
    "report",
    "run",
]
