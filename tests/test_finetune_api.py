"""OpenAI's fine-tuning API on the bundled engine, end to end through the `openai` SDK: files,
jobs, events, checkpoints; a job that learns a small mapping on a tiny random model while the
base keeps its answers; team isolation; bad input refused before a job exists; a restart that
resumes from the newest checkpoint; training charged to the team's budget."""

from __future__ import annotations

import io
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
import sqlalchemy as sa

from backends.engine.checkpoint import write_tiny_checkpoint
from tests.conftest import Gateway, GatewayFactory
from tests.ui_support import sign_in

ENGINE_OPTS = {"kv_cache_gb": 0.02, "max_num_seqs": 8, "token_budget": 64, "device": "cpu",
               "dtype": "float32"}
PAIRS = [("apple", "red"), ("sky", "blue"), ("grass", "green"), ("snow", "white")]
# Enough for the tiny random model to learn PAIRS (about 2 s of CPU here).
LEARN = {"n_epochs": 30, "batch_size": 4, "learning_rate_multiplier": 10}
# A job that runs for a while (OpenAI caps n_epochs at 50): 24 examples, one per step.
LONG = {"n_epochs": 50, "batch_size": 1, "learning_rate_multiplier": 2}
LONG_STEPS = 24 * 50


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny-llama"
    write_tiny_checkpoint(path, family="llama")
    return path


def pool(checkpoint: Path, fake_url: str) -> list[dict[str, Any]]:
    return [
        {"name": "local", "kind": "engine", "model": str(checkpoint), "engine": ENGINE_OPTS},
        {"name": "fake-small", "kind": "openai", "model": "up-small", "base_url": fake_url,
         "price": {"input_per_1m": 0.5, "output_per_1m": 1.5}},
    ]


def jsonl(pairs: list[tuple[str, str]]) -> bytes:
    return b"\n".join(orjson.dumps({"messages": [
        {"role": "system", "content": "Answer with one colour."},
        {"role": "user", "content": q}, {"role": "assistant", "content": a}]})
        for q, a in pairs) + b"\n"


def client(gw: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.v1, api_key=key, max_retries=0)


def upload(c: openai.OpenAI, data: bytes, name: str = "train.jsonl",
           purpose: str = "fine-tune") -> str:
    return c.files.create(file=(name, io.BytesIO(data)), purpose=purpose).id  # type: ignore[arg-type]


def ask(c: openai.OpenAI, model: str, question: str) -> str:
    r = c.chat.completions.create(
        model=model, temperature=0, max_tokens=4,
        messages=[{"role": "system", "content": "Answer with one colour."},
                  {"role": "user", "content": question}])
    return r.choices[0].message.content or ""


def wait_status(c: openai.OpenAI, job_id: str, statuses: set[str],
                timeout: float = 180.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        job = c.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job.status} after {timeout} s")
        time.sleep(0.1)


def create_job(c: openai.OpenAI, train: str, valid: str | None = None, suffix: str = "colors",
               **hyper: Any) -> Any:
    return c.fine_tuning.jobs.create(
        model="local", training_file=train, validation_file=valid, suffix=suffix,
        method={"type": "supervised", "supervised": {"hyperparameters": {**LEARN, **hyper}}})


def gateway(make_gateway: GatewayFactory, checkpoint: Path, fake_url: str,
            **overrides: Any) -> Gateway:
    return make_gateway(pool=pool(checkpoint, fake_url), energy_meter="none", **overrides)


def test_sdk_job_learns_the_mapping_and_the_base_is_unchanged(
        make_gateway: GatewayFactory, checkpoint: Path, fake_url: str) -> None:
    gw = gateway(make_gateway, checkpoint, fake_url)
    c = client(gw, gw.create_key("team-a"))
    before = {q: ask(c, "local", q) for q, _ in PAIRS}
    assert any(before[q] != a for q, a in PAIRS)  # the random base does not know it already
    train, valid = upload(c, jsonl(PAIRS)), upload(c, jsonl(PAIRS), "valid.jsonl")
    job = create_job(c, train, valid)
    assert job.object == "fine_tuning.job" and job.model == "local"
    assert job.status in ("queued", "running") and job.fine_tuned_model is None
    assert job.training_file == train and job.validation_file == valid
    assert job.hyperparameters.n_epochs == 30 and job.hyperparameters.batch_size == 4

    done = wait_status(c, job.id, {"succeeded", "failed", "cancelled"})
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:local:colors:{job.id[-8:]}"
    assert done.trained_tokens and done.trained_tokens > 0 and done.finished_at

    events = list(c.fine_tuning.jobs.list_events(job.id, limit=100))
    metrics = sorted((e.data for e in events if e.type == "metrics"),
                     key=lambda d: d["step"])  # type: ignore[index]
    losses = [d["train_loss"] for d in metrics if d["train_loss"] is not None]  # type: ignore[index]
    assert len(losses) >= 10
    assert losses[-1] < 0.5 * losses[0]  # train loss falls well below the start
    assert any(d["valid_loss"] is not None for d in metrics)  # type: ignore[index]
    g = done.model_extra["greengate"]  # type: ignore[index]
    assert g["valid_loss"] < g["base_valid_loss"]
    assert g["energy_source"].startswith("estimated:")  # no meter here: labelled estimate
    assert g["energy_j"] > 0
    assert any("successfully completed" in e.message for e in events)

    # Read again: the status turns succeeded before the results file is attached (that event
    # comes after it).
    done = c.fine_tuning.jobs.retrieve(job.id)
    assert len(done.result_files) == 1  # OpenAI's per-step metrics CSV, in the file store
    csv = c.files.content(done.result_files[0]).text.splitlines()
    assert csv[0] == "step,train_loss,valid_loss,tokens_trained" and len(csv) == len(metrics) + 1
    with pytest.raises(openai.NotFoundError):  # the team's own file
        client(gw, gw.create_key("team-b")).files.content(done.result_files[0])

    cps = c.fine_tuning.jobs.checkpoints.list(job.id).data
    assert cps and cps[0].step_number == 30  # newest first, checkpoint_every 20 + the final
    assert cps[0].fine_tuned_model_checkpoint.startswith(done.fine_tuned_model)
    assert [j.id for j in c.fine_tuning.jobs.list().data] == [job.id]

    # The adapter answers the mapping; the base answers exactly as before.
    for q, a in PAIRS:
        assert ask(c, done.fine_tuned_model, q) == a
        assert ask(c, "local", q) == before[q]
    assert done.fine_tuned_model in [m.id for m in c.models.list().data]
    r = gw.post("/v1/chat/completions", {"model": done.fine_tuned_model, "max_tokens": 2,
                                         "messages": [{"role": "user", "content": "sky"}]},
                key=c.api_key)
    row = gw.decision(r.headers["x-request-id"])
    assert row["served_member"] == done.fine_tuned_model and row["status"] == 200


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "sqlite":
        return {}
    return {"database_url": request.getfixturevalue("pg_url")}


def test_team_isolation(make_gateway: GatewayFactory, checkpoint: Path, fake_url: str,
                        database: dict[str, Any]) -> None:
    gw = gateway(make_gateway, checkpoint, fake_url, **database)
    a, b = client(gw, gw.create_key("team-a")), client(gw, gw.create_key("team-b"))
    train = upload(a, jsonl(PAIRS))
    with pytest.raises(openai.NotFoundError):  # B cannot train on A's file
        create_job(b, train)
    job = create_job(a, train, n_epochs=5)
    done = wait_status(a, job.id, {"succeeded", "failed"})
    assert done.status == "succeeded", done.error
    for call in (lambda: b.fine_tuning.jobs.retrieve(job.id),
                 lambda: b.fine_tuning.jobs.cancel(job.id),
                 lambda: b.fine_tuning.jobs.list_events(job.id),
                 lambda: b.fine_tuning.jobs.checkpoints.list(job.id),
                 lambda: ask(b, done.fine_tuned_model, "sky"),
                 lambda: b.models.retrieve(done.fine_tuned_model)):
        with pytest.raises(openai.NotFoundError):
            call()
    assert b.fine_tuning.jobs.list().data == []
    assert done.fine_tuned_model not in [m.id for m in b.models.list().data]
    assert done.fine_tuned_model in [m.id for m in a.models.list().data]
    assert a.models.retrieve(done.fine_tuned_model).owned_by == "team-a"
    # `auto` may choose the adapter for its own team only.
    for key, team_sees in ((a.api_key, True), (b.api_key, False)):
        r = gw.post("/v1/chat/completions", {"model": "auto", "max_tokens": 2, "messages": [
            {"role": "user", "content": "sky"}]}, key=key)
        assert r.status_code == 200, r.text
        names = [cand["member"] for cand in gw.decision(r.headers["x-request-id"])["candidates"]]
        assert (done.fine_tuned_model in names) is team_sees


def _error(e: openai.APIStatusError) -> dict[str, Any]:
    return e.response.json()["error"]


def test_bad_input_is_a_400_naming_line_and_field_and_creates_no_job(
        make_gateway: GatewayFactory, checkpoint: Path, fake_url: str) -> None:
    gw = gateway(make_gateway, checkpoint, fake_url, finetune_max_file_bytes=2000)
    c = client(gw, gw.create_key("team-a"))
    good = jsonl(PAIRS[:2])
    lines = good.splitlines()
    bad_role = orjson.dumps({"messages": [{"role": "bot", "content": "hi"},
                                          {"role": "assistant", "content": "x"}]})
    no_answer = orjson.dumps({"messages": [{"role": "user", "content": "hi"}]})
    with pytest.raises(openai.BadRequestError) as e:  # the file store checks JSON lines
        upload(c, lines[0] + b"\n{not json\n")
    assert "Line 2" in _error(e.value)["message"]
    cases = [
        (b"\n".join([*lines, bad_role]), "training_file", "line 3, messages[0].role"),
        (b"\n".join([no_answer, *lines]), "training_file", "line 1, messages"),
        (b"\n".join([lines[0], orjson.dumps({"messages": []})]), "training_file",
         "line 2, messages"),
        (good * 30, "training_file", "over the fine-tuning limit"),
    ]
    for data, param, where in cases:
        fid = upload(c, data)
        with pytest.raises(openai.BadRequestError) as e:
            create_job(c, fid)
        err = _error(e.value)
        assert err["param"] == param and where in err["message"], err
    ok = upload(c, good)
    bad_valid = upload(c, b"\n".join([lines[0], bad_role]), "valid.jsonl")
    with pytest.raises(openai.BadRequestError) as e:
        create_job(c, ok, bad_valid)
    assert _error(e.value)["param"] == "validation_file"
    assert "line 2, messages[0].role" in _error(e.value)["message"]
    for kwargs, param in (
            ({"model": "no-such-model"}, "model"),
            ({"model": "fake-small"}, "model"),  # a member, but not on the bundled engine
            ({"method": {"type": "dpo"}}, "method.type"),
            ({"method": {"type": "supervised", "supervised": {
                "hyperparameters": {"n_epochs": 0}}}}, "method.supervised.hyperparameters."
             "n_epochs"),
            ({"suffix": "no spaces allowed"}, "suffix")):
        args = {"model": "local", "training_file": ok, **kwargs}
        with pytest.raises(openai.BadRequestError) as e:
            c.fine_tuning.jobs.create(**args)  # type: ignore[arg-type]
        assert _error(e.value)["param"] == param, _error(e.value)
    batch = upload(c, good, purpose="batch")
    with pytest.raises(openai.BadRequestError) as e:
        create_job(c, batch)
    assert _error(e.value)["code"] == "invalid_file_purpose"
    with pytest.raises(openai.BadRequestError):  # an empty file is refused at upload
        upload(c, b"")
    with pytest.raises(openai.NotFoundError):
        create_job(c, "file-doesnotexist")
    assert c.fine_tuning.jobs.list().data == []


def test_restart_mid_job_resumes_from_the_newest_checkpoint(
        make_gateway: GatewayFactory, checkpoint: Path, fake_url: str, tmp_path: Path) -> None:
    shared = {"database_url": f"sqlite:///{tmp_path}/restart.db",
              "state_dir": tmp_path / "state"}
    gw1 = gateway(make_gateway, checkpoint, fake_url, **shared)
    key = gw1.create_key("team-a")
    c1 = client(gw1, key)
    train = upload(c1, jsonl(PAIRS * 6))
    job = c1.fine_tuning.jobs.create(
        model="local", training_file=train, suffix="resume",
        method={"type": "supervised", "supervised": {"hyperparameters": {**LEARN, **LONG}}},
        extra_body={"greengate": {"checkpoint_every": 5}})
    deadline = time.monotonic() + 60
    while not c1.fine_tuning.jobs.checkpoints.list(job.id).data:
        assert time.monotonic() < deadline, "no checkpoint in 60 s"
        time.sleep(0.05)
    gw1.server.stop()  # mid-job: the database and the checkpoints on disk stay
    with gw1.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT status FROM fine_tuning_jobs WHERE id = :id"),
                            {"id": job.id}).scalar_one() == "running"
        # Every checkpoint on disk is in SQL (reports are drained after the engine stops).
        resumed_at = conn.execute(sa.text(
            "SELECT max(step_number) FROM fine_tuning_checkpoints WHERE job_id = :id"),
            {"id": job.id}).scalar_one()
    # The engine resumes from its newest checkpoint on disk (one written by the training
    # slice in flight at shutdown may not have been reported).
    on_disk = max(int(d.name.split("-")[1]) for d in (
        tmp_path / "state" / "finetune" / job.id).glob("step-*"))
    assert on_disk >= resumed_at

    gw2 = gateway(make_gateway, checkpoint, fake_url, **shared)
    c2 = client(gw2, key)
    assert 0 < resumed_at < LONG_STEPS
    done = wait_status(c2, job.id, {"succeeded", "failed", "cancelled"}, timeout=300)
    assert done.status == "succeeded", done.error
    messages = [e.message for e in c2.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert any(m.startswith("Gateway restarted") and f"step {resumed_at})" in m
               for m in messages), messages
    assert any(f"resumed from checkpoint step-{on_disk} " in m for m in messages), messages
    assert done.model_extra["greengate"]["step"] == LONG_STEPS  # type: ignore[index]
    for q, a in PAIRS:
        assert ask(c2, done.fine_tuned_model, q) == a


def engine_of(gw: Gateway) -> Any:
    return gw.server.server.config.app.state.rt.pool.members["local"].backend.engine


def training_jobs(engine: Any) -> list[str]:
    return [t["job_id"] for t in engine.stats()["training"]]


def test_cancel_frees_the_job(make_gateway: GatewayFactory, checkpoint: Path,
                              fake_url: str) -> None:
    gw = gateway(make_gateway, checkpoint, fake_url)
    c = client(gw, gw.create_key("team-a"))
    job = create_job(c, upload(c, jsonl(PAIRS * 6)), **LONG)
    engine = engine_of(gw)
    assert job.id in training_jobs(engine)
    out = c.fine_tuning.jobs.cancel(job.id)
    assert out.status == "cancelled" and out.finished_at
    deadline = time.monotonic() + 10
    while training_jobs(engine):
        assert time.monotonic() < deadline, engine.stats()["training"]
        time.sleep(0.05)
    time.sleep(0.2)  # a late engine report must not undo the cancel
    job = c.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "cancelled" and job.fine_tuned_model is None
    assert any(e.message == "Job cancelled" for e in c.fine_tuning.jobs.list_events(job.id))
    with pytest.raises(openai.BadRequestError):
        c.fine_tuning.jobs.cancel(job.id)
    assert job.id[-8:] not in " ".join(m.id for m in c.models.list().data)



def test_a_dead_training_process_fails_the_job_not_the_request(
        make_gateway: GatewayFactory, checkpoint: Path, fake_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from backends.engine.finetune.worker import WorkerDied

    gw = gateway(make_gateway, checkpoint, fake_url)
    c = client(gw, gw.create_key("team-a"))

    def died(*_: Any) -> None:
        raise WorkerDied("the training process exited (code -9)")

    monkeypatch.setattr(engine_of(gw), "start_training", died)
    job = create_job(c, upload(c, jsonl(PAIRS)), **LEARN)  # no 500: the job says what happened
    job = wait_status(c, job.id, {"failed"}, timeout=30)
    assert job.error.code == "engine_refused" and "code -9" in job.error.message
    assert any(e.message.startswith("Job failed") for e in c.fine_tuning.jobs.list_events(job.id))
    assert c.chat.completions.create(model="local", max_tokens=2, messages=[
        {"role": "user", "content": "still serving?"}]).choices  # the engine serves on

REDIS_URL = os.environ.get("GREENGATE_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture(params=["memory", "redis"])
def counters(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """Budget counters in this process, or shared through Redis (replicas' reservations)."""
    if request.param == "memory":
        yield {}
        return
    import redis

    prefix = f"gg-ft-{uuid.uuid4().hex[:8]}:"
    yield {"redis_url": REDIS_URL, "redis_prefix": prefix}
    r = redis.Redis.from_url(REDIS_URL)
    for k in r.scan_iter(f"{prefix}*"):
        r.delete(k)


def test_training_is_charged_to_the_team_budget(
        make_gateway: GatewayFactory, checkpoint: Path, fake_url: str,
        counters: dict[str, Any]) -> None:
    gw = gateway(make_gateway, checkpoint, fake_url, **counters)
    c = client(gw, gw.create_key("team-a"))  # the team exists before its budget
    r = gw.post("/admin/budgets", {"scope": "team", "subject": "team-a", "metric": "wh",
                                   "period": "day", "limit": 1e-7})
    assert r.status_code == 201, r.text
    train = upload(c, jsonl(PAIRS * 6))
    job = create_job(c, train, **LONG)
    # The first charges exhaust the tiny budget: training stops and says why.
    done = wait_status(c, job.id, {"succeeded", "failed", "cancelled"})
    assert done.status == "failed" and done.error.code == "budget_exceeded"
    # A slice in flight when the budget ran out still finishes and is charged after the job
    # is marked failed: the job's ledger and the team's counter agree once the engine let go.
    deadline = time.monotonic() + 30
    while True:
        g = c.fine_tuning.jobs.retrieve(job.id).model_extra["greengate"]  # type: ignore[index]
        budgets = httpx.get(gw.url + "/admin/budgets", headers=gw.headers()).json()
        spent = next(b for b in budgets if b["subject"] == "team-a")["spent"]
        settled = not training_jobs(engine_of(gw))
        if settled and spent == pytest.approx(g["energy_j"] / 3600, abs=1e-9):
            break  # the API rounds to 1e-9
        assert time.monotonic() < deadline, (spent, g["energy_j"] / 3600)
        time.sleep(0.1)
    assert g["energy_j"] > 0 and g["energy_source"].startswith("estimated:")
    assert g["step"] < LONG_STEPS and g["trained_tokens"] > 0  # stopped early
    with pytest.raises(openai.RateLimitError):  # the budget is spent: no new job
        create_job(c, train)


def test_jobs_pages(make_gateway: GatewayFactory, checkpoint: Path, fake_url: str) -> None:
    gw = gateway(make_gateway, checkpoint, fake_url)
    key = gw.create_key("team-a")
    c = client(gw, key)
    job = create_job(c, upload(c, jsonl(PAIRS)), n_epochs=5)
    done = wait_status(c, job.id, {"succeeded"})
    ask(c, done.fine_tuned_model, "sky")
    ui = sign_in(gw)
    listing = ui.get("/ui/fine-tuning")
    assert listing.status_code == 200 and job.id in listing.text
    page = ui.get(f"/ui/fine-tuning/{job.id}")
    assert page.status_code == 200
    assert 'id="chart-loss"' in page.text and 'id="traffic-table"' in page.text
    assert done.fine_tuned_model in page.text
    other = sign_in(gw, gw.create_key("team-b"))
    assert job.id not in other.get("/ui/fine-tuning").text
    assert other.get(f"/ui/fine-tuning/{job.id}").status_code == 404
    own = sign_in(gw, key)
    for session, sees in ((own, True), (other, False)):
        names = [m["name"] for m in session.get("/admin/pool").json()]
        assert "local" in names and (done.fine_tuned_model in names) is sees
        assert (done.fine_tuned_model in session.get("/ui").text) is sees


@pytest.fixture(scope="module")
def extractor() -> Iterator[Any]:
    from routing.features import FeatureExtractor

    yield FeatureExtractor.default(3)


def test_auto_routing_gets_a_warm_start_prior_from_the_validation_loss(
        make_gateway: GatewayFactory, checkpoint: Path, fake_url: str, extractor: Any) -> None:
    members = pool(checkpoint, fake_url)
    members[0]["quality"] = {"mmlu": 0.5}  # the base's declared prior
    gw = make_gateway(pool=members, energy_meter="none", router="bandit", extractor=extractor)
    c = client(gw, gw.create_key("team-a"))
    data = upload(c, jsonl(PAIRS))
    done = wait_status(c, create_job(c, data, data).id, {"succeeded", "failed"})
    assert done.status == "succeeded", done.error
    g = done.model_extra["greengate"]  # type: ignore[index]
    assert g["valid_loss"] < g["base_valid_loss"]
    r = gw.post("/v1/chat/completions", {"model": "auto", "max_tokens": 2, "messages": [
        {"role": "user", "content": "sky"}]}, key=c.api_key)
    assert r.status_code == 200, r.text
    cands = {x["member"]: x for x in gw.decision(r.headers["x-request-id"])["candidates"]}
    base, tuned = cands["local"], cands[done.fine_tuned_model]
    assert base["prior"] == "declared"
    assert tuned["prior"].startswith("like:local") and "finetune:+" in tuned["prior"]
    # A lower validation loss than the base's moves the prior mean up, with a wider sigma.
    assert tuned["prior_mean"] > base["prior_mean"]
    assert tuned["prior_sigma"] > base["prior_sigma"]


def test_two_gateway_processes_share_jobs_and_adapters(
        make_gateway: GatewayFactory, checkpoint: Path, fake_url: str, tmp_path: Path) -> None:
    """Workers of one `serve` share the database and the state folder: a job trains in one
    process only (the other does not resubmit it at its start), a cancel through either
    stops it, and an adapter one finished is served by the other within a poll."""
    shared = {"database_url": f"sqlite:///{tmp_path}/shared.db",
              "state_dir": tmp_path / "state"}
    gw1 = gateway(make_gateway, checkpoint, fake_url, **shared)
    key = gw1.create_key("team-a")
    c1 = client(gw1, key)
    train = upload(c1, jsonl(PAIRS * 6))
    long_job = create_job(c1, train, **LONG)
    gw2 = gateway(make_gateway, checkpoint, fake_url, **shared)
    c2 = client(gw2, key)
    assert long_job.id in training_jobs(engine_of(gw1))
    assert training_jobs(engine_of(gw2)) == []  # locked by the first process
    deadline = time.monotonic() + 20
    while not (running := c2.fine_tuning.jobs.retrieve(long_job.id)).model_extra[
            "greengate"]["step"]:  # type: ignore[index]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert running.status == "running" and running.estimated_finish >= int(time.time()) - 1
    assert c2.fine_tuning.jobs.cancel(long_job.id).status == "cancelled"
    deadline = time.monotonic() + 20
    while long_job.id in training_jobs(engine_of(gw1)):  # stopped at its next report
        assert time.monotonic() < deadline
        time.sleep(0.05)
    short = create_job(c1, upload(c1, jsonl(PAIRS)))
    done = wait_status(c2, short.id, {"succeeded", "failed"})
    assert done.status == "succeeded", done.error
    deadline = time.monotonic() + 20
    while done.fine_tuned_model not in [m.id for m in c2.models.list().data]:
        assert time.monotonic() < deadline, "the other process never served the adapter"
        time.sleep(0.2)
    for q, a in PAIRS:
        assert ask(c2, done.fine_tuned_model, q) == a
