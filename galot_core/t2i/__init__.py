"""Text-to-image backends: generate images from prompt embeddings and differentiate through them."""

from galot_core.t2i.backend import DiffusersT2I
from galot_core.t2i.conditioning import Conditioning
from galot_core.t2i.gradients import ESTIMATORS, Estimator, Objective
from galot_core.t2i.loading import PIPELINES

__all__ = ["ESTIMATORS", "PIPELINES", "Conditioning", "DiffusersT2I", "Estimator", "Objective"]
