"""Pure parts of groups and staging: shard balancing, ranking, packing policy."""

from __future__ import annotations

import pytest

from gpubot.engine.staging import SourceFile, should_pack
from gpubot.groups.results import rank_runs
from gpubot.groups.shards import balance_shards
from gpubot.groups.submit import new_group_id
from gpubot.templates import TargetMode


class TestBalanceShards:
    def test_every_file_lands_in_exactly_one_shard(self) -> None:
        files = [(f"doc-{i:03d}.pdf", 1000 + 37 * i) for i in range(40)]
        shards = balance_shards(files, 4)
        assert len(shards) == 4
        flat = [name for shard in shards for name in shard]
        assert sorted(flat) == sorted(name for name, _ in files)
        assert len(flat) == len(set(flat))

    def test_bytes_are_balanced_greedy_largest_first(self) -> None:
        files = [("a", 10), ("b", 7), ("c", 6), ("d", 5), ("e", 4), ("f", 1)]
        shards = balance_shards(files, 2)
        sizes = dict(files)
        totals = sorted(sum(sizes[n] for n in shard) for shard in shards)
        # largest-first: a->0, b->1, c->1 (7<10), d->0, e->1, f->0 : 16 / 17
        assert totals == [16, 17]
        assert shards == [["a", "d", "f"], ["b", "c", "e"]]

    def test_one_huge_file_gets_its_own_shard(self) -> None:
        shards = balance_shards([("big", 1000), ("s1", 1), ("s2", 1), ("s3", 1)], 2)
        assert ["big"] in shards and ["s1", "s2", "s3"] in shards

    def test_more_shards_than_files_leaves_empty_shards(self) -> None:
        assert balance_shards([("a", 1), ("b", 2)], 4) == [["b"], ["a"], [], []]

    def test_rejects_bad_input(self) -> None:
        with pytest.raises(ValueError):
            balance_shards([("a", 1)], 0)
        with pytest.raises(ValueError):
            balance_shards([("a", 1), ("a", 2)], 2)


class TestRanking:
    def test_min_and_max_with_missing_metrics_last(self) -> None:
        rows = [
            {"job_id": "j1", "metric": 0.5},
            {"job_id": "j2", "metric": None},
            {"job_id": "j3", "metric": 0.1},
        ]
        assert [r["job_id"] for r in rank_runs(rows, TargetMode.MIN)] == ["j3", "j1", "j2"]
        assert [r["job_id"] for r in rank_runs(rows, TargetMode.MAX)] == ["j1", "j3", "j2"]


def test_group_ids_fit_the_message_column_and_follow_the_request_key() -> None:
    gid = new_group_id("slack:T1:123")
    assert gid.startswith("g-") and len(gid) == 10
    assert new_group_id("slack:T1:123") == gid
    assert new_group_id("other") != gid
    assert len(new_group_id()) == 10


class TestPackingPolicy:
    def test_many_or_small_files_are_packed(self) -> None:
        mb = 1024 * 1024
        assert should_pack([SourceFile(f"f{i}", 2 * mb) for i in range(51)])
        assert should_pack([SourceFile("a", 1000), SourceFile("b", 2000)])
        assert not should_pack([SourceFile("a", 2 * mb), SourceFile("b", mb)])
        assert not should_pack([])
