import json

from dlsjax import checkpoint


def test_trim_epoch_log_drops_records_past_the_checkpoint(tmp_path):
  path = tmp_path / "metrics.jsonl"
  records = [{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.5}]
  # Epoch 2 recorded, then the run was killed before its checkpoint, mid-write of a third line.
  path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"epoch": 3, "lo')
  assert checkpoint.trim_epoch_log(path, 1) == 2
  assert [json.loads(x) for x in path.read_text().splitlines()] == records[:1]
  assert checkpoint.trim_epoch_log(path, 1) == 0  # nothing more to drop
  assert checkpoint.trim_epoch_log(tmp_path / "missing.jsonl", 0) == 0
