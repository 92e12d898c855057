"""Storage semantics, identical for a local folder and a real S3 endpoint (moto on 127.0.0.1)."""

import pytest

from pyratok.core.storage import Storage, StorageConfig, join


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return Storage(), str(tmp_path / "root")
    storage = request.getfixturevalue("s3_storage")
    return storage, join(request.getfixturevalue("s3_bucket"), "prefix")


pytestmark = pytest.mark.integration


def test_write_read_list_delete_roundtrip(root):
    storage, base = root
    storage.write_bytes(join(base, "a", "x.bin"), b"123")
    storage.write_json(join(base, "a", "y.json"), {"k": 1})
    storage.write_text(join(base, "b.txt"), "hello")
    assert storage.read_bytes(join(base, "a", "x.bin")) == b"123"
    assert storage.read_json(join(base, "a", "y.json")) == {"k": 1}
    assert storage.exists(join(base, "b.txt")) and not storage.exists(join(base, "nope"))
    assert storage.size(join(base, "a", "x.bin")) == 3
    assert [u.rsplit("/", 1)[-1] for u in storage.list(join(base, "a"))] == ["x.bin", "y.json"]
    assert storage.list(base, suffix=".txt") == [join(base, "b.txt")]
    assert len(storage.list(base, recursive=False)) == 1
    storage.delete(join(base, "b.txt"))
    assert not storage.exists(join(base, "b.txt"))
    assert storage.delete_prefix(base) == 2
    assert storage.list(base) == []


def test_atomic_write_leaves_nothing_on_error(root):
    storage, base = root
    target = join(base, "shard.tar")
    with pytest.raises(RuntimeError):
        with storage.atomic_write(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer killed")
    assert not storage.exists(target)
    assert storage.list(base) == []
    with storage.atomic_write(target) as tmp:
        tmp.write_bytes(b"whole")
    assert storage.read_bytes(target) == b"whole"


def test_missing_object_is_file_not_found_naming_the_uri(root):
    storage, base = root
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        storage.read_bytes(join(base, "missing.bin"))


def test_local_copy_and_parquet(root, tmp_path):
    import pandas as pd

    storage, base = root
    frame = pd.DataFrame({"key": ["a", "b"], "n": [1, 2]})
    storage.write_parquet(join(base, "t.parquet"), frame)
    pd.testing.assert_frame_equal(storage.read_parquet(join(base, "t.parquet")), frame)
    with storage.local_copy(join(base, "t.parquet")) as path:
        assert pd.read_parquet(path).equals(frame)
    fs, path = storage.pyarrow_filesystem(join(base, "t.parquet"))
    import pyarrow.parquet as pq

    assert pq.read_table(path, filesystem=fs).num_rows == 2


def test_upload_download_dir(root, tmp_path):
    storage, base = root
    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (src / "sub" / "w.bin").write_bytes(b"w")
    storage.upload_dir(src, join(base, "model"))
    out = storage.download_dir(join(base, "model"), tmp_path / "back")
    assert (out / "config.json").read_text() == "{}" and (out / "sub" / "w.bin").read_bytes() == b"w"


def test_endpoint_with_credentials_is_rejected():
    with pytest.raises(ValueError, match="credentials"):
        StorageConfig(endpoint_url="http://key:secret@host:9000")


def test_storage_pickles_without_client(s3_storage):
    import pickle

    s3_storage.client  # noqa: B018 - build the client, then make sure it is not pickled
    clone = pickle.loads(pickle.dumps(s3_storage))
    assert clone._client is None and clone.config == s3_storage.config


def test_s3_folder_markers_are_not_files(s3_storage, s3_bucket, tmp_path):
    """pyarrow (Ray Train's checkpoint writer) and S3 consoles create ``folder/`` marker objects."""
    base = join(s3_bucket, "ckpt")
    bucket = s3_bucket[len("s3://") :]
    s3_storage.client.put_object(Bucket=bucket, Key="ckpt/model/", Body=b"")
    s3_storage.write_text(join(base, "model", "config.json"), "{}")
    assert s3_storage.list(join(base, "model")) == [join(base, "model", "config.json")]
    out = s3_storage.download_dir(join(base, "model"), tmp_path / "model")
    assert (out / "config.json").read_text() == "{}"
