"""onedistill: distill a large text classifier into a small, fast student.

The SDK is one call::

    import onedistill

    report = onedistill.distill("examples/mr-sentiment.yaml")
    report = onedistill.distill({"data": {...}, "teacher": {...}, "student": {...}})

It runs the same stages as ``onedistill run`` and returns the report that is also written to
``OUT/report.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onedistill.config import Config, ConfigError, load_config, parse_config

__version__ = "0.1.0"
__all__ = ["Config", "ConfigError", "distill", "load_config", "parse_config"]


def distill(
    config: Config | dict[str, Any] | str | Path, resume: bool = False, overwrite: bool = False
) -> dict[str, Any]:
    """Run the whole pipeline from a config object, a plain dict or a YAML path.

    Args:
        config: What to run.
        resume: Continue a killed run in the same output directory from its last checkpoint.
        overwrite: Move an existing run in the output directory aside instead of refusing.

    Returns:
        The report (teacher and student metrics, compression ratios, mapping, timings).
    """
    from onedistill.pipeline import run

    if isinstance(config, (str, Path)):
        config = load_config(config)
    elif isinstance(config, dict):
        config = parse_config(config)
    return run(config, resume=resume, overwrite=overwrite)
