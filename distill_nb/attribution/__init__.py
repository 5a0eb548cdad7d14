"""Why teacher and student decide as they do: token attributions, their agreement, a data-set sweep.

One verb, ``attribute(model, tokenizer, texts, method, target, ...)``, gives ``Attribution`` results
through captum; ``compare(teacher, student, texts, ...)`` aligns two models' attributions (token level
with a shared tokenizer, word level otherwise) and measures agreement and faithfulness; ``sweep(...)``
runs ``compare`` over a data set in batches and ranks examples by divergence.

Files, in data-flow order: ``methods`` (attribute) -> ``metrics`` (alignment, agreement, faithfulness)
-> ``comparison`` (compare, sweep) -> ``render`` (matplotlib figures and HTML, imported lazily).
"""

from __future__ import annotations

from .comparison import Comparison, SweepResult, compare, divergence_order, sweep
from .methods import METHODS, Attribution, attribute
from .metrics import Faithfulness, agreement, align, common_segments, faithfulness

__all__ = ["METHODS", "Attribution", "Comparison", "Faithfulness", "SweepResult", "agreement", "align",
           "attribute", "common_segments", "compare", "divergence_order", "faithfulness", "sweep"]
