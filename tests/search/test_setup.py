"""What a search records about where it came from: the space file and its git commit."""

from __future__ import annotations

import subprocess

from ffdi_tune.config import load_search_config
from ffdi_tune.search.setup import source_tags


def test_a_space_in_a_git_repository_records_its_commit(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    space = repo / "s.yaml"
    space.write_text("name: s\ndata: {root: d}\n")

    def git(*args):
        return subprocess.run(
            ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    git("init", "-q")
    git("add", "s.yaml")
    git("commit", "-q", "-m", "space")
    git("remote", "add", "origin", "https://example.org/team/spaces.git")
    cfg = load_search_config(space)
    assert cfg.source == space.resolve()
    assert cfg.model_copy(update={"name": "t"}).source == space.resolve()  # kept through copies
    tags = source_tags(cfg.source)
    assert tags["mlflow.source.git.commit"] == git("rev-parse", "HEAD")
    assert tags["mlflow.source.git.repoURL"] == "https://example.org/team/spaces.git"
    assert tags["mlflow.source.name"] == str(space.resolve())
    # outside a repository: the file alone
    loose = tmp_path / "loose.yaml"
    loose.write_text("name: l\ndata: {root: d}\n")
    assert set(source_tags(load_search_config(loose).source)) == {
        "mlflow.source.name",
        "mlflow.source.type",
    }
