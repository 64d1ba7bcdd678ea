"""jaxsweep: hierarchical coarse-to-fine learning-rate sweeps for Flax models.

Every stage trains all of its learning rates at once in one vmapped, compiled program.
"""

import importlib as _importlib
from importlib import metadata as _metadata
from typing import TYPE_CHECKING

from . import callbacks as callbacks
from ._result import Evaluation as Evaluation
from ._result import Stage as Stage
from ._result import SweepResult as SweepResult
from ._result import load as load
from ._warnings import SearchRangeWarning as SearchRangeWarning
from .callbacks import Callback as Callback
from .plots import plot as plot
from .report import report as report

if TYPE_CHECKING:
    from ._checkpoint import CheckpointInUseError as CheckpointInUseError
    from ._checkpoint import CheckpointWarning as CheckpointWarning
    from ._checkpoint import ConfigurationMismatchError as ConfigurationMismatchError
    from ._cores import use_cpu_cores as use_cpu_cores
    from ._hosts import ProcessLostError as ProcessLostError
    from ._hosts import ProcessMismatchError as ProcessMismatchError
    from ._keep import load_variables as load_variables
    from ._keep import save_variables as save_variables
    from ._run import run as run
    from ._sharding import is_writer as is_writer
    from ._sources import columns as columns
    from ._training import Training as Training

# Names whose modules import JAX, Flax and Orbax load on first use: reading a saved result
# (``jaxsweep.load``, ``jaxsweep report DIR``, ``jaxsweep show DIR``) then costs no JAX import.
_FROM_JAX_MODULES = {
    "CheckpointInUseError": "._checkpoint",
    "CheckpointWarning": "._checkpoint",
    "ConfigurationMismatchError": "._checkpoint",
    "ProcessLostError": "._hosts",
    "ProcessMismatchError": "._hosts",
    "run": "._run",
    "is_writer": "._sharding",
    "columns": "._sources",
    "use_cpu_cores": "._cores",
    "save_variables": "._keep",
    "load_variables": "._keep",
    "Training": "._training",
}


def __getattr__(name: str):
    if name not in _FROM_JAX_MODULES:
        raise AttributeError(f"module 'jaxsweep' has no attribute {name!r}")
    value = getattr(_importlib.import_module(_FROM_JAX_MODULES[name], __name__), name)
    globals()[name] = value  # once loaded, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_FROM_JAX_MODULES})


try:
    __version__ = _metadata.version("jaxsweep")
except _metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "Callback",
    "CheckpointInUseError",
    "CheckpointWarning",
    "ConfigurationMismatchError",
    "Evaluation",
    "ProcessLostError",
    "ProcessMismatchError",
    "SearchRangeWarning",
    "Stage",
    "SweepResult",
    "Training",
    "callbacks",
    "columns",
    "is_writer",
    "load",
    "load_variables",
    "plot",
    "report",
    "run",
    "save_variables",
    "use_cpu_cores",
]
