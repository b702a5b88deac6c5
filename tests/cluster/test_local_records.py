"""A local run's records of its running units (``<run>/running/<stage>/<unit>.json``) leave no empty folders
behind (issue 16): the last unit of a stage to end takes its stage's folder, the last stage ``running/``."""

from __future__ import annotations

import orjson

from kun_hpc.cluster.scheduler import clear_local_records, record_local_end, record_local_start


def test_the_records_of_ended_units_leave_no_empty_folders(tmp_path):
    record_local_start(tmp_path, "upper", "upper-00000", 1, "a.err")
    record_local_start(tmp_path, "upper", "upper-00001", 2, "b.err")
    record_local_start(tmp_path, "reshard x -> 5 (merge)", "m00000", 3, "c.err")
    record_local_end(tmp_path, "upper", "upper-00000")
    assert sorted(p.name for p in (tmp_path / "running").iterdir()) == ["reshard_x_-_5_merge_", "upper"]
    record_local_end(tmp_path, "upper", "upper-00001")
    assert [p.name for p in (tmp_path / "running").iterdir()] == ["reshard_x_-_5_merge_"]
    record_local_end(tmp_path, "reshard x -> 5 (merge)", "m00000")
    assert not (tmp_path / "running").exists()


def test_clearing_the_records_of_a_gone_command_removes_their_folders(tmp_path):
    record_local_start(tmp_path, "upper", "upper-00000", 1, "a.err")
    record_local_start(tmp_path, "tag", "tag-00000", 2, "b.err")
    gone = tmp_path / "running" / "tag" / "tag-00000.json"
    gone.write_bytes(orjson.dumps({**orjson.loads(gone.read_bytes()), "driver": -1}))  # another command's
    clear_local_records(tmp_path)
    assert [p.name for p in (tmp_path / "running").iterdir()] == ["upper"]
    record_local_end(tmp_path, "upper", "upper-00000")
    assert not (tmp_path / "running").exists()
