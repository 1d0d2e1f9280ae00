"""Hostile strings from a study (the study's name, parameter values, class names, errors, paths, notes,
the title) produce no live markup, no script and no crash, in every section of the Markdown and the HTML."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from rleseg.report import ReportOptions, markdown_to_html, write_report
from rleseg.report.document import safe_link

EVIL = (
    '<script>alert(1)</script> [x](javascript:alert(2)) " onfocus="alert(3)" autofocus x=" '
    "`tick`` ``$\\frac{1}{2}$ ![i](javascript:alert(4)) <img src=x onerror=alert(5)> "
    "[y](java\tscript:alert(6)) <javascript:alert(7)> &lt;b&gt; _a_ *b* | c"
)


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _check_html(page: str, images: str = "data:image/png;base64,") -> None:
    parser = _Tags()
    parser.feed(page)
    for tag, attrs in parser.tags:
        assert tag not in ("script", "iframe", "object", "embed"), tag
        for name, value in attrs.items():
            assert not name.startswith("on") and name not in ("autofocus", "x"), (tag, name, value)
            if name == "href":
                assert value is not None and safe_link(value) and "javascript" not in value.lower(), value
            if name == "src":
                assert tag == "img" and str(value).startswith(images), value
    assert "<script" not in page.lower()


def _hostile_study(root: Path) -> optuna.Study:
    root.mkdir(parents=True)
    dist = {"tokenizer": CategoricalDistribution([f"{EVIL} a", f"{EVIL} b", "lac"])}
    study = optuna.create_study(
        study_name=f"evil {EVIL}", storage=f"sqlite:///{root / 'study.db'}", direction="maximize"
    )
    study.set_user_attr(
        "sweep",
        {
            "name": EVIL,
            "scale": EVIL,
            "sweep_file": EVIL,
            "base": EVIL,
            "params": {"tokenizer": EVIL},
            "objectives": [["val/dice_mean", "maximize"]],
            "budgets_mib": [16.0],
            "sampler": EVIL,
            "pruner": EVIL,
            "repeats": 2,
        },
    )
    study.set_user_attr(
        "binding", {"resolved_base": {}, "base": EVIL, "sweep_file": EVIL, "version": EVIL, "commit": EVIL}
    )
    study.set_user_attr("runs", [{"started": EVIL, "machine": EVIL}])
    for number, (value, seed) in enumerate(
        [(f"{EVIL} a", 0), (f"{EVIL} a", 1), (f"{EVIL} b", 0), ("lac", 0)]
    ):
        tdir = root / f"trial_{number:04d}"
        (tdir / "logs" / "val_predictions").mkdir(parents=True)
        (tdir / "config.yaml").write_text("model: {class_path: rleseg.module.RLESegModule}\n")
        (tdir / "logs" / "metrics.csv").write_text(
            "epoch,step,train/loss,val/dice_mean\n0,4,3.0,\n0,9,,0.3\n1,19,,0.5\n"
        )
        dice = 0.3 + 0.1 * number
        attrs = {
            "trial_dir": tdir.name,
            "outcome": "complete",
            "estimated_peak_mib": 10.0 + number,
            "budgets_fit": [16.0],
            "vocab_size": 100 + 10 * number,
            "tokens_per_mask_p50": 20.0 + number,
            "tokens_per_mask_p95": 30.0 + number,
            "tokens_per_mask_max": 40.0 + number,
            "max_seq_len": 64,
            "val/dice_mean": dice,
            f"val/dice_{EVIL}": dice,
            f"val/precision_{EVIL}": dice,
            "val/dice_lac": dice,
        }
        study.add_trial(
            create_trial(
                state=TrialState.COMPLETE,
                value=dice,
                params={"tokenizer": value, "seed": seed},
                distributions={**dist, "seed": CategoricalDistribution([0, 1])},
                user_attrs=attrs,
            )
        )
    study.add_trial(
        create_trial(
            state=TrialState.FAIL,
            params={"tokenizer": f"{EVIL} b", "seed": 1},
            distributions={**dist, "seed": CategoricalDistribution([0, 1])},
            user_attrs={"error": f"RuntimeError: {EVIL}", "error_log": EVIL, "outcome": "failed"},
        )
    )
    study.add_trial(
        create_trial(
            state=TrialState.PRUNED,
            params={"tokenizer": "lac", "seed": 1},
            distributions={**dist, "seed": CategoricalDistribution([0, 1])},
            user_attrs={
                "outcome": "over_budget",
                "infeasible": True,
                "estimated_peak_mib": 99.0,
                "budget_mib": 16.0,
            },
        )
    )
    return study


def test_hostile_strings_produce_no_live_markup_script_or_crash(tmp_path: Path):
    study = _hostile_study(tmp_path / "sweep")
    notes = f"## Notes\n\n{EVIL}\n\n[rel](../other/report.md) [web](https://example.org)\n"
    result = write_report(
        study, tmp_path / "out", ReportOptions(title=EVIL, notes=notes, trial_roots=[tmp_path / "sweep"])
    )
    page = result.html.read_text()
    _check_html(page)
    assert {"seeds", "ablation", "best", "failed-trials"} <= set(result.sections)
    assert len(result.figures) >= 4  # class names and values with $...$ drew, as written
    # The hostile text is shown, escaped, not dropped; the safe links of the notes stay live.
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "javascript:alert(2)" in page
    assert (
        '<a href="../other/report.html">rel</a>' in page and '<a href="https://example.org">web</a>' in page
    )
    # The Markdown renders (here with the same renderer) to no live markup either.
    _check_html(markdown_to_html(result.markdown.read_text()), images="figures/")


def test_safe_links_only_relative_and_http():
    for url in ("javascript:alert(1)", "JAVASCRIPT:x", "java\tscript:x", "data:text/html,x", "vbscript:x",
                "//evil.example/x", "file:///etc/passwd", "\\\\evil"):  # fmt: skip
        assert not safe_link(url), url
    for url in ("trials/trial_0001/", "#best", "../x/report.html", "https://a.org/b", "http://a.org"):
        assert safe_link(url), url
