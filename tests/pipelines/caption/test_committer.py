"""The driver side of the job: per-shard commits from an interleaved result stream, and retry merges."""

from __future__ import annotations

from pyratok.core.dataset import caption_sidecar_uri
from pyratok.core.storage import Storage
from pyratok.pipelines.caption import sidecars
from pyratok.pipelines.caption.job import ShardCommitter, ShardTask


def row(shard: str, key: str, expected: int, error: str = "", caption: str = "") -> dict:
    return {"shard": shard, "key": key, "expected": expected, "caption": caption or f"caption of {key}", "fields": "{}",
            "generated_tokens": 5, "truncated": False, "frames": 4, "stage": "decode" if error else "", "error": error,
            "detail": "bad" if error else ""}  # fmt: skip


def test_shards_commit_as_soon_as_complete_even_interleaved_and_duplicated(tmp_path):
    storage, root, v = Storage(), str(tmp_path), "0123456789abcdef"
    tasks = [ShardTask("a", "a.tar"), ShardTask("b", "b.tar"), ShardTask("empty", "empty.tar")]
    c = ShardCommitter(storage, root, v, tasks, samples_to_keep=2)
    c.add(row("a", "a1", 2))
    c.add(row("b", "b1", 2, error="undecodable"))
    c.add(row("a", "a1", 2))  # a retried Ray task may deliver a row twice
    assert not c.committed
    c.add(row("a", "a2", 2))
    assert c.committed == {"a"}
    assert sidecars.load_captions(storage, root, v, shard="a") == {"a1": "caption of a1", "a2": "caption of a2"}
    c.add(row("b", "b2", 2))
    c.finish()
    assert c.committed == {"a", "b", "empty"}
    assert (c.clips, c.captioned, c.failed, dict(c.reasons)) == (4, 3, 1, {"undecodable": 1})
    assert sidecars.load_captions(storage, root, v, shard="empty") == {}
    ledger = sidecars.read_failures(storage, root, v, "b")
    assert list(ledger["key"]) == ["b1"] and ledger["reason"][0] == "undecodable"
    assert [s["key"] for s in c.samples] == ["a1", "a2"]


def test_retry_merges_into_the_sidecar_and_shrinks_the_ledger(tmp_path):
    storage, root, v = Storage(), str(tmp_path), "0123456789abcdef"
    first = ShardCommitter(storage, root, v, [ShardTask("a", "a.tar")], samples_to_keep=0)
    for r in (row("a", "a1", 3), row("a", "a2", 3, error="undecodable"), row("a", "a3", 3, error="model_error")):
        first.add(r)
    assert set(sidecars.read_failures(storage, root, v, "a")["key"]) == {"a2", "a3"}
    retry = ShardCommitter(storage, root, v, [ShardTask("a", "a.tar", retry_keys=["a2", "a3"])], samples_to_keep=0)
    retry.add(row("a", "a2", 2, caption="fixed a2"))
    retry.add(row("a", "a3", 2, error="repetition_loop"))
    assert sidecars.load_captions(storage, root, v, shard="a") == {"a1": "caption of a1", "a2": "fixed a2"}
    ledger = sidecars.read_failures(storage, root, v, "a")
    assert list(ledger["key"]) == ["a3"] and list(ledger["reason"]) == ["repetition_loop"]
    frame = storage.read_parquet(caption_sidecar_uri(root, v, "a"))
    assert list(frame["key"]) == ["a1", "a2"] and frame["generated_tokens"].dtype.kind == "i"
