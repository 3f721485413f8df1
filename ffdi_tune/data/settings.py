"""The ``data:`` section of a search space: where the FFDI-layout dataset lives and how it is read.

``docs/config.md`` documents every key.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from ffdi_tune.strict import StrictModel

__all__ = ["DataConfig", "DemoSpec"]


class DemoSpec(StrictModel):
    """Generate the demo dataset at ``data.root`` when it does not exist yet."""

    n_train: int = Field(2000, ge=4)
    n_val: int = Field(400, ge=4)
    n_test: int = Field(200, ge=1)
    size: int = Field(64, ge=32, le=1024)
    seed: int = 0
    difficulty: float = Field(0.5, ge=0, le=1)
    # a forgery kind kept out of train/val: every test fake carries it
    unseen_forgery: str | None = None

    @field_validator("unseen_forgery")
    @classmethod
    def _known_kind(cls, v: str | None) -> str | None:
        from ffdi_tune.data.demo import check_forgery_kind

        return None if v is None else check_forgery_kind(v)


class DataConfig(StrictModel):
    """Where the FFDI-layout dataset lives; names default to the competition's."""

    root: str
    train_dir: str = "trainset"
    val_dir: str = "valset"
    test_dir: str = "testset"
    train_labels: str = "trainset_label.txt"
    val_labels: str = "valset_label.txt"
    test_list: str | None = None
    demo: DemoSpec | None = None
    # DataLoader processes for augmentation run image by image; auto: on a GPU trial all but one of
    # its CPU threads, on a CPU trial none (they would take cores from the model).
    num_workers: Annotated[int, Field(ge=0)] | Literal["auto"] = "auto"
    cache: bool = True  # decode each split once per node and size, into cache_dir
    cache_dir: str | None = None  # default $FFDI_TUNE_CACHE, else ~/.cache/ffdi-tune
    # refuse a search whose decoded arrays would need more
    cache_max_gb: float | None = Field(None, gt=0)
    # What the pre-check does with image files that cannot be decoded (empty, truncated, not an
    # image): stop with the list ("error"), or leave them out of trainset/valset ("skip").
    on_bad_image: Literal["error", "skip"] = "error"
    # Images left out per split ("train", "val"), by img_name; the pre-check adds skipped ones here.
    exclude: dict[Literal["train", "val"], list[str]] = {}
    # An image whose path resolves outside its split's folder (a symlink out of it) is refused
    # unless this is true.
    follow_symlinks: bool = False
    # Byte-identical images in trainset and valset are refused (the report part would not be
    # unseen) unless this is true; the search run then records ffdi.data.allow_overlap.
    allow_overlap: bool = False
