"""bnnbench: train, compare and deploy binary neural networks."""

from pathlib import Path

__version__ = "0.1.0"

# kernels/ sits at the repository's top level and is imported as ``bnnbench.kernels``. A wheel
# gets it through pyproject's package-dir mapping; setuptools' editable finder maps only
# top-level packages, so in a checkout the repository root joins this package's search path.
_here = Path(__file__).resolve().parent
if not (_here / "kernels").is_dir() and (_here.parent / "kernels" / "__init__.py").is_file():
    __path__.append(str(_here.parent))  # type: ignore[name-defined]  # noqa: F821

#: The Hydra config directory: shipped inside a wheel as bnnbench/conf, at the top level in a checkout.
CONFIG_DIR = str(next(d for d in (_here / "conf", _here.parent / "conf") if d.is_dir()))
