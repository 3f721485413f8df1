"""ffdi-tune: Ray Tune + Optuna + ASHA search and ensembling for image deepfake detection.

One module a job, in the order a search uses them (the README's "Layout of the code" says each
one's job):

- configuration: ``config``, ``strict``, ``space``, ``errors``;
- weights and data: ``models``, ``data``, ``data_check``, ``demo_data``, ``holdout``, ``cache``,
  ``cache_plan``, ``passes``, ``augment``, ``placement``, ``perturb``, ``srm``;
- one trial (no Ray, no MLflow): ``optimization``, ``train``, ``inference``, ``metrics``;
- the search: ``search``, ``search_setup``, ``budget``; and ``rounds``, ``searcher``,
  ``tune_callbacks``, ``cluster``, the only Ray imports with ``search``;
- tracking and outputs: ``tracking`` (the only MLflow import), ``spool``, ``trials_table``,
  ``files``, ``report``;
- the final stage: ``ensemble_recipe``, ``tta``, ``predict``, ``combine``, ``ensemble``,
  ``final_stage``;
- the ``ffdi-tune`` command: ``cli``.
"""

__version__ = "0.1.0"
