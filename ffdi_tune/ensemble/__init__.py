"""Ensemble: from a search's finished trials to the submission and its honest estimate.

- ``final_stage``: :func:`run_ensemble` picks the trials to score, scores the candidates' TTA views
  on valset and testset, builds the ensemble, logs its MLflow run and writes the submission;
- ``search_record``: what a search recorded, read back from MLflow (its YAML, data, perturbation
  recipe, valset split, fingerprints);
- ``build``: chooses views, members and the combination on the selection part of valset only and
  measures the shipped one on the report part (no I/O);
- ``methods``: the registry of combination methods (``combine:``), one registration each (the
  arithmetic they use is :mod:`ffdi_tune.scoring.combine`);
- ``soup``: greedy weight soups of members that share their pretrained weights;
- ``recipe``: the ``ensembles/*.yaml`` schema;
- ``table``: the members-and-combinations table for people;
- ``submission``: the ``img_name,y_pred`` CSV;
- ``single_run``: :func:`predict_run`, one trial's submission (``ffdi-tune predict``).
"""

from ffdi_tune.ensemble.build import EnsembleResult, build_ensemble
from ffdi_tune.ensemble.final_stage import EnsembleOutcome, run_ensemble
from ffdi_tune.ensemble.methods import combination_names, method_names, register_method
from ffdi_tune.ensemble.recipe import EnsembleRecipe, load_recipe
from ffdi_tune.ensemble.single_run import predict_run
from ffdi_tune.ensemble.table import format_ensemble_table

__all__ = [
    "EnsembleOutcome",
    "run_ensemble",
    "predict_run",
    "EnsembleResult",
    "build_ensemble",
    "EnsembleRecipe",
    "load_recipe",
    "register_method",
    "method_names",
    "combination_names",
    "format_ensemble_table",
]
