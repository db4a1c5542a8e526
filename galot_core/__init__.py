"""galot: generative active learning via optimisable zero-shot text-to-image generation.

The algorithm as plain, typed Python/PyTorch. Nothing in this package imports Prefect,
DVC or MLflow; orchestration and tracking live in ``tasks/`` and ``flows/``.
"""

__version__ = "0.1.0"
