import json

import pytest

from edgereason.data import (
    DataError,
    Problem,
    dataset_hash,
    filter_by_level,
    filter_by_pass_rate,
    load_benchmark,
    load_table,
    measure_pass_rates,
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
    assert 0 < len(hard) < 500 and all(p.level >= 4 for p in hard)
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


def test_sampling_and_pass_rate_filter():
    problems = load_benchmark("gsm8k")
    a = sample_problems(problems, 10, seed=3)
    assert a == sample_problems(problems, 10, seed=3) and a != sample_problems(problems, 10, seed=4)
    assert sample_problems(problems, 5) == problems[:5]
    easy, hard = Problem("e", "1+1", "2"), Problem("h", "x", "7")
    # A real "model": answers 2 to everything; the pre-pass measures what it solves.
    rates = measure_pass_rates([easy, hard], lambda p, k: ["<answer>2</answer>"] * k, k=4)
    assert rates == {"e": 1.0, "h": 0.0}
    assert filter_by_pass_rate([easy, hard], rates, max_rate=0.25) == [hard]
    assert dataset_hash([easy]) != dataset_hash([hard])
