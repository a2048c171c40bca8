"""Settings section: Logs, `/env`, `/run_script`, metric labels."""

from __future__ import annotations

from dataclasses import dataclass

from lmcache_frontends.options import check_positive, choices_metavar, one_of, option
from lmcache_frontends.settings.values import LOG_LEVELS


@dataclass(frozen=True)
class ObservabilitySettings:
    """Logs, `/env`, `/run_script`, metric labels."""

    log_level: str = option(
        "INFO",
        "Log level of the server process.",
        section="observability",
        metavar=choices_metavar(LOG_LEVELS),
        check=one_of(LOG_LEVELS, ignore_case=True),
    )
    env_unredacted: bool = option(
        False, "GET /env shows values of variables whose names look secret (KEY, TOKEN, SECRET, PASSWORD, CREDENTIAL).",
        section="observability",
    )
    enable_run_script: bool = option(
        False, "Serve POST /run_script (runs uploaded Python in the server process: remote code execution).",
        section="observability",
    )
    metrics_labels: str = option(
        "on", "Label metrics by model_name and cache_salt (off: bounded cardinality for large fleets).",
        section="observability", metavar="{on,off}", check=one_of(("on", "off"), ignore_case=True),
    )
    metrics_max_label_values: int = option(
        1000, "Distinct values one metric label may take; later ones are reported as \"other\".",
        section="observability", check=check_positive,
    )
