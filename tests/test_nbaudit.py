"""The executed-notebook audit: noise lines, dangling references, numbers no cell printed."""

from __future__ import annotations

import os

import nbformat
import pytest

from helpers import nbaudit


def _nb(tmp_path, cells, name="05.2-test.ipynb"):
    nb = nbformat.v4.new_notebook()
    for kind, text, *out in cells:
        if kind == "md":
            nb.cells.append(nbformat.v4.new_markdown_cell(text))
        else:
            cell = nbformat.v4.new_code_cell(text)
            if out:
                cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=out[0])]
            nb.cells.append(cell)
    path = tmp_path / name
    nbformat.write(nb, path)
    return path


@pytest.mark.parametrize("token,expected", [
    ("0,587", {0.587}), ("1.800", {1800.0, 1.8}), ("8,912", {8912.0, 8.912}), ("31", {31.0}), ("12.5", {12.5}),
])
def test_written_numbers_mean_german_or_english_values(token, expected):
    # printed and written numbers are read alike: "0,587" and "12.5" cannot be thousands groups
    assert {v for v, _ in nbaudit.readings(token)} == expected


def test_a_printed_decimal_does_not_support_its_digits_as_a_whole_number(tmp_path):
    path = _nb(tmp_path, [("code", "print(x)", "Quote 12.5 %"), ("md", "Die Quote liegt bei 125 Fällen.")])
    assert nbaudit.audit(path).numbers == ["125: Die Quote liegt bei 125 Fällen."]


def test_numbers_must_be_printed_above(tmp_path):
    path = _nb(tmp_path, [
        ("md", "Vorher behauptet: 0,73 der Antworten."),                       # before the output: unsupported
        ("code", "print(x)", "stop rate 0.7321\nF1 0.45\n"),
        ("md", "Die Stop-Rate liegt bei 0,73 (73 %), F1 bei 0,45. Aber 0,99 steht nirgends."),
    ])
    found = nbaudit.audit(path)
    assert [n.split(":")[0] for n in found.numbers] == ["0,73", "0,99"]
    assert not found.ok


def test_three_decimals_after_a_zero_are_checked_to_the_third_decimal(tmp_path):
    """"0,305" cannot be a thousands group: it must match a printed value to ±0.0005, not to ±0.5."""
    assert nbaudit.readings("0,305") == {(0.305, 0.0005)}
    assert (1800.0, 0.5) in nbaudit.readings("1.800") and (1.8, 0.0005) in nbaudit.readings("1.800")
    path = _nb(tmp_path, [
        ("code", "print(k)", "kappa 0.305, qwk 0.4031\n"),
        ("md", "κ = 0,305 und gewichtet 0,403, aber die Baseline liegt bei 0,689."),
    ])
    assert [n.split(":")[0] for n in nbaudit.audit(path).numbers] == ["0,689"]


def test_small_counts_notebook_ids_headings_and_code_spans_are_not_checked(tmp_path):
    path = _nb(tmp_path, [("md", "# 05.2 Titel mit 2026\n\nDrei Schritte, 4 Kerne, siehe 05.3, `max_tokens=512`.")])
    assert nbaudit.audit(path).numbers == []


def test_cited_repository_file_supports_its_numbers(tmp_path):
    path = _nb(tmp_path, [("md", "Laut `data/gold/qa_eval.jsonl` gilt: 30 Minuten."),
                          ("md", "Ohne Quelle: 30 Minuten.")])
    found = nbaudit.audit(path)
    assert len(found.numbers) == 1 and found.numbers[0].startswith("30: Ohne Quelle")


def test_missing_notebooks_and_files_are_reported(tmp_path):
    path = _nb(tmp_path, [("md", "Siehe Notebook 99, Post 12 und `docs/gibt-es-nicht.md`; `docs/benchmarks.md` und "
                                 "Notebook 10 gibt es.")])
    assert nbaudit.audit(path).missing == ["Notebook 99", "Notebook 12", "docs/gibt-es-nicht.md"]


def test_third_party_log_lines_are_counted(tmp_path):
    logs = ("INFO 11-30 04:55:12 [llm_engine.py:123] Initializing a V1 LLM engine\n"
            "WARNING 11-30 04:55:13 [cpu.py:1] something\n"
            "UserWarning: Attempted to load weight\n"
            "Kurs-Mini pretraining:  10%|█         | 30/300\n"
            "Stop-Rate: 0.97 (n=60)\n")
    path = _nb(tmp_path, [("code", "run()", logs)])
    found = nbaudit.audit(path)
    assert len(found.noise) == 3 and "Stop-Rate" not in " ".join(found.noise)   # a progress bar is no log line


def test_profile_settings_count_as_cited(tmp_path):
    from helpers.profiles import load_profile

    path = _nb(tmp_path, [("md", "Das Profil erlaubt 1024 Tokens Kontext.")])
    assert nbaudit.audit(path).numbers != []
    assert nbaudit.audit(path, load_profile("mini")).numbers == []


def test_allow_list_sources_contain_their_numbers():
    assert nbaudit.allow_list_problems() == []


def test_mlflow_log_lines_count_as_noise():
    assert nbaudit.noise_lines("2026/11/30 04:55:12 INFO mlflow.tracking: run started\nSchritt 10/60 · Loss 5.2")  \
        == ["2026/11/30 04:55:12 INFO mlflow.tracking: run started"]


def test_library_loading_bars_count_as_noise_and_course_bars_do_not():
    text = ("Loading weights: 100%|##########| 57/57 [00:00<00:00, 230.14it/s]\n"
            "Loading safetensors checkpoint shards: 100% Completed | 1/1 [00:00<00:00,  1.96it/s]\n"
            "Generierung 0/1: 100%|##########| 1/1 [00:25<00:00, 25.79s/Unit]")
    assert [line.split(":")[0] for line in nbaudit.noise_lines(text)] \
        == ["Loading weights", "Loading safetensors checkpoint shards"]


def test_logs_route_switches_off_the_libraries_loading_bars(tmp_path, monkeypatch):
    from helpers import logs
    from transformers.utils import logging as tlog

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    tlog.enable_progress_bar()
    try:
        logs.route(tmp_path, "nb", fd_level=False)
        assert not tlog.is_progress_bar_enabled()
        assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    finally:
        tlog.enable_progress_bar()


def test_course_audit_command_fails_on_an_unsupported_number(tmp_path, capsys):
    from helpers import cli

    (tmp_path / "notebooks").mkdir()
    _nb(tmp_path / "notebooks", [("code", "print(1)", "F1 0.45\n"), ("md", "F1 liegt bei 0,45.")], "03-a.ipynb")
    assert cli.main(["course", "audit", "--run-dir", str(tmp_path)]) == 0
    _nb(tmp_path / "notebooks", [("md", "Angeblich 0,77 korrekt.")], "05-b.ipynb")
    assert cli.main(["course", "audit", "--run-dir", str(tmp_path)]) == 1
    assert "05-b.ipynb: FAIL" in capsys.readouterr().out
