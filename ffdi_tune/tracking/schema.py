"""The MLflow schema: every tag and metric name the project writes or reads, as constants.

Importing it has no side effects and needs no MLflow: any module may name a tag or a metric.
"""

from __future__ import annotations

__all__ = [
    "ROLE",
    "SEARCH",
    "TRIAL_ID",
    "PARENT",
    "DATA_ROOT",
    "BEST_TRIAL_ID",
    "BEST_RUN_ID",
    "ON_BAD_IMAGE",
    "SKIPPED_IMAGES",
    "VERSION_PREFIX",
    "FINGERPRINT_PREFIX",
    "HOLDOUT_FRACTION",
    "HOLDOUT_SEED",
    "HOLDOUT_REPORT_HASH",
    "STOPPED_EARLY",
    "EPOCHS_RUN",
    "ERROR",
    "BUDGET_CUT",
    "DEFAULT_RECIPE",
    "PLAN_PREFIX",
    "CONTINUED_FROM",
    "WEIGHTS_KEPT",
    "LEASE",
    "REFIT_OF",
    "HOLDOUT_AUC_BEFORE_REFIT",
    "DATA_OVERLAPS",
    "ALLOW_OVERLAP",
    "NODE_ID",
    "AUGMENT_ON",
    "WEIGHTS_SOURCE",
    "WEIGHTS_SHA256",
    "COMBINE_CHOSEN",
    "EXPERIMENT_KIND",
    "TRAINING_VIEW",
    "SELECT_AUC",
    "BEST_MEMBER_SELECT_AUC",
    "HOLDOUT_AUC",
    "HOLDOUT_AUC_LOW",
    "HOLDOUT_AUC_HIGH",
    "BEST_MEMBER_HOLDOUT_AUC",
    "HOLDOUT_AUC_NO_TTA",
    "HOLDOUT_TPR",
    "HOLDOUT_ROBUST_AUC",
    "HOLDOUT_WORST_AUC",
    "N_MEMBERS",
    "DEFAULT_RECIPE_SELECT_AUC",
    "SEARCH_GAIN_SELECT_AUC",
    "MEMBERS_SHORT",
]

# role: search | trial | ensemble
ROLE, SEARCH, TRIAL_ID = (
    "ffdi.role",
    "ffdi.search",
    "ffdi.trial_id",
)
PARENT = "mlflow.parentRunId"
DATA_ROOT = "ffdi.data_root"  # on the search run: where its trials read their images
# search run
BEST_TRIAL_ID, BEST_RUN_ID = "ffdi.best_trial_id", "ffdi.best_run_id"
PLAN_PREFIX = "ffdi.plan."  # + key: what the time budget planned (trials, rungs, reserve...)
ON_BAD_IMAGE, SKIPPED_IMAGES = "ffdi.on_bad_image", "ffdi.skipped_images"
VERSION_PREFIX, FINGERPRINT_PREFIX = "ffdi.version.", "ffdi.data_fingerprint."  # + package / split
HOLDOUT_FRACTION, HOLDOUT_SEED, HOLDOUT_REPORT_HASH = (
    "ffdi.holdout.fraction",
    "ffdi.holdout.seed",
    "ffdi.holdout.report_hash",
)
# trial run
STOPPED_EARLY, EPOCHS_RUN, ERROR = "ffdi.stopped_early", "ffdi.epochs_run", "ffdi.error"
BUDGET_CUT = "ffdi.budget_cut"  # the time budget ended it before its last epoch
DEFAULT_RECIPE = "ffdi.default_recipe"  # the search's first trial: its default recipe
CONTINUED_FROM = "ffdi.continued_from"  # trained further from this trial's checkpoint
WEIGHTS_KEPT = "ffdi.weights_kept"  # the kind of weights in best.pt: raw, ema (or swa)
# on a search's experiment: which run holds it, while one does (tracking.lease)
LEASE = "ffdi.lease"
# on a refit's run: the run id of the search trial whose configuration it trained again
REFIT_OF = "ffdi.refit_of"
# on the ensemble run with a refit: the report-part AUC of the combination before its refit
HOLDOUT_AUC_BEFORE_REFIT = "holdout_auc_before_refit"
# search run: byte-identical images shared by splits ("train-test=2,..."), and whether
# data.allow_overlap let trainset and valset share some
DATA_OVERLAPS, ALLOW_OVERLAP = "ffdi.data.overlaps", "ffdi.data.allow_overlap"
NODE_ID, AUGMENT_ON = "ffdi.node_id", "ffdi.augment_on"
WEIGHTS_SOURCE, WEIGHTS_SHA256 = "ffdi.weights_source", "ffdi.weights_sha256"
# ensemble run
COMBINE_CHOSEN = "ffdi.combine_chosen"
# MLflow 3's UI opens an experiment in its GenAI view unless it carries this tag
EXPERIMENT_KIND, TRAINING_VIEW = "mlflow.experimentKind", "custom_model_development"

# ensemble run metrics: the shipped combination and the best single member, on the selection part
# (which chose them) and on the report part (the honest estimate; absent with holdout fraction 0)
SELECT_AUC, BEST_MEMBER_SELECT_AUC = "select_auc", "best_member_select_auc"
HOLDOUT_AUC, BEST_MEMBER_HOLDOUT_AUC = "holdout_auc", "best_member_holdout_auc"
HOLDOUT_AUC_NO_TTA, HOLDOUT_TPR = "holdout_auc_no_tta", "holdout_tpr_at_fpr_0.001"
# the ends of a 95% bootstrap interval of holdout_auc (its report-part images resampled)
HOLDOUT_AUC_LOW, HOLDOUT_AUC_HIGH = "holdout_auc_ci_low", "holdout_auc_ci_high"
HOLDOUT_ROBUST_AUC, HOLDOUT_WORST_AUC = "holdout_robust_auc", "holdout_worst_auc"
N_MEMBERS = "n_members"
# the default recipe (the search's first trial) on the selection part, and what the shipped
# ensemble gains over it there
DEFAULT_RECIPE_SELECT_AUC, SEARCH_GAIN_SELECT_AUC = (
    "default_recipe_select_auc",
    "search_gain_select_auc",
)
# on the ensemble run: fewer trials qualified than top_k (a budget ended the search early)
MEMBERS_SHORT = "ffdi.members_short"
