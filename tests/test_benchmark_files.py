"""The benchmarks' result files are written whole or not at all: a run stopped mid-write keeps the previous file."""
import json
from pathlib import Path

import pytest


@pytest.fixture
def common(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import common

    return common


def test_write_results_writes_json_and_markdown(common, tmp_path, capsys):
    common.write_results(tmp_path / "new", "speed", {"rows": [1, 2]}, "| a |\n", show=False)
    assert json.loads((tmp_path / "new" / "speed.json").read_text()) == {"rows": [1, 2]}
    assert (tmp_path / "new" / "speed.md").read_text() == "| a |\n" and capsys.readouterr().out == ""
    common.write_results(tmp_path / "new", "speed", {}, "| b |")
    assert capsys.readouterr().out == "| b |\n"


def test_a_write_stopped_midway_keeps_the_old_file(common, tmp_path, monkeypatch):
    target = tmp_path / "sweep.json"
    common.write_text(target, '{"rows": "old"}')

    def stopped(self, text):  # half the text reaches the disk, then the run dies
        with open(self, "w") as f:
            f.write(text[: len(text) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", stopped)
    with pytest.raises(KeyboardInterrupt):
        common.write_text(target, json.dumps({"rows": list(range(100))}))
    assert target.read_text() == '{"rows": "old"}'
    assert [p.name for p in tmp_path.iterdir()] == ["sweep.json"]  # no temporary file left behind
