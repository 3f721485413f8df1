"""Ensemble: from a search's finished trials to the submission and its honest estimate.

``final_stage.run_ensemble`` reads the trials back from MLflow, scores the candidates' TTA views
on valset and testset, and writes the submission; ``build`` chooses views, members and the
combination on the selection part of valset only and measures the shipped one on the report part;
``combine`` holds the combination arithmetic and ``recipe`` the ``ensembles/*.yaml`` schema.
"""

from ffdi_tune.ensemble.build import EnsembleResult, build_ensemble
from ffdi_tune.ensemble.final_stage import EnsembleOutcome, predict_run, run_ensemble
from ffdi_tune.ensemble.recipe import EnsembleRecipe, load_recipe

__all__ = [
    "EnsembleOutcome",
    "predict_run",
    "run_ensemble",
    "EnsembleResult",
    "build_ensemble",
    "EnsembleRecipe",
    "load_recipe",
]
