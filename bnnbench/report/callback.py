"""The Hydra callback that ends every multirun with its report (``hydra.callbacks.render_report``
in conf/hydra/default.yaml): the sweep's table, verdicts and unfinished runs on the terminal, and
``<sweep dir>/report/<name>.{md,csv,tex}`` plus plots. Rerendering (``python -m bnnbench.report
<sweep dir>``) replaces the same files with the same content.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

try:  # hydra is a dependency; a plain class when it is absent (e.g. docs builds)
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover
    _HydraCallback = object  # type: ignore[misc,assignment]

REPORT_SUBDIR = "report"


class RenderReport(_HydraCallback):  # type: ignore[misc,valid-type]
    """Render the report of the sweep directory when the multirun ends."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        from bnnbench.rundir import is_ddp_worker

        if is_ddp_worker():
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        command = f"python -m bnnbench.report {sweep_dir}"
        try:  # imported here: a single run never pays for pandas and matplotlib
            from bnnbench.report.__main__ import render

            print(flush=True)
            render([sweep_dir], sweep_dir / REPORT_SUBDIR, command=command)
        except Exception as err:  # noqa: BLE001 - the runs are done; a report must not undo that
            line = str(err).splitlines()[0] if str(err) else type(err).__name__
            print(f"bnnbench.report: warning: the sweep's report was not written ({line}); "
                  f"retry with `{command}`", file=sys.stderr)
