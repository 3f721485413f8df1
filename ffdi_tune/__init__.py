"""ffdi-tune: Ray Tune + Optuna + ASHA search and ensembling for image deepfake detection.

One module a job, in the order a search goes through them (the README's "Layout of the code"):

- ``cli``: argument parsing and one-line errors (``error: ...``, exit 2)
- ``errors``: the project's exception tree and did-you-mean suggestions
- ``config``: YAML -> validated, typed config (pydantic), CLI overrides; the metric list and its
  directions
- ``strict``: the strict pydantic base of every config section
- ``space``: config space -> Optuna define-by-run function -> trial settings; each trial's seed
- ``models``: timm backbones; where pretrained weights come from (file, cache, package, hub)
- ``data``: FFDI layout, label checks, decoding, loaders, on-device normalisation
- ``data_check``: the one-pass dataset check before any trial (labels, files, every image decodes)
- ``demo_data``: the generated portrait dataset
- ``holdout``: the valset split a search fixes: selection part and report part
- ``cache``: the decode-once, per-node cache of resized images
- ``cache_plan``: which cache entries a search needs, whether they fit, building them up front
- ``passes``: passes over every image on every CPU, with progress bars
- ``augment``: the registry of named augmentation sets, batched flips, their batched device forms
- ``placement``: where a trial's augmentation runs (device, gather, loader)
- ``perturb``: the robust valset: its recipe and fixed, seeded per-image perturbations
- ``srm``: SRM noise-residual input in front of any backbone
- ``optimization``: optimizer (head lr multiplier), StepLR with warm-up, MixUp / CutMix, AMP
- ``train``: one trial's training: restore, epochs, evaluate, keep best, save (no Ray, no MLflow)
- ``inference``: scoring decoded images: full-precision log-odds per TTA view (training and
  prediction)
- ``metrics``: AUC, TPR at FPR 1e-3, accuracy, log loss (scikit-learn)
- ``budget``: a search's time budget and the final stage's share of it
- ``search``: ``run_search``, step by step, and the Ray Tune trial
- ``search_setup``: a search's steps around its trials: data, split, cache, tracking, budget,
  summary
- ``rounds``: a search's rounds of Tune trials: TPE + ASHA, resume, extension, the trials' rows
- ``searcher``: TPE told best epochs and pruned trials; the budget's gate and stopper
- ``tune_callbacks``: every trial mirrored into MLflow from the driver
- ``cluster``: connecting to Ray, trial resources, what every node must see, each node's cache built
  up front
- ``tracking``: the MLflow schema (every tag and metric name) and its runs; the only MLflow import
- ``spool``: the journal of tracking writes kept while the store is away, and their replay
- ``trials_table``: the ranked trials table (``trials.csv``, the printed table)
- ``files``: whole-or-nothing writes; bucket URIs told from paths
- ``report``: ROC, search history, parameter importance figures; the search's summary
- ``ensemble_recipe``: ensemble recipes -> validated config
- ``tta``: TTA views as tensor ops
- ``predict``: load a member safely, predict every view from one decode
- ``combine``: mean of probabilities or log-odds, rank average, greedy selection
- ``ensemble``: every combination, the one shipped, its honest estimate (no I/O)
- ``final_stage``: from MLflow trials to submission, report and ensemble run

Ray is imported by ``search``, ``rounds``, ``searcher``, ``tune_callbacks`` and ``cluster`` only;
MLflow by ``tracking`` only.
"""

__version__ = "0.1.0"
