"""common.py: the plumbing's promises to a user with a damaged file: a log line cut by a kill is dropped
and said, a checkpoint missing an entry or holding NaN weights is named, an output path that cannot be
made is an InputError before any work."""
import json

import pytest
import torch

import common


def test_keep_lines_drops_a_line_cut_by_a_kill_and_says_so(tmp_path, capsys):
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "rew')          # killed while appending step 3
    common.keep_lines(str(log), lambda r: r["step"] <= 1)
    assert [json.loads(x) for x in log.read_text().splitlines()] == [{"step": 1}]
    assert "dropped 1 damaged line" in capsys.readouterr().out


def test_load_state_refuses_non_finite_weights_and_entries_names_the_file(tmp_path):
    net = torch.nn.Linear(2, 2)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["bias"][0] = float("nan")
    with pytest.raises(common.CheckpointError, match=r"w\.pt: 1 tensors hold NaN or inf \(e\.g\. bias\)"):
        common.load_state(net, state, "w.pt")
    assert torch.isfinite(net.bias).all()                                 # nothing was loaded
    with pytest.raises(common.CheckpointError, match=r"c\.pt: incomplete, or written by other code \(KeyError: 'vocab'"):
        with common.entries("c.pt"):
            {"model": {}}["vocab"]
    with pytest.raises(common.InputError, match=r"^kept as it is$"):       # our own errors pass through unchanged
        with common.entries("c.pt"):
            raise common.InputError("kept as it is")


def test_an_output_path_under_a_file_is_an_input_error(tmp_path):
    (tmp_path / "f").write_text("a file")
    with pytest.raises(common.InputError, match=r"--out .*f/x\.pt: cannot make its folder, .*f is a file"):
        common.output_path(str(tmp_path / "f" / "x.pt"), "--out")


def test_an_output_is_checked_before_any_work_and_never_replaces_another_kind_of_file(tmp_path, monkeypatch):
    """A trained model's --out is a .pt that holds nothing or a checkpoint of its own kind (a slip of --out must
    not replace a dataset's Mean.npy or another model); a folder that cannot be written is said before training."""
    with pytest.raises(common.InputError, match=r"--out .*Mean\.npy: must end in \.pt"):
        common.output_path(str(tmp_path / "Mean.npy"), "--out", kind="generator")
    torch.save({"kind": "evaluator"}, tmp_path / "ev.pt")
    with pytest.raises(common.InputError, match=r"ev\.pt: holds a 'evaluator' checkpoint, not a generator"):
        common.output_path(str(tmp_path / "ev.pt"), "--out", kind="generator")
    assert common.output_path(str(tmp_path / "ev.pt"), "--out", kind="evaluator")    # retraining it: allowed

    def read_only(*a, **k):
        raise OSError(30, "Read-only file system")
    monkeypatch.setattr(common.tempfile, "TemporaryFile", read_only)
    with pytest.raises(common.InputError, match=r"--runs .*new/r: .* cannot be written \(Read-only file system\)"):
        common.writable(str(tmp_path / "new" / "r"), "--runs")
    assert not (tmp_path / "new").exists()
    with pytest.raises(common.InputError, match=r"--out: an empty path"):
        common.writable("", "--out")
