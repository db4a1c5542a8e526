"""Text-to-image backends: generate images from prompt embeddings and differentiate through them."""

from galot_core.t2i.backend import ESTIMATORS, DiffusersT2I, Estimator, Objective

__all__ = ["ESTIMATORS", "DiffusersT2I", "Estimator", "Objective"]
