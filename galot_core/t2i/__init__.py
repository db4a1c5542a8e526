"""Text-to-image backends: generate images from prompt embeddings and differentiate through them.

Importing the package imports every family module, so each family's class is registered in
:data:`~galot_core.t2i.backend.FAMILIES` before :meth:`DiffusersT2I.from_pretrained` looks one up.
"""

from galot_core.t2i import flux, flux2, sd3, sdxl, zimage  # noqa: F401  (each registers its family)
from galot_core.t2i.backend import FAMILIES, DiffusersT2I
from galot_core.t2i.conditioning import Conditioning
from galot_core.t2i.gradients import ESTIMATORS, Estimator, Objective
from galot_core.t2i.loading import PIPELINES

__all__ = ["ESTIMATORS", "FAMILIES", "PIPELINES", "Conditioning", "DiffusersT2I", "Estimator", "Objective"]
