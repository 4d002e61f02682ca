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


def test_config_diff_names_changed_fields_only():
  from dlsjax import checkpoint

  saved = {"search.w_lr": 0.025, "search.parallel": "pmap", "model.k_r": 2, "old.field": 1}
  now = {"search.w_lr": 0.5, "search.parallel": "shard_map", "model.k_r": 2, "train.new": 0.0}
  # parallel may change; a field added (or removed) since the run was written is not a change.
  assert checkpoint.config_diff(saved, now) == {"search.w_lr": (0.025, 0.5)}
