"""Runs a scenario on the seed library (inventory-manager 0.0.9.dev0, SQLAlchemy 1.4), in its own
virtualenv; prints one JSON result. Called by bench/run.py."""

import json
import random
import statistics
import sys
import threading
import time

import redis
from inventory_manager import InventoryManager
from sqlalchemy import create_engine, text
from sqlalchemy.ext.declarative import declarative_base
from sqlalchemy.orm import scoped_session, sessionmaker


def manager(args):
    engine = create_engine(args["database_url"], pool_size=args["threads"] + 4, max_overflow=10)
    db_session = scoped_session(sessionmaker(autocommit=False, autoflush=False, bind=engine))
    base = declarative_base()
    base.query = db_session.query_property()
    red = redis.Redis.from_url(args["redis_url"], decode_responses=True)
    mgr = InventoryManager(args["prefix"], db_session, base, red)
    mgr.create_table()
    return mgr, engine


def buyers(mgr, args, items, refund_share):
    latencies, done, lock = [], [0, 0, 0], threading.Lock()  # sold, refunded, ops
    barrier = threading.Barrier(args["threads"] + 1)
    sold_out = set()  # shared by the buyers, as in bench/contenders.py

    def run(i):
        rng = random.Random(i)
        mine, local = [], []
        barrier.wait()
        while len(sold_out) < len(items):
            item = items[0] if len(items) == 1 else rng.choice(items)
            if item in sold_out:
                continue
            t0 = time.perf_counter()
            if mine and rng.random() < refund_share:
                mgr.usage_incr(mine.pop(), 1)
                kind = 1
                ok = True
            else:
                ok = mgr.usage_decr(item, 1)
                kind = 0
                if ok:
                    mine.append(item)
                else:
                    sold_out.add(item)
            local.append(time.perf_counter() - t0)
            with lock:
                done[2] += 1
                if ok:
                    done[kind] += 1
        with lock:
            latencies.extend(local)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(args["threads"])]
    for t in threads:
        t.start()
    barrier.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    return done, latencies, time.perf_counter() - began


def main():
    args = json.loads(sys.argv[1])
    mgr, engine = manager(args)
    items = [f"i{n}" for n in range(args["items"])]
    if args["scenario"] == "init":  # for the HTTP comparison: one item, nothing else
        mgr.inventory_init("hot", args["stock"])
        return
    if args["scenario"] == "refresh_all":
        with engine.begin() as conn:
            conn.execute(text(f'INSERT INTO {args["prefix"]}_inventory_modification_record '
                              '(item_id, delta) SELECT \'r\' || g, 10 FROM '
                              'generate_series(1, :n) g'), {"n": args["items"]})
        began = time.perf_counter()
        count = mgr.refresh_all()
        print(json.dumps({"ops": count, "seconds": time.perf_counter() - began}))
        return
    for item in items:
        mgr.inventory_init(item, args["stock"])
    (sold, refunded, ops), latencies, seconds = buyers(mgr, args, items, args["refunds"])
    for item in items:  # untimed: sell what refunds put back after the buyers left
        while mgr.usage_decr(item, 1):
            sold += 1
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    with engine.connect() as conn:
        rows = conn.execute(text(f'SELECT count(*) FROM {args["prefix"]}_inventory_usage_record'
                                 )).scalar()
        net = -(conn.execute(text(f'SELECT coalesce(sum(delta), 0) FROM '
                                  f'{args["prefix"]}_inventory_usage_record')).scalar())
    left = [mgr.get(i) for i in items]
    print(json.dumps({"ops": ops, "seconds": seconds, "p50_ms": cuts[49] * 1000,
                      "p99_ms": cuts[98] * 1000, "sold": sold, "refunded": refunded,
                      "ledger_rows": rows, "ledger_net": net, "left": left}))


if __name__ == "__main__":
    main()
