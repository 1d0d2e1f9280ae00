"""Study → tables and plots → Markdown and HTML: ``rleseg report --study STORAGE --out reports/NAME/``.

The package, along the path a report takes:

* :mod:`~rleseg.report.study` — the study as records (the trial record of :mod:`rleseg.sweep.record`),
  trial folders and their logs, variants (trials that differ only by the seed);
* :mod:`~rleseg.report.document` — blocks rendered to Markdown and to HTML (markdown-it-py, raw HTML off,
  only relative and http(s) links; every string from the study escaped);
* :mod:`~rleseg.report.figures` — the figures (matplotlib; text from data is never parsed as mathtext);
* :mod:`~rleseg.report.build` — the sections and :func:`write_report`.

A report is built from the study and the files its trials wrote, nothing else: nothing is retrained or
re-evaluated. ``write_report`` keeps everything it needs beside the report: a copy of the study
(``study.db``) and each trial's small artifacts (``trials/trial_NNNN/``: ``metrics.csv``, ``config.yaml``,
``hparams.yaml``, the last prediction grid), so the command at the report's top regenerates every figure
from a fresh clone. Sections that would carry no information are left out (see :func:`write_report`).

>>> pareto_front([10.0, 20.0, 30.0, 40.0], [0.5, 0.4, 0.8, 0.7])
[0, 2]
"""

from rleseg.report.build import write_report
from rleseg.report.document import markdown_to_html, md_code, md_text
from rleseg.report.study import (
    ReportError,
    ReportOptions,
    ReportResult,
    load_study,
    metric_label,
    pareto_front,
    resolve_storage,
)

__all__ = [
    "ReportError",
    "ReportOptions",
    "ReportResult",
    "load_study",
    "markdown_to_html",
    "md_code",
    "md_text",
    "metric_label",
    "pareto_front",
    "resolve_storage",
    "write_report",
]
