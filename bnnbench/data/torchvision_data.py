"""Datasets read from (or downloaded to) torchvision's on-disk layout under ``data.root``.

Shared by :mod:`bnnbench.data.mnist` and :mod:`bnnbench.data.cifar`: a fixed, seeded validation
split held out of the training files, a download when asked (``data.download=true``, online), and a
one-line :class:`~bnnbench.errors.BnnbenchError` naming the directory and the expected files when
they are missing, instead of torchvision's traceback.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from bnnbench.data.base import ImageClassificationData
from bnnbench.errors import BnnbenchError, check_range, first_line


def holdout_split(num_train: int, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices: the first ``val_size`` of a permutation by ``default_rng(seed)``.

    Both are sorted. The split depends only on ``num_train``, ``val_size`` and ``seed`` (not on
    the run's seed), so every run of a dataset validates on the same images.
    """
    if not 0 < val_size < num_train:
        raise BnnbenchError(f"data.val_size={val_size} is out of range: the training files hold "
                            f"{num_train} images, need 0 < data.val_size < {num_train}")
    perm = np.random.default_rng(seed).permutation(num_train)
    return np.sort(perm[val_size:]), np.sort(perm[:val_size])


def check_labels(path: Path, num_images: int, labels: np.ndarray, num_classes: int) -> None:
    """One line naming ``path`` when its labels do not fit its images: as many labels as images
    (a shorter file would silently drop examples), each in ``0..num_classes-1``."""
    if len(labels) != num_images:
        raise BnnbenchError(f"{path} holds {num_images} images but {len(labels)} labels; the "
                            "files are corrupt or mismatched: download them again")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0]
        raise BnnbenchError(f"{path} holds the label {int(bad)}, outside 0..{num_classes - 1}; "
                            "the files are corrupt or of another dataset: download them again")


class TorchvisionData(ImageClassificationData):
    """Base for torchvision-format datasets: ``root``, ``download``, ``val_size``, ``split_seed``.

    Subclasses name their files (:attr:`folder` under ``root``, :attr:`files` in it, of which
    :attr:`test_files` hold the test split), how to download them (:meth:`_download`) and how to
    read them (:meth:`_load_fit`, :meth:`_load_test`).
    """

    name: str
    folder: str
    files: tuple[str, ...]
    test_files: tuple[str, ...]  # the files of the test split (a subset of ``files``)

    def __init__(self, root: str = "data", download: bool = False, val_size: int = 5000,
                 split_seed: int = 0, batch_size: int = 100, num_workers: int = 0,
                 eval_batch_size: int | None = None) -> None:
        super().__init__(batch_size, num_workers, eval_batch_size)
        check_range("data.val_size", val_size, low=1, integer=True)
        check_range("data.split_seed", split_seed, low=0, integer=True)
        self.root = Path(root).expanduser()
        self.download = download
        self.val_size = val_size
        self.split_seed = split_seed

    @property
    def directory(self) -> Path:
        return (self.root / self.folder).resolve()

    def missing_files(self, files: tuple[str, ...] | None = None) -> list[str]:
        return [f for f in (self.files if files is None else files)
                if not (self.directory / f).is_file()]

    def check_files(self, files: tuple[str, ...] | None = None) -> None:
        """Raise a one-line BnnbenchError naming the directory and the files it lacks (of
        ``files``, default all of :attr:`files`)."""
        wanted = self.files if files is None else files
        missing = self.missing_files(wanted)
        if missing:
            partly = "" if len(missing) == len(wanted) else f" (missing: {', '.join(missing)})"
            raise BnnbenchError(
                f"{self.name} not found: expected {self.directory}/ holding "
                f"{', '.join(wanted)}{partly} (torchvision's layout under data.root="
                f"{self.root}); put the files there, or set data.download=true when online")

    def prepare_data(self) -> None:
        """Download once (rank 0 under DDP) when ``download`` is set and files are missing."""
        if self.download and self.missing_files():
            self.root.mkdir(parents=True, exist_ok=True)
            try:
                self._download()
            except Exception as err:  # no network, a mirror down, a bad checksum
                raise BnnbenchError(
                    f"could not download {self.name} to {self.directory} ({first_line(err)}); "
                    f"offline, put {', '.join(self.files)} there by hand") from None
        self.check_files()

    def setup(self, stage: str | None = None) -> None:
        """``stage="test"`` reads only :attr:`test_files` (evaluating needs no training files, and
        ``val_size`` is not checked against them); any other stage reads every split."""
        if stage == "test":
            if self.test_set is None:
                self.check_files(self.test_files)
                self.test_set = self._load_test()
            return
        if self.train_set is not None:
            return
        self.check_files()
        self.train_set, self.val_set = self._load_fit()
        if self.test_set is None:
            self.test_set = self._load_test()

    def _download(self) -> None:
        raise NotImplementedError

    def _load_fit(self) -> tuple[Dataset, Dataset]:
        """(train, val): the training files split by :func:`holdout_split`."""
        raise NotImplementedError

    def _load_test(self) -> Dataset:
        raise NotImplementedError
