"""d2align: detectron2 projects on the misalignment of classification and localization.

The common library of the five projects: compiled ops (`d2align.ops`), data (`d2align.data`),
evaluation (`d2align.evaluation`), training (`d2align.engine`) and shared modeling pieces.
"""

__version__ = "0.1.0"
