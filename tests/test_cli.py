"""The command line: every subcommand parses its flags, and the project's errors end as one line,
``error: ...``, with exit status 2 (no traceback)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import REPO

from ffdi_tune.cli import build_parser, main
from ffdi_tune.data.settings import DemoSpec


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_subcommands_parse_their_flags():
    parser = build_parser()
    run = parser.parse_args(
        ["run", "s.yaml", "--num-samples", "3", "--resume", "--time-budget", "2h", "--no-cache"]
    )
    assert (run.space, run.num_samples, run.resume, run.time_budget) == ("s.yaml", 3, True, "2h")
    assert run.no_cache and not run.no_ensemble and run.func.__name__ == "_cmd_run"
    ensemble = parser.parse_args(["ensemble", "r.yaml", "--experiment", "a", "--experiment", "b"])
    assert ensemble.experiment == ["a", "b"] and not ensemble.allow_changed_data
    predict = parser.parse_args(["predict", "--run", "x", "--data", "d", "--out", "o.csv"])
    assert predict.tta == "identity"
    demo = parser.parse_args(["demo-data", "out"])
    defaults = DemoSpec()
    assert (demo.n_train, demo.n_val, demo.size, demo.difficulty) == (
        defaults.n_train,
        defaults.n_val,
        defaults.size,
        defaults.difficulty,
    )
    assert parser.parse_args(["sync", "s"]).storage == "runs"
    assert parser.parse_args(["ui"]).port == 5000


def test_yaml_syntax_error_reports_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nspace:\n  lr: {loguniform: [1e-4, 1e-2]\n  gamma: 1\n")
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "YAML syntax error at line" in err and "\n" not in err


def test_cli_bad_config_exits_2_without_traceback(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text("name: s\ndata: {root: /x}\nsearch: {num_samples: 2, max_concurent: 1}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "ffdi_tune", "run", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "Traceback" not in proc.stderr
    assert "did you mean 'max_concurrent'" in proc.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--time-budget", "soon"], "error: search_spaces/demo.yaml: search.time_budget: "),
        (["--resume", "--time-budget", "soon"], "error: --time-budget: "),
    ],
)
def test_a_bad_time_budget_is_one_error_line(capsys, monkeypatch, flags, message):
    """A fresh search reads --time-budget as the YAML key; a resumed one as more time."""
    monkeypatch.chdir(REPO)
    assert main(["run", "search_spaces/demo.yaml", *flags]) == 2
    assert one_error_line(capsys).startswith(message)


def test_an_unknown_tta_view_is_one_error_line(tmp_path, capsys):
    args = ["predict", "--run", "r", "--data", str(tmp_path), "--out", str(tmp_path / "o.csv")]
    assert main([*args, "--tta", "identity,hflp"]) == 2
    err = one_error_line(capsys)
    assert err.startswith("error: --tta: unknown TTA view 'hflp'") and "'hflip'" in err
    assert not (tmp_path / "o.csv").exists()


def test_sync_names_a_search_it_cannot_find_and_says_when_nothing_waits(tmp_path, capsys):
    assert main(["sync", "nope", "--storage", str(tmp_path)]) == 2
    assert "no search 'nope' under" in one_error_line(capsys)
    (tmp_path / "done").mkdir()
    assert main(["sync", "done", "--storage", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == "search done: nothing to sync"


def test_version(capsys):
    from ffdi_tune import __version__
    from ffdi_tune.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0 and capsys.readouterr().out.strip() == f"ffdi-tune {__version__}"


def test_more_members_than_trials_without_a_budget_is_refused_before_anything_runs(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "top5.yaml").write_text("top_k: 5\n")
    (tmp_path / "s.yaml").write_text(
        "name: few\ndata: {root: data}\ntrain: {backbone: test_resnet}\n"
        "search: {num_samples: 3}\nensemble: top5.yaml\n"
    )
    assert main(["run", "s.yaml"]) == 2
    err = one_error_line(capsys)
    assert "top_k=5, but the search runs 3 trial(s)" in err and "--num-samples to 5" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


def test_out_naming_a_folder_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text("top_k: 1\n")
    (tmp_path / "folder").mkdir()
    assert main(["ensemble", "r.yaml", "--experiment", "x", "--out", "folder"]) == 2
    assert "--out folder is a folder; name the CSV file to write" in one_error_line(capsys)
    assert main(["predict", "--run", "r", "--data", "d", "--out", "folder"]) == 2
    assert "is a folder" in one_error_line(capsys)
    assert not (tmp_path / "runs").exists()


def test_set_overrides_any_key_with_the_files_checks(tmp_path, capsys):
    from ffdi_tune.cli import _run_overrides
    from ffdi_tune.config import load_search_config

    space = tmp_path / "s.yaml"
    space.write_text("name: s\ndata: {root: d}\ntrain: {backbone: test_resnet, lr: 1.0e-3}\n")
    args = build_parser().parse_args(
        [
            "run",
            str(space),
            "--set",
            "train.lr=3e-4",
            "--set",
            "space.mix={choice: [none, mixup]}",
            "--set",
            "search.holdout.fraction=0.3",
            "--epochs",
            "3",
        ]
    )
    cfg = load_search_config(space, _run_overrides(args))
    assert cfg.train.lr == 3e-4 and cfg.train.epochs == 3
    assert cfg.space["mix"].choice == ["none", "mixup"] and cfg.search.holdout.fraction == 0.3
    # a mistyped key or a bad value: the file's own one-line errors, naming the key
    for bad, message in (
        ("train.lrr=1", "train: unknown key 'lrr' (did you mean 'lr'"),
        ("train.lr=-1", "train.lr"),
        ("train.lr", "write KEY=VALUE"),
        ("search.time_budget=1:30", "'1:30' is not a duration"),
    ):
        assert main(["run", str(space), "--set", bad]) == 2
        assert message in one_error_line(capsys)


def test_a_refit_from_ensemble_holds_the_search_lock_and_waits_for_no_running_search(
    tmp_path, monkeypatch
):
    """``ffdi-tune ensemble`` with a refit writes beside the search's rounds and under its run, so
    it takes the search's lock as ``run`` does: refused while a run holds it, held while the refits
    train (the trainer here records the lock's holder instead of training)."""
    import json
    import os
    import signal

    from helpers import hold_search_lock

    from ffdi_tune.cli import _refitter
    from ffdi_tune.config import parse_search_config
    from ffdi_tune.errors import SearchError
    from ffdi_tune.search import refit_trials
    from ffdi_tune.search.lock import lock_path
    from ffdi_tune.tracking import Tracker

    monkeypatch.chdir(tmp_path)
    config = parse_search_config({"name": "held", "data": {"root": "d"}}).model_dump(mode="json")
    holders = []

    def trainer(*args, **kwargs):
        holders.append(
            json.loads(lock_path(tmp_path / "runs" / "held").with_suffix(".json").read_text())
        )
        return {}

    monkeypatch.setattr(refit_trials, "run_refits", trainer)
    refit = _refitter(Tracker(f"sqlite:///{tmp_path}/mlflow.db", (tmp_path / "a").as_uri()))
    proc = hold_search_lock(tmp_path / "runs" / "held")
    try:
        with pytest.raises(
            SearchError, match=rf"search 'held' is already running .*pid {proc.pid}"
        ):
            refit([], [], config, str(tmp_path / "d"))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert holders == []
    assert refit([], [], config, str(tmp_path / "d")) == {}
    assert [h["pid"] for h in holders] == [os.getpid()]
