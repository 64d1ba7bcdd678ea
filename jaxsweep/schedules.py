"""Schedule shapes for ``jaxsweep.run(..., schedule=...)``: the swept value is their peak.

The rate trained at step ``t`` is the swept value times the shape at ``t``; each shape's length
follows the run's total number of training steps, so the same shape fits any budget::

  jaxsweep.run(model_fn, data, steps=2000, schedule=jaxsweep.schedules.warmup_cosine(0.05))
  jaxsweep.run(model_fn, data, schedule="warmup_cosine")   # 10% warmup, cosine decay to 0
"""

from ._schedules import NAMED as NAMED
from ._schedules import Shape as Shape
from ._schedules import constant as constant
from ._schedules import cosine as cosine
from ._schedules import linear as linear
from ._schedules import warmup_cosine as warmup_cosine
from ._schedules import warmup_linear as warmup_linear

__all__ = ["NAMED", "Shape", "constant", "cosine", "linear", "warmup_cosine", "warmup_linear"]
