"""/v1/files: upload, list, retrieve, content, delete, with the openai SDK and raw HTTP; team
scoping; bad uploads refused whole; the FileStore Python API other modules use."""

from __future__ import annotations

import io

import httpx
import pytest
from openai import NotFoundError, OpenAI

from gateway.files import FileNotFound, FileStore, FileTooLarge, InvalidFile
from tests.conftest import Gateway, GatewayFactory

BATCH_LINES = (b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'
               b'{"custom_id": "b", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n')


def _client(gw: Gateway, key: str | None = None) -> OpenAI:
    return OpenAI(base_url=gw.v1, api_key=key or gw.admin_key, max_retries=0)


def _upload(gw: Gateway, content: bytes, purpose: str | None = "batch",
            key: str | None = None, name: str = "in.jsonl", **extra: str) -> httpx.Response:
    data = {"purpose": purpose, **extra} if purpose is not None else extra
    return httpx.post(gw.v1 + "/files", headers=gw.headers(key), data=data,
                      files={"file": (name, content, "application/jsonl")}, timeout=30)


def test_sdk_round_trip(gw: Gateway) -> None:
    client = _client(gw)
    f = client.files.create(file=("requests.jsonl", io.BytesIO(BATCH_LINES)), purpose="batch")
    assert f.id.startswith("file-") and f.object == "file"
    assert (f.bytes, f.filename, f.purpose, f.status) == (len(BATCH_LINES), "requests.jsonl",
                                                          "batch", "processed")
    assert client.files.retrieve(f.id).id == f.id
    assert client.files.content(f.id).read() == BATCH_LINES
    listed = client.files.list(purpose="batch")
    assert [x.id for x in listed.data] == [f.id]
    assert client.files.list(purpose="fine-tune").data == []
    deleted = client.files.delete(f.id)
    assert deleted.deleted and deleted.id == f.id
    with pytest.raises(NotFoundError):
        client.files.retrieve(f.id)


def test_large_file_spans_chunks_and_comes_back_whole(gw: Gateway) -> None:
    line = b'{"messages": [{"role": "user", "content": "' + b"x" * 1000 + b'"}]}\n'
    content = line * 2500  # ~2.5 MB: three chunks
    r = _upload(gw, content, "fine-tune")
    assert r.status_code == 200, r.text
    got = httpx.get(gw.v1 + f"/files/{r.json()['id']}/content", headers=gw.headers(),
                    timeout=30)
    assert got.status_code == 200 and got.content == content


def test_other_teams_files_are_invisible(gw: Gateway) -> None:
    a, b = gw.create_key("team-a"), gw.create_key("team-b")
    fid = _upload(gw, BATCH_LINES, key=a).json()["id"]
    for path in (f"/files/{fid}", f"/files/{fid}/content"):
        r = httpx.get(gw.v1 + path, headers=gw.headers(b), timeout=10)
        assert r.status_code == 404 and r.json()["error"]["code"] == "file_not_found"
    assert httpx.delete(gw.v1 + f"/files/{fid}", headers=gw.headers(b)).status_code == 404
    assert httpx.get(gw.v1 + "/files", headers=gw.headers(b)).json()["data"] == []
    assert [f["id"] for f in httpx.get(gw.v1 + "/files", headers=gw.headers(a)).json()[
        "data"]] == [fid]
    assert httpx.get(gw.v1 + f"/files/{fid}", headers=gw.headers(a)).status_code == 200


def test_paging(gw: Gateway) -> None:
    ids = [_upload(gw, BATCH_LINES).json()["id"] for _ in range(3)]
    page = httpx.get(gw.v1 + "/files", params={"limit": 2}, headers=gw.headers()).json()
    assert page["has_more"] is True and len(page["data"]) == 2
    rest = httpx.get(gw.v1 + "/files", params={"limit": 2, "after": page["last_id"]},
                     headers=gw.headers()).json()
    assert rest["has_more"] is False
    assert {f["id"] for f in page["data"] + rest["data"]} == set(ids)


@pytest.mark.parametrize(("content", "purpose", "param", "needle"), [
    (BATCH_LINES, None, "purpose", "purpose"),
    (BATCH_LINES, "training", "purpose", "purpose"),
    (b'{"ok": 1}\n{not json}\n', "batch", "file", "Line 2"),
    (b'{"ok": 1}\n[1, 2]\n', "fine-tune", "file", "Line 2"),
    (b"", "batch", "file", "empty"),
])
def test_bad_uploads_are_refused_whole(gw: Gateway, content: bytes, purpose: str | None,
                                       param: str, needle: str) -> None:
    r = _upload(gw, content, purpose)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and needle in err["message"]
    assert httpx.get(gw.v1 + "/files", headers=gw.headers()).json()["data"] == []


def test_not_multipart_and_missing_file(gw: Gateway) -> None:
    r = gw.post("/v1/files", {"purpose": "batch"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_content_type"
    r = httpx.post(gw.v1 + "/files", headers=gw.headers(), data={"purpose": "batch"},
                   files={"other": ("x", b"y")})
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"
    r = _upload(gw, BATCH_LINES, **{"expires_after[anchor]": "created_at",
                                   "expires_after[seconds]": "5"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "expires_after.seconds"


def test_size_limit(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(files_max_bytes=1000)
    r = _upload(gw, b'{"a": "' + b"x" * 2000 + b'"}\n', "batch")
    assert r.status_code == 413 and r.json()["error"]["code"] == "file_too_large"
    assert httpx.get(gw.v1 + "/files", headers=gw.headers()).json()["data"] == []
    assert _upload(gw, BATCH_LINES).status_code == 200


def test_no_key_no_upload(gw: Gateway) -> None:
    r = httpx.post(gw.v1 + "/files", data={"purpose": "batch"},
                   files={"file": ("x.jsonl", BATCH_LINES)})
    assert r.status_code == 401


def test_python_api(gw: Gateway) -> None:
    store = FileStore(gw.engine, max_bytes=10_000, chunk_bytes=16)
    rec = store.create("team-x", "d.jsonl", "fine-tune", BATCH_LINES)
    assert store.open_bytes("team-x", rec.id) == BATCH_LINES
    assert b"".join(store.iter_chunks("team-x", rec.id)) == BATCH_LINES
    with pytest.raises(FileNotFound):
        store.open_bytes("team-y", rec.id)
    with pytest.raises(FileNotFound):
        store.open_bytes("team-x", "file-nope")
    with pytest.raises(FileTooLarge):
        store.create("team-x", "big.bin", "user_data", io.BytesIO(b"x" * 10_001))
    with pytest.raises(InvalidFile) as e:
        store.create("team-x", "bad.jsonl", "batch", b'{"a": 1}\n\n"str"\n')
    assert e.value.line == 3
    assert [r.id for r in store.list("team-x")[0]] == [rec.id]
