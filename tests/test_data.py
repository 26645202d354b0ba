import json

import pytest

from edgereason.arithmetic import generate_arithmetic
from edgereason.data import (
    DataError,
    Problem,
    dataset_hash,
    filter_by_level,
    is_eval_only,
    load_benchmark,
    load_table,
    sample_problems,
)
from edgereason.paths import data_dir


def test_shared_data_counts():
    assert len(load_benchmark("gsm8k")) == 1319
    assert len(load_benchmark("gsm8k-train")) == 7473
    assert len(load_benchmark("math500")) == 500
    assert len(load_benchmark("aime24")) == 30
    assert len(load_benchmark("amc23")) == 40


def test_gsm8k_gold_answers_are_final_numbers():
    problems = load_benchmark("gsm8k")
    assert problems[0].gold_answer == "18"
    assert all("####" not in p.gold_answer and "," not in p.gold_answer for p in problems)
    assert problems[0].source == "gsm8k" and problems[0].solution


def test_math500_levels_and_subjects():
    problems = load_benchmark("math500")
    assert {p.level for p in problems} == {1, 2, 3, 4, 5}
    hard = filter_by_level(problems, [4, 5])
    assert 0 < len(hard) < 500 and all((p.level or 0) >= 4 for p in hard)
    assert all(p.subject for p in problems)


def test_competition_answers_are_plain_strings():
    amc = load_benchmark("amc23")
    assert amc[0].gold_answer == "27"  # stored as 27.0 in the file
    assert all(p.question for p in load_benchmark("aime24"))


def test_data_dir_env_override(tmp_path, monkeypatch):
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text(json.dumps({"question": "1+1?", "answer": "1+1=2\n#### 2"}) + "\n")
    monkeypatch.setenv("EDGEREASON_DATA_DIR", str(tmp_path))
    assert data_dir() == tmp_path
    assert [p.gold_answer for p in load_benchmark("gsm8k")] == ["2"]


def test_bad_json_line_names_file_and_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"question": "a", "answer": "1"}\n{not json}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl, line 2: invalid JSON"):
        load_table(f)


def test_missing_column_names_the_field(tmp_path):
    f = tmp_path / "q.jsonl"
    f.write_text('{"question": "a", "answer": "1"}\n{"question": "b"}\n')
    with pytest.raises(DataError, match=r"line 2 \(field 'answer'\)"):
        load_table(f)


def test_gsm8k_without_final_answer(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text(json.dumps({"question": "q", "answer": "no marker"}) + "\n")
    with pytest.raises(DataError, match="line 1.*'answer'.*####"):
        load_benchmark("gsm8k", tmp_path)


def test_csv_and_parquet_with_column_mapping(tmp_path):
    csv_file = tmp_path / "mine.csv"
    csv_file.write_text("Q,A,lvl\nWhat is 2+2?,4,Level 3\nWhat is 3*3?,9,\n")
    problems = load_table(csv_file, question="Q", answer="A", level="lvl")
    assert [(p.question, p.gold_answer, p.level) for p in problems] == [("What is 2+2?", "4", 3), ("What is 3*3?", "9", None)]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq_file = tmp_path / "mine.parquet"
    pq.write_table(pa.table({"problem": ["x?"], "target": [12.0]}), pq_file)
    (p,) = load_benchmark(str(pq_file))
    assert (p.question, p.gold_answer) == ("x?", "12")


def test_unknown_benchmark_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown benchmark or file 'gsm9k'"):
        load_benchmark("gsm9k")


def test_sampling_is_seeded():
    problems = load_benchmark("gsm8k")
    a = sample_problems(problems, 10, seed=3)
    assert a == sample_problems(problems, 10, seed=3) and a != sample_problems(problems, 10, seed=4)
    assert sample_problems(problems, 5) == problems[:5]
    assert dataset_hash([Problem("e", "1+1", "2")]) != dataset_hash([Problem("h", "x", "7")])


def _evaluate_story(question: str) -> int:
    """Re-derive a generated problem's answer from its wording alone (an independent check)."""
    import re

    amount: int | None = None
    for sentence in re.split(r"(?<=[.?])\s+", question):
        n = [int(x) for x in re.findall(r"\d+", sentence)]
        if amount is None:
            amount = n[0] * n[1] if " in each" in sentence else n[0]
        elif re.search(r"gives away|loses|uses|sells", sentence):
            amount -= n[0]
        elif re.search(r"buys|finds|gives \w+ \d|gift", sentence):
            amount += n[0]
        elif "multiplied by" in sentence or "times as many" in sentence:
            amount *= n[-1]
        elif "equal" in sentence:
            amount //= n[0]
    assert amount is not None, question
    return amount


def test_arithmetic_generator_is_seeded_balanced_disjoint_and_right():
    a, b = generate_arithmetic(90, seed=5), generate_arithmetic(90, seed=5)
    assert [p.question for p in a] == [p.question for p in b]
    assert [p.question for p in generate_arithmetic(90, seed=6)] != [p.question for p in a]
    assert sorted({p.subject or "" for p in a}) == ["1-step", "2-step", "3-step"]
    assert all(sum(p.subject == s for p in a) == 30 for s in ("1-step", "2-step", "3-step"))
    for p in a:
        assert int(p.gold_answer) == _evaluate_story(p.question) >= 0, p.question
        # one known value per operation (a grouped start is one), the answer last: the steps reward's input
        assert len(p.meta["steps"]) == int((p.subject or "?")[0]) and p.meta["steps"][-1] == int(p.gold_answer)
    test, train = load_benchmark("arith"), load_benchmark("arith-train")
    assert len(test) == 600 and len(train) == 5000
    assert not {p.question for p in test} & {p.question for p in train}  # never train on the benchmark
    assert is_eval_only("arith") and not is_eval_only("arith-train")
    dev = load_benchmark("arith-dev")  # checkpoint selection: disjoint from both, and never trained on
    assert len(dev) == 300 and not {p.question for p in dev} & ({p.question for p in test} | {p.question for p in train})
    assert is_eval_only("arith-dev")


def test_arc_benchmarks_load_as_multiple_choice():
    easy, challenge = load_benchmark("arc-easy"), load_benchmark("arc-challenge")
    assert (len(easy), len(challenge)) == (2376, 1172)
    p = easy[0]
    assert p.choices and p.gold_answer in "ABCDE" and "A) " in p.prompt and p.source == "arc-easy"
    assert is_eval_only("arc-easy")
