"""Search: Ray Tune trials proposed by Optuna's TPE and stopped early by ASHA.

``runner.run_search`` is the whole search as a list of steps and ``trainable`` one trial; ``setup``
holds the steps around the trials (data, split, cache, tracking, budget, closing the parent run) and
``summary`` what is logged on the parent run at the end; ``rounds`` runs the Tune experiments,
``searcher`` (TPE, the budget's stopper) and ``callbacks`` (trials mirrored into MLflow, the
budget's clock) are what Tune asks before and after each trial, ``space`` turns the YAML's space
into Optuna's define-by-run function, ``cluster`` connects to Ray and checks its nodes,
``cache_plan`` sizes and builds the decode cache, ``budget`` keeps the wall clock and
``trials_table`` ranks what finished. With a time budget, ``probe`` times each backbone on this
machine and ``plan`` sizes the search from it; ``default_recipe`` is the first trial, and
``further`` trains the best on with time to spare. The only subpackage that imports Ray.
"""

from ffdi_tune.search.runner import SearchOutcome, run_search
from ffdi_tune.search.trials_table import format_table

__all__ = [
    "SearchOutcome",
    "run_search",
    "format_table",
]
