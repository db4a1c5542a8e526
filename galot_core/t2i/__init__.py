"""Text-to-image backends: generate images from prompt embeddings and differentiate through them."""

from galot_core.t2i.backend import ESTIMATORS, PIPELINES, DiffusersT2I, Estimator, Objective
from galot_core.t2i.conditioning import Conditioning

__all__ = ["ESTIMATORS", "PIPELINES", "Conditioning", "DiffusersT2I", "Estimator", "Objective"]
