"""`greengate` command line: serve, keys, teams, migrate, mock-upstream."""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway import Settings

# Before anything can import litellm: without it litellm fetches prices from the internet.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def _settings(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from gateway import Settings

    overrides = {k: v for k, v in {
        "config": getattr(args, "config", None),
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
        "database_url": getattr(args, "database_url", None),
    }.items() if v is not None}
    return Settings(**overrides)


def _admin_key(settings) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """The admin key and where it came from. Generated once and kept 0600 when not given."""
    if settings.admin_key is not None:
        return settings.admin_key.get_secret_value(), "GREENGATE_ADMIN_KEY"
    path = Path(settings.state_dir) / "admin_key"
    if path.exists():
        return path.read_text().strip(), str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = "gg-admin-" + secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key, f"{path} (generated)"


WORKERS_NEED_REDIS = (
    "greengate: --workers {n} refused: each worker process would keep its own budget "
    "counters, key cache and bandit learning, so budgets would be overspent up to {n}x and "
    "routing would learn {n} times more slowly. Several workers share state the way replicas "
    "do, through Redis: set GREENGATE_REDIS_URL (redis://host:6379/0), or run one worker.")


def _load_pool(settings):  # type: ignore[no-untyped-def]
    """The pool and where it came from; ConfigError/ValidationError on a bad file."""
    from backends import default_pool, load_pool, with_engine_model

    explicit = "GREENGATE_CONFIG" in os.environ
    if settings.config.exists() or explicit:
        pool, source = load_pool(settings.config), str(settings.config)
    else:
        pool, source = default_pool(), "the built-in default (no greengate.yaml here)"
    if settings.engine_model is not None:
        pool = with_engine_model(pool, settings.engine_model)
    return pool, source


def worker_app():  # type: ignore[no-untyped-def]
    """The app of one `serve --workers N` process: uvicorn imports this factory in each
    worker; `cmd_serve` has put the resolved settings in GREENGATE_* for it."""
    from gateway import Settings
    from greengate.app import create_app

    settings = Settings()
    pool, _ = _load_pool(settings)
    _logging(settings)
    assert settings.admin_key is not None  # cmd_serve set it
    return create_app(settings, pool, settings.admin_key.get_secret_value())


def _logging(settings) -> None:  # type: ignore[no-untyped-def]
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per upstream call is noise


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn
    from pydantic import ValidationError

    from backends import ConfigError
    from greengate.app import create_app

    settings = _settings(args)
    workers = args.workers if getattr(args, "workers", None) is not None else settings.workers
    if workers < 1:
        print("greengate: --workers must be at least 1", file=sys.stderr)
        return 2
    if workers > 1 and not settings.redis_url:
        print(WORKERS_NEED_REDIS.format(n=workers), file=sys.stderr)
        return 2
    if getattr(args, "config", None) is not None:
        os.environ["GREENGATE_CONFIG"] = str(args.config)  # an explicit file must exist
    try:
        pool, source = _load_pool(settings)
    except (ConfigError, ValidationError) as e:
        print(f"greengate: {e}", file=sys.stderr)
        return 2
    from gateway import extras_check

    extras_check.check(settings, pool)  # before uvicorn: a missing extra is one line (main)
    key, where = _admin_key(settings)
    _logging(settings)
    print(f"greengate: pool from {source}, database {settings.database_url}",
          file=sys.stderr)
    print(f"greengate: admin key from {where}; OpenAI base URL "
          f"http://{settings.host}:{settings.port}/v1", file=sys.stderr)
    # uvloop and httptools when installed (uvicorn[standard]); asyncio and h11 otherwise.
    common = dict(host=settings.host, port=settings.port, log_level=settings.log_level,
                  timeout_graceful_shutdown=30, access_log=False, loop="auto", http="auto",
                  backlog=4096, timeout_keep_alive=settings.client_keepalive_s)
    if workers == 1:
        uvicorn.run(create_app(settings, pool, key), **common)
        return 0
    from migrations import runner as migrate

    migrate.upgrade(settings.database_url)  # once, before the workers race to do it
    os.environ.update({
        "GREENGATE_CONFIG": str(settings.config.resolve()),
        "GREENGATE_HOST": settings.host, "GREENGATE_PORT": str(settings.port),
        "GREENGATE_DATABASE_URL": settings.database_url, "GREENGATE_ADMIN_KEY": key,
        "GREENGATE_WORKERS": str(workers)})
    print(f"greengate: {workers} worker processes sharing state through "
          f"{settings.redis_url} (budgets, keys, policies, bandit learning, member health, "
          "UI sessions), as replicas on several hosts do",
          file=sys.stderr)
    uvicorn.run("greengate.cli:worker_app", factory=True, workers=workers, **common)
    return 0


def _repo(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from gateway import KeyRepo
    from migrations import runner as migrate
    from store import database

    settings = _settings(args)
    migrate.upgrade(settings.database_url)
    return KeyRepo(database.make_engine(settings.database_url))


def cmd_keys(args: argparse.Namespace) -> int:
    repo = _repo(args)
    if args.action == "create":
        models = [m.strip() for m in args.models.split(",")] if args.models else None
        secret, info = repo.create_key(args.team, args.name, models)
        print(json.dumps({**info.to_json(), "key": secret}, indent=2))
        print("Store this key now: greengate keeps only its hash.", file=sys.stderr)
    elif args.action == "list":
        for k in repo.list_keys(args.team):
            state = "revoked" if k.revoked_at else "active"
            models = ",".join(k.allowed_models) if k.allowed_models is not None else "*"
            print(f"{k.id}\t{k.prefix}…\t{k.team}\t{k.name or ''}\t{models}\t{state}")
    else:
        try:
            info = repo.revoke(args.key)
        except LookupError as e:
            print(f"greengate: {e}", file=sys.stderr)
            return 1
        print(f"revoked key {info.id} ({info.prefix}…) of team {info.team}")
        print(revocation_reach(_settings(args), info.id), file=sys.stderr)
    return 0


def revocation_reach(settings: Settings, key_id: int) -> str:
    """When a running gateway stops accepting a key the CLI revoked in the database: at once
    where the gateways share Redis (the CLI tells them on their event bus, as /admin does),
    else when the key cache's entry expires."""
    if settings.redis_url:
        from gateway import EventBus, RedisLink

        link = RedisLink(settings.redis_url)
        try:
            sent = EventBus(link, settings.redis_prefix).publish("keys", {"key_id": key_id})
        finally:
            link.client.close()
        if sent:
            return ("Gateways sharing Redis (GREENGATE_REDIS_URL) were told: they refuse it "
                    "from their next request.")
    return (f"A running gateway refuses it within {settings.key_cache_ttl_s:g} s, when its key "
            "cache forgets it (GREENGATE_KEY_CACHE_TTL_S); DELETE /admin/keys/{id} on the "
            "gateway takes effect there at once.")


def cmd_teams(args: argparse.Namespace) -> int:
    repo = _repo(args)
    if args.action == "create":
        try:
            print(json.dumps(repo.create_team(args.name)))
        except ValueError as e:
            print(f"greengate: {e}", file=sys.stderr)
            return 1
    else:
        for t in repo.list_teams():
            print(f"{t['id']}\t{t['name']}")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from migrations import runner as migrate

    settings = _settings(args)
    if args.direction == "up":
        migrate.upgrade(settings.database_url, args.revision or "head")
    else:
        migrate.downgrade(settings.database_url, args.revision or "base")
    return 0


def cmd_fit_priors(args: argparse.Namespace) -> int:
    """Fit warm-start priors from per-query outcome files (RouterBench CSV, RouterDC JSON)."""
    import numpy as np

    from routing import SHIPPED_PRIORS as SHIPPED
    from routing import FeatureExtractor, fit_priors, load_outcomes, save_priors

    outcomes = load_outcomes(args.data)
    if not outcomes:
        print("greengate: no usable rows in the given files", file=sys.stderr)
        return 1
    extractor = FeatureExtractor.default(args.clusters)
    feats = extractor.extract_many([o.prompt for o in outcomes])
    contexts = np.stack([extractor.vector(f) for f in feats])
    priors = fit_priors(outcomes, contexts, extractor.layout)
    priors["source"] = [str(p) for p in args.data]
    out = args.out or SHIPPED
    save_priors(priors, out)
    summary = {m: {"n": v["n"], "mean_quality": round(v["mean_quality"], 4)}
               for m, v in priors["models"].items()}
    print(json.dumps({"out": str(out), "rows": len(outcomes), "models": summary}, indent=2))
    return 0


def cmd_train_task_classifier(args: argparse.Namespace) -> int:
    from train.task_classifier import train

    print(json.dumps(train(args.data, args.out), indent=2, default=str))
    return 0


def cmd_mock_upstream(args: argparse.Namespace) -> int:
    import uvicorn

    from backends import MockBehaviour
    from backends import create_mock_upstream as create_app
    from gateway import Settings

    if args.port is None:
        args.port = Settings().mock_upstream_port
    print(f"greengate: mock OpenAI upstream (echoes prompts, not a model) on "
          f"http://{args.host}:{args.port}/v1", file=sys.stderr)
    behaviour = MockBehaviour(latency_s=args.latency_ms / 1000,
                              latency_jitter_s=args.jitter_ms / 1000)
    uvicorn.run(create_app(behaviour), host=args.host, port=args.port, log_level="warning")
    return 0


def cmd_engine_serve(argv: list[str]) -> int:
    from backends.engine import server

    server.main(argv)  # its own parser: --model, --port, --device, ...
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="greengate", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def db_opt(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--database-url", help="overrides GREENGATE_DATABASE_URL")

    s = sub.add_parser("serve", help="start the gateway")
    s.add_argument("--config", type=Path, help="pool file (default greengate.yaml)")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--workers", type=int,
                   help="worker processes (default 1; more than 1 needs GREENGATE_REDIS_URL)")
    db_opt(s)
    s.set_defaults(func=cmd_serve)

    k = sub.add_parser("keys", help="create, list and revoke virtual keys")
    ksub = k.add_subparsers(dest="action", required=True)
    kc = ksub.add_parser("create")
    kc.add_argument("--team", required=True)
    kc.add_argument("--name")
    kc.add_argument("--models", help="comma-separated members (or auto) the key may use")
    kl = ksub.add_parser("list")
    kl.add_argument("--team")
    kr = ksub.add_parser("revoke")
    kr.add_argument("key", help="key id or prefix")
    for sp in (kc, kl, kr):
        db_opt(sp)
    k.set_defaults(func=cmd_keys)

    t = sub.add_parser("teams", help="create and list teams")
    tsub = t.add_subparsers(dest="action", required=True)
    tc = tsub.add_parser("create")
    tc.add_argument("name")
    tl = tsub.add_parser("list")
    for sp in (tc, tl):
        db_opt(sp)
    t.set_defaults(func=cmd_teams)

    m = sub.add_parser("migrate", help="apply or roll back database migrations")
    m.add_argument("direction", choices=["up", "down"])
    m.add_argument("--revision")
    db_opt(m)
    m.set_defaults(func=cmd_migrate)

    fp = sub.add_parser("fit-priors", help="fit warm-start bandit priors from outcome files")
    fp.add_argument("--data", type=Path, nargs="+", required=True,
                    help="RouterBench-format CSVs and/or RouterDC-format JSON files")
    fp.add_argument("--out", type=Path, help="default: the priors shipped with greengate")
    fp.add_argument("--clusters", type=int, default=3)
    fp.set_defaults(func=cmd_fit_priors)

    tr = sub.add_parser("train-task-classifier",
                        help="train the task-type classifier on labelled prompts")
    tr.add_argument("--data", type=Path, nargs="+", required=True)
    tr.add_argument("--out", type=Path, default=Path(__file__).parent.parent / "routing"
                    / "artifacts")
    tr.set_defaults(func=cmd_train_task_classifier)

    mu = sub.add_parser("mock-upstream", help="run an echoing OpenAI-protocol server (demo)")
    mu.add_argument("--host", default="127.0.0.1")
    mu.add_argument("--port", type=int, default=None,
                    help="default: GREENGATE_MOCK_UPSTREAM_PORT (9000), where greengate.yaml's "
                    "demo members point")
    mu.add_argument("--latency-ms", type=float, default=0.0,
                    help="wait this long before answering, like a real model would")
    mu.add_argument("--jitter-ms", type=float, default=0.0,
                    help="plus a uniformly random extra wait of up to this much")
    mu.set_defaults(func=cmd_mock_upstream)

    en = sub.add_parser("engine", help="the bundled engine on its own (a GPU host's side)")
    ensub = en.add_subparsers(dest="action", required=True)
    # The server parses its own options (backends/engine/server.py): parsing them here would
    # import torch for every other command.
    es = ensub.add_parser("serve", add_help=False,
                          help="serve one model as an OpenAI-compatible server that reports "
                          "measured energy per request (--model PATH|tiny-random-llama "
                          "[--port P] [--device cuda|cpu]; --help for all)")
    es.set_defaults(func=lambda _: cmd_engine_serve([]))
    return p


def main(argv: list[str] | None = None) -> int:
    from extras import MissingExtra

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:2] == ["engine", "serve"]:
        return cmd_engine_serve(argv[2:])
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MissingExtra as e:  # an optional part this command needs is not installed
        print(f"greengate: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
