"""Loggers whose files survive a fit followed by a test in the same process."""
from __future__ import annotations

import itertools
import os

import pytorch_lightning as pl

_writer_ids = itertools.count()


class TensorBoardLogger(pl.loggers.TensorBoardLogger):
    """Lightning's TensorBoardLogger with one event file per writer.

    tensorboardX names an event file by the second and the host only
    (``events.out.tfevents.<unix second>.<host>``) and opens it with ``"wb"``. Lightning closes the
    writer when ``fit`` ends and ``test`` reopens it: within the same second (a short run) the test
    writer truncates the fit's file and every training scalar is lost. Each writer here gets its
    own suffix (pid and a counter), and ``finalize`` drops the closed writer so the next stage
    creates a fresh one.
    """

    @property
    def experiment(self):  # type: ignore[override]
        if self._experiment is None:
            self._kwargs["filename_suffix"] = f".{os.getpid()}.{next(_writer_ids)}"
        return super().experiment

    def finalize(self, status: str) -> None:
        super().finalize(status)
        self._experiment = None
