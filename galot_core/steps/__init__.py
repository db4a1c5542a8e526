"""The five steps of one GALOT cycle (Algorithm 1, lines 5–10), as plain functions of a
:class:`galot_core.context.Context` and a cycle; :func:`galot_core.cycle.run_cycle` runs them in order.

1. :func:`select_real_batch` (+ :func:`receive_labels` with a human oracle) — line 5
   :func:`adapt_generator` (``gal.adapt``, beyond the paper) — the generator learns the labels
2. :func:`optimize_group` per group of classes, then :func:`merge_embeddings` — lines 6–8
3. :func:`generate_shard` per shard, then :func:`merge_generated` — line 9
4. :func:`train_classifier` — line 10
5. :func:`evaluate_cycle` (after :func:`export_cycle`) — the cycle's metrics

Every step skips work whose outputs are already in the run folder, so rerunning a step,
a cycle or a whole run after a crash continues where it stopped.
"""

from galot_core.steps.adapt import adapt_generator
from galot_core.steps.embeddings import merge_embeddings, optimize_group, textopt_groups
from galot_core.steps.evaluate import evaluate_cycle, export_cycle
from galot_core.steps.generate import generate_shard, generation_shards, merge_generated
from galot_core.steps.select import receive_labels, select_real_batch
from galot_core.steps.train import train_classifier

__all__ = ["select_real_batch", "receive_labels", "adapt_generator",
           "optimize_group", "merge_embeddings", "textopt_groups",
           "generate_shard", "generation_shards", "merge_generated", "train_classifier", "export_cycle",
           "evaluate_cycle"]
