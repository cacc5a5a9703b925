"""Paired comparison of two quality runs (kanade_stream.evaluation.compare): known differences, no difference,
clips that do not pair, and the command line's errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kanade_stream.evaluation.compare import compare, load_items, paired_rows

ROOT = Path(__file__).resolve().parents[1]


def write_run(folder: Path, errors: list[int], words: int = 10, sim=0.5, row="student-stream-vc") -> Path:
    items = [{"row": row, "voice": "rms", "text": f"sentence {i}", "target": "slt", "errors": e, "words": words,
              "sim_source": sim - 0.1, "sim_target": sim} for i, e in enumerate(errors)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "quality.json").write_text(json.dumps({"items": items}))
    return folder


def test_identical_runs_differ_by_exactly_nothing(tmp_path):
    run = write_run(tmp_path / "a", [3, 5, 0, 7, 2, 9])
    pairs = paired_rows(load_items([run]), load_items([run]))["student-stream-vc"]
    for metric in ("wer", "sim_target", "tgt_minus_src"):
        r = compare(pairs, metric)
        assert r["delta"] == 0 and r["low"] == 0 and r["high"] == 0, (metric, r)
    assert compare(pairs, "wer")["a"] == pytest.approx(26 / 60)


def test_a_consistent_gain_is_outside_the_noise_and_a_mixed_one_is_not(tmp_path):
    a = write_run(tmp_path / "a", [6] * 20)
    better = write_run(tmp_path / "better", [4] * 20, sim=0.6)
    mixed = write_run(tmp_path / "mixed", [2, 10] * 10)  # the same WER overall, clip by clip all over the place
    r = compare(paired_rows(load_items([a]), load_items([better]))["student-stream-vc"], "wer")
    assert r["delta"] == pytest.approx(-0.2) and r["high"] < 0
    s = compare(paired_rows(load_items([a]), load_items([better]))["student-stream-vc"], "sim_target")
    assert s["delta"] == pytest.approx(0.1) and s["low"] > 0
    m = compare(paired_rows(load_items([a]), load_items([mixed]))["student-stream-vc"], "wer")
    assert m["delta"] == pytest.approx(0) and m["low"] < 0 < m["high"]


def test_only_clips_both_sides_judged_are_paired(tmp_path):
    a = write_run(tmp_path / "a", [1, 2, 3, 4])
    b = write_run(tmp_path / "b", [1, 2])
    assert len(paired_rows(load_items([a]), load_items([b]))["student-stream-vc"]) == 2


def test_the_same_clip_twice_on_one_side_is_refused(tmp_path):
    run = write_run(tmp_path / "a", [1, 2])
    with pytest.raises(ValueError, match="already in another file"):
        load_items([run, run])


def test_command_line_errors_name_the_problem(tmp_path):
    a = write_run(tmp_path / "a", [1, 2], row="teacher-resynth")
    b = write_run(tmp_path / "b", [1, 2], row="student-resynth")
    script = str(ROOT / "benchmarks" / "compare_quality.py")
    out = subprocess.run([sys.executable, script, "--a", str(a), "--b", str(b)], capture_output=True, text=True)
    assert out.returncode == 2 and "share no clip" in out.stderr
    out = subprocess.run([sys.executable, script, "--a", str(tmp_path / "nowhere"), "--b", str(b)],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "no quality.json" in out.stderr
    ok = subprocess.run([sys.executable, script, "--a", str(a), "--b", str(a)], capture_output=True, text=True)
    assert ok.returncode == 0 and "| teacher-resynth | wer | 2 |" in ok.stdout
