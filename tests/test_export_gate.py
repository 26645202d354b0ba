"""The ladder's accuracy gate: what a candidate misses, the paired figures it is judged on, and the
held-out problems it may be judged on (no engine: the figures are given; test_export runs it for real)."""

import pytest

from edgereason.export.answers import AnswerSheet, held_out_problems
from edgereason.export.config import GGUFExportConfig
from edgereason.export.files import ExportError
from edgereason.export.gguf_export import meets_targets
from edgereason.paired import mcnemar_exact


def _sheet(correct: list[bool]) -> AnswerSheet:
    return AnswerSheet(answers=["1"] * len(correct), valid=[True] * len(correct), correct=correct, texts=[""] * len(correct))


def test_a_paired_sheet_counts_what_each_side_alone_solved():
    merged = _sheet([True] * 10 + [False] * 10)
    quant = _sheet([True] * 4 + [False] * 6 + [True] * 2 + [False] * 8)
    acc = quant.paired(merged)
    assert acc["problems"] == 20 and acc["accuracy"] == 0.3 and acc["reference_accuracy"] == 0.5
    assert acc["drop_points"] == 20.0 and acc["only_reference"] == 6 and acc["only_it"] == 2
    assert acc["p_value"] == mcnemar_exact(quant.correct, merged.correct)[2]


@pytest.mark.parametrize(("drop", "only_ref", "only_it", "p", "missed"), [
    (1.0, 3, 0, 0.25, None),                     # within the bound, not significant: passes
    (-4.0, 0, 12, 0.0005, None),                 # more accurate than the merged model: passes
    (5.0, 15, 0, 0.25, "points below"),          # beyond the bound
    (2.0, 10, 1, 0.012, "significantly below"),  # within the bound but significant
])
def test_the_accuracy_gate_bounds_the_drop_and_refuses_a_significant_loss(tmp_path, drop, only_ref, only_it, p, missed):
    cfg = GGUFExportConfig(out=tmp_path, target_accuracy_drop=3)
    ver = {"top1_agreement": 0.9, "mean_kl": 0.1, "accuracy": {"problems": 300, "accuracy": 0.4, "reference_accuracy": 0.4,
                                                                "drop_points": drop, "only_reference": only_ref,
                                                                "only_it": only_it, "p_value": p}}
    got = meets_targets(ver, cfg)
    assert (got == []) if missed is None else (len(got) == 1 and missed in got[0])
    assert meets_targets({"top1_agreement": 0.9, "mean_kl": 0.1}, cfg) == ["no accuracy check"]
    assert meets_targets(ver, GGUFExportConfig(out=tmp_path)) == []  # no accuracy target: nothing gated on it


def test_the_accuracy_gate_refuses_a_test_set_and_takes_a_dev_split(tmp_path):
    for test_set in ("arith", "gsm8k", "logic", "data/arc/easy-test.jsonl"):
        with pytest.raises(ValueError, match="is a test set"):
            GGUFExportConfig(out=tmp_path, target_accuracy_drop=2, accuracy_data=test_set)
        with pytest.raises(ExportError, match="test set"):
            held_out_problems(test_set, 5)
    cfg = GGUFExportConfig(out=tmp_path, target_accuracy_drop=2, accuracy_data="arith-dev")
    assert cfg.gated
    problems = held_out_problems("arith-dev", 7)
    assert len(problems) == 7 and problems == held_out_problems("arith-dev", 7)  # the same problems every time
    with pytest.raises(ExportError, match="accuracy check: unknown benchmark"):
        held_out_problems("no-such-set", 5)
