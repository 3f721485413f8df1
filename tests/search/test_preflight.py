"""``ffdi-tune check``: what a run would do, and the errors it would stop with, without training or
writing a search."""

from __future__ import annotations

from ffdi_tune.cli import main

SPACE = """
name: checked
data: {root: DATA}
train: {backbone: test_resnet, img_size: 32, batch_size: 8, epochs: 2}
space: {lr: {loguniform: [1.0e-4, 1.0e-2]}}
search: {num_samples: 3, max_concurrent: 1}
"""


def test_check_says_what_the_run_would_do_and_writes_no_search(
    tiny_data, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(SPACE.replace("DATA", str(tiny_data)))
    assert main(["check", "s.yaml"]) == 0
    out = capsys.readouterr().out
    assert "name: 'checked' is free" in out
    assert "data: train 48 (24 fake), val 24 (12 fake), test 8" in out
    assert "holdout: 12 valset images would choose, 12 be kept for the estimate" in out
    assert "search: 3 trials, 1 at a time, 2 epochs each at most, no time budget" in out
    assert "is ready to run; nothing was trained or written under runs/" in out
    assert not (tmp_path / "runs").exists()
    # with a budget: the plan, probes included
    assert (
        main(["check", "s.yaml", "--time-budget", "10m", "--set", "search.num_samples=null"]) == 0
    )
    assert "plan: " in capsys.readouterr().out
    assert not (tmp_path / "runs").exists()


def test_check_stops_with_the_runs_own_errors(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(SPACE.replace("DATA", str(tmp_path / "nowhere")))
    assert main(["check", "s.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data.root") and "\n" not in err
    (tmp_path / "demo.yaml").write_text(
        "name: d\ndata: {root: gen, demo: {n_train: 8, n_val: 8, n_test: 2, size: 32}}\n"
    )
    assert main(["check", "demo.yaml"]) == 0
    assert "the run would generate the demo dataset there first" in capsys.readouterr().out
    assert not (tmp_path / "gen").exists() and not (tmp_path / "runs").exists()
