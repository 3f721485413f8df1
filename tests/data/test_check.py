"""The one-pass dataset check: layout, labels, missing files and undecodable images of every split
found together and reported as one DataError; skipped images, cached verdicts, fingerprints."""

from __future__ import annotations

import shutil

import pytest

from ffdi_tune.data.check import check_dataset, fingerprint
from ffdi_tune.data.layout import load_images, read_split
from ffdi_tune.data.settings import DataConfig
from ffdi_tune.errors import DataError


def labels(root, split="trainset"):
    return root / f"{split}_label.txt"


def check(root, **kw):
    return check_dataset(DataConfig(root=str(root), **kw))


def test_missing_root_or_split(data, tmp_path):
    with pytest.raises(
        DataError, match=r"data.root .*nope does not exist .*check --data or data.root"
    ):
        check(tmp_path / "nope")
    shutil.rmtree(data / "valset")
    with pytest.raises(DataError, match="valset does not exist"):
        check(data)


def test_missing_label_file(data):
    labels(data).unlink()
    with pytest.raises(DataError, match="label file .*trainset_label.txt is missing"):
        check(data)


def test_wrong_header(data):
    text = labels(data).read_text().replace("img_name,target", "name,label", 1)
    labels(data).write_text(text)
    with pytest.raises(DataError, match="header is 'name,label', but img_name,target is needed"):
        check(data)


def test_label_file_that_is_not_csv(data):
    labels(data).write_bytes(b"img_name,target\na.jpg,1,extra,fields\n\x00\xff")
    with pytest.raises(
        DataError, match="trainset_label.txt is not a readable CSV .*write a CSV with header"
    ):
        check(data)


def test_extra_column(data):
    lines = labels(data).read_text().splitlines()
    labels(data).write_text("\n".join([lines[0] + ",x"] + [ln + ",1" for ln in lines[1:]]) + "\n")
    with pytest.raises(DataError, match="header"):
        check(data)


def test_bad_target_names_row(data):
    lines = labels(data).read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ",2"
    labels(data).write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="row 4: target '2' is not 0 or 1"):
        check(data)


def test_duplicate_name(data):
    lines = labels(data).read_text().splitlines()
    labels(data).write_text("\n".join(lines + [lines[1]]) + "\n")
    with pytest.raises(DataError, match="listed more than once"):
        check(data)


def test_missing_image(data):
    first = labels(data).read_text().splitlines()[1].split(",")[0]
    (data / "trainset" / first).unlink()
    with pytest.raises(
        DataError,
        match=f"image '{first}' is missing from .*trainset; remove its row or add the file",
    ):
        check(data)


@pytest.mark.parametrize("name", ["../valset/x.jpg", "/etc/passwd"])
def test_path_traversal_refused(data, name):
    lines = labels(data).read_text().splitlines()
    lines[1] = f"{name},1"
    labels(data).write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="path traversal"):
        check(data)


def test_single_class_split(data):
    lines = labels(data, "valset").read_text().splitlines()
    labels(data, "valset").write_text(
        "\n".join([lines[0]] + [ln.rsplit(",", 1)[0] + ",0" for ln in lines[1:]]) + "\n"
    )
    with pytest.raises(DataError, match="only one class .*ROC AUC is undefined"):
        check(data)


def test_empty_testset(data):
    for p in (data / "testset").iterdir():
        p.unlink()
    with pytest.raises(DataError, match="split test .* has no images"):
        check(data)


def _rows(root, split="trainset"):
    return labels(root, split).read_text().splitlines()


def test_every_problem_is_listed_in_one_error(data):
    train = _rows(data)
    train[2] = train[2].rsplit(",", 1)[0] + ",yes"  # bad target
    train[3] = "../escape.jpg,1"  # path traversal
    labels(data).write_text("\n".join(train) + "\n")
    val_first = _rows(data, "valset")[1].split(",")[0]
    (data / "valset" / val_first).unlink()  # missing image in another split
    first_test = sorted(p.name for p in (data / "testset").iterdir())[0]
    (data / "testset" / first_test).write_bytes(b"")  # an empty file
    with pytest.raises(DataError) as info:
        check(data)
    text = str(info.value)
    assert text.startswith("4 problems in the dataset: ") and "\n" not in text
    assert "row 3: target 'yes' is not 0 or 1" in text and "path traversal" in text
    assert f"image '{val_first}' is missing" in text and "is empty (0 bytes)" in text


def test_many_problems_show_the_first_five_and_a_count(data):
    train = _rows(data)
    labels(data).write_text(
        "\n".join([train[0]] + [r.rsplit(",", 1)[0] + ",7" for r in train[1:9]] + train[9:]) + "\n"
    )
    with pytest.raises(DataError, match=r"^8 problems in the dataset: .*row 2: .*\| and 3 more$"):
        check(data)


def _break_images(root):
    """Make three trainset images unusable in three ways; return their names."""
    names = [r.split(",")[0] for r in _rows(root)[1:4]]
    (root / "trainset" / names[0]).write_bytes(b"")
    (root / "trainset" / names[1]).write_bytes(b"plain text, not a picture\n")
    whole = (root / "trainset" / names[2]).read_bytes()
    (root / "trainset" / names[2]).write_bytes(whole[: len(whole) // 2])
    return names


def test_bad_images_are_errors_by_default(data):
    names = _break_images(data)
    with pytest.raises(DataError) as info:
        check(data)
    text = str(info.value)
    assert text.startswith("3 problems")
    assert f"{names[0]}: is empty (0 bytes)" in text and f"{names[1]}: is not an image" in text
    assert f"{names[2]}: is truncated" in text and "data.on_bad_image: skip" in text


def test_skip_leaves_bad_images_out(data):
    names = _break_images(data)
    result = check(data, on_bad_image="skip")
    assert sorted(n for _, n, _ in result.skipped) == sorted(names)
    assert {s for s, _, _ in result.skipped} == {"train"}
    assert sorted(result.data.exclude["train"]) == sorted(names)
    split = read_split(result.data, "train")  # what a trial reads
    assert not set(names) & set(split.names) and len(split) == len(_rows(data)) - 4
    assert load_images(split, 32).shape[0] == len(split)  # the rest decodes
    assert result.summary["train"]["images"] == len(split)


def test_bad_test_image_is_an_error_even_with_skip(data):
    victim = sorted((data / "testset").iterdir())[0]
    victim.write_bytes(b"\xff\xd8\xff")
    with pytest.raises(DataError, match=f"{victim.name}: .*replace or remove the file$"):
        check(data, on_bad_image="skip")


def test_image_verdicts_are_cached_until_a_file_is_rewritten(data, monkeypatch):
    import os

    import ffdi_tune.data.check as data_check

    assert check(data).skipped == []
    looked = []
    real = data_check.image_problem
    monkeypatch.setattr(
        data_check, "image_problem", lambda p, *rest: looked.append(p) or real(p, *rest)
    )
    check(data)
    assert looked == []  # unchanged files: every verdict from the cache
    path = data / "trainset" / _rows(data)[1].split(",")[0]
    st = path.stat()
    # rewritten with its old size and mtime, as cp -p or touch -r leave it
    path.write_bytes(b"\0" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(DataError, match="is not an image"):
        check(data)  # the inode change time gives it away


def test_fingerprint_follows_files_and_labels(data):
    cfg = DataConfig(root=str(data))
    before = fingerprint(read_split(cfg, "val"))
    assert fingerprint(read_split(cfg, "val")) == before
    rows = _rows(data, "valset")
    flipped = rows[1].rsplit(",", 1)[0] + "," + str(1 - int(rows[1].rsplit(",", 1)[1]))
    labels(data, "valset").write_text("\n".join([rows[0], flipped] + rows[2:]) + "\n")
    assert fingerprint(read_split(cfg, "val")) != before


@pytest.mark.parametrize("odd", ['a "quoted" name.jpg', "a,b.jpg", "it's.jpg", "two\nlines.jpg"])
def test_names_a_submission_cannot_carry_plainly_are_refused(data, odd):
    import pandas as pd

    rows = _rows(data)
    old = rows[1].split(",")[0]
    (data / "trainset" / old).rename(data / "trainset" / odd)
    df = pd.read_csv(labels(data), dtype=str)
    df.loc[df["img_name"] == old, "img_name"] = odd
    df.to_csv(labels(data), index=False)
    with pytest.raises(DataError, match="holds a control character, comma or quote") as err:
        check(data)
    assert "\n" not in str(err.value) and "rename the file" in str(err.value)
    # spaces are fine
    spaced = data / "trainset" / "a spaced name.jpg"
    (data / "trainset" / odd).rename(spaced)
    df.loc[df["img_name"] == odd, "img_name"] = spaced.name
    df.to_csv(labels(data), index=False)
    assert check(data).summary["train"]["images"] == len(rows) - 1


def test_a_symlink_out_of_the_split_folder_is_refused_unless_followed(data, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    rows = _rows(data)
    name = rows[1].split(",")[0]
    (data / "trainset" / name).rename(outside / name)
    (data / "trainset" / name).symlink_to(outside / name)
    with pytest.raises(DataError, match=r"outside .*trainset \(a symbolic link out of the split"):
        check(data)
    followed = check_dataset(DataConfig(root=str(data), follow_symlinks=True))
    assert followed.summary["train"]["images"] == len(rows) - 1
    # a link to a folder out of the root: a name through it escapes the same way
    (data / "trainset" / name).unlink()
    (data / "trainset" / "r").symlink_to(outside)
    df = __import__("pandas").read_csv(labels(data), dtype=str)
    df.loc[df["img_name"] == name, "img_name"] = f"r/{name}"
    df.to_csv(labels(data), index=False)
    with pytest.raises(DataError, match=rf"r/{name}: resolves to {outside / name}, outside"):
        check(data)


def test_one_file_listed_under_two_names_is_refused(data):
    import os

    import pandas as pd

    rows = _rows(data)
    name = rows[1].split(",")[0]
    df = pd.read_csv(labels(data), dtype=str)
    df.loc[len(df)] = [f"./{name}", "1"]  # another spelling of the same file
    df.to_csv(labels(data), index=False)
    with pytest.raises(DataError, match=rf"'\./{name}' and '{name}' are the same file"):
        check(data)
    os.link(data / "trainset" / name, data / "trainset" / "hard.jpg")  # a hard link
    df.loc[len(df) - 1] = ["hard.jpg", "1"]
    df.to_csv(labels(data), index=False)
    with pytest.raises(DataError, match=rf"'hard.jpg' and '{name}' are the same file"):
        check(data)


def test_images_shared_by_trainset_and_valset_are_refused_unless_allowed(data):
    import pandas as pd

    val_name = _rows(data, "valset")[1].split(",")[0]
    shutil.copy(data / "valset" / val_name, data / "trainset" / "copied.jpg")
    df = pd.read_csv(labels(data), dtype=str)
    df.loc[len(df)] = ["copied.jpg", "1"]
    df.to_csv(labels(data), index=False)
    with pytest.raises(
        DataError,
        match=rf"1 image\(s\) of valset are byte for byte in trainset "
        rf"\(trainset copied.jpg = valset {val_name}\)",
    ):
        check(data)
    allowed = check_dataset(DataConfig(root=str(data), allow_overlap=True))
    assert allowed.overlaps == {"train-val": 1}
    assert check_dataset(DataConfig(root=str(data)), splits=("val", "test")).overlaps == {}


def test_run_with_broken_data_writes_nothing(data, tmp_path, monkeypatch, capsys):
    from ffdi_tune.cli import main

    _break_images(data)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text(f"name: broken\ndata: {{root: '{data}'}}\n")
    assert main(["run", "space.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: 3 problems in the dataset: ") and "\n" not in err
    assert not (tmp_path / "runs").exists()


def test_skip_that_leaves_a_split_empty_is_an_error(data):
    for path in (data / "valset").iterdir():
        path.write_bytes(b"")
    with pytest.raises(DataError, match="split val: none of its .* image\\(s\\) decodes"):
        check(data, on_bad_image="skip")


def test_a_mistyped_data_root_is_an_error_not_a_place_for_the_demo(tmp_path, monkeypatch, capsys):
    """The demo's own config with --data at a folder that does not exist: the demo generator is for
    the demo's configured root only."""
    from helpers import REPO

    from ffdi_tune.cli import main

    monkeypatch.chdir(tmp_path)
    typo = tmp_path / "phase1-typo"
    assert main(["run", str(REPO / "search_spaces" / "demo.yaml"), "--data", str(typo)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and str(typo) in err
    assert not typo.exists() and not (tmp_path / "runs").exists()


def test_a_cache_folder_that_cannot_be_written_is_one_line(data, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(DataError, match=r"the decode cache .*a-file/cache cannot be written"):
        check_dataset(DataConfig(root=str(data), cache_dir=str(blocker / "cache")))
    # --no-cache needs no folder
    assert check_dataset(DataConfig(root=str(data), cache=False)).summary["train"]["images"] > 0


def test_a_label_file_that_cannot_be_read_is_one_problem(data, monkeypatch):
    import pandas as pd

    real = pd.read_csv

    def refused(path, *args, **kwargs):
        if str(path).endswith("trainset_label.txt"):
            raise PermissionError(13, "Permission denied")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(pd, "read_csv", refused)
    with pytest.raises(
        DataError, match="trainset_label.txt cannot be read \\(Permission denied\\)"
    ):
        check(data)


def test_an_image_that_cannot_be_read_is_a_problem_not_a_crash(data, monkeypatch):
    from pathlib import Path

    name = _rows(data)[1].split(",")[0]
    real = Path.read_bytes

    def refused(self):
        if self.name == name:
            raise PermissionError(13, "Permission denied")
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", refused)
    with pytest.raises(DataError, match=rf"{name}: cannot be read \(Permission denied\)"):
        check(data)
    skipped = check_dataset(DataConfig(root=str(data), on_bad_image="skip"))
    assert [(s, n) for s, n, _ in skipped.skipped] == [("train", name)]


def test_testset_may_list_one_file_under_two_names(data):
    import os

    test = data / "testset"
    first = sorted(test.iterdir())[0]
    os.link(first, test / "same-bytes.jpg")  # both names need a prediction
    checked = check_dataset(DataConfig(root=str(data)))
    assert checked.summary["test"]["images"] == len(list(test.iterdir()))
