"""The command line: one grammar (Hydra ``key=value`` overrides) for every bnnbench command.

``bnnbench <command> [args ...]`` (the console script) forwards to the command's own entry point,
with the same arguments as ``python -m bnnbench...``:

=============  =====================================  ===========================================
command        same as                                arguments
=============  =====================================  ===========================================
``train``      ``python -m bnnbench``                 Hydra overrides (conf/config.yaml)
``evaluate``   ``python -m bnnbench.evaluate``        Hydra overrides (conf/evaluate.yaml)
``export``     ``python -m bnnbench.export``          Hydra overrides (conf/export.yaml)
``size``       ``python -m bnnbench.size``            Hydra overrides (conf/size.yaml)
``report``     ``python -m bnnbench.report``          its own (``<table> --run -- overrides``)
=============  =====================================  ===========================================

Every command turns a bad input into one line on stderr (``bnnbench: error: ...``, exit 2);
Hydra's own composition errors (an unknown key or option) are one message, no traceback.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# subcommand -> the module whose main() it runs
COMMANDS = {
    "train": "bnnbench.__main__",
    "evaluate": "bnnbench.evaluate",
    "export": "bnnbench.export",
    "size": "bnnbench.size",
    "report": "bnnbench.report.__main__",
}
USAGE = (f"usage: bnnbench {{{','.join(COMMANDS)}}} [args ...]   (bnnbench <command> --help: "
         "its options)")


def hydra_app(config_name: str, job: Callable[[Any], Any]) -> Callable[[], Any]:
    """A Hydra app on ``conf/<config_name>.yaml`` running ``job(cfg)``, a BnnbenchError becoming
    one line (:func:`bnnbench.errors.call_or_exit`). Call the result to parse ``sys.argv``."""
    import hydra

    from bnnbench import CONFIG_DIR
    from bnnbench.errors import call_or_exit

    @hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name=config_name)
    def app(cfg: Any) -> Any:
        return call_or_exit(job, cfg)

    return app


def output_of(cfg: Any) -> Path | None:
    """Where evaluate/export write: ``out``; else, for a ``ckpt_path`` given without ``run_dir``,
    the Hydra run dir (``hydra.run.dir``, default the current directory); else None (the run
    directory)."""
    from hydra.core.hydra_config import HydraConfig

    if cfg.get("out") is not None:
        return Path(cfg.out)
    if cfg.get("run_dir") is None and HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return None


def main(argv: list[str] | None = None) -> None:
    """``bnnbench <command> [args ...]``: run the command's main with ``args`` as its argv."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        print(__doc__.split("\n\n")[1])
        raise SystemExit(0 if args else 2)
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"bnnbench: error: unknown command {command!r}; {USAGE}", file=sys.stderr)
        raise SystemExit(2)
    # Hydra and argparse read sys.argv: the command's arguments, under its own name
    sys.argv = [f"bnnbench {command}", *rest]
    importlib.import_module(COMMANDS[command]).main()
