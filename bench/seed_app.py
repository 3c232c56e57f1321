"""The seed library behind Flask, for the HTTP comparison: POST /buy/<item> is usage_decr.
Served by granian from the seed's virtualenv; configured by SEED_ARGS (JSON)."""

import json
import os

import redis
from flask import Flask
from inventory_manager import InventoryManager
from sqlalchemy import create_engine
from sqlalchemy.ext.declarative import declarative_base
from sqlalchemy.orm import scoped_session, sessionmaker

args = json.loads(os.environ["SEED_ARGS"])
engine = create_engine(args["database_url"], pool_size=16, max_overflow=16)
db_session = scoped_session(sessionmaker(autocommit=False, autoflush=False, bind=engine))
base = declarative_base()
base.query = db_session.query_property()
mgr = InventoryManager(args["prefix"], db_session, base,
                       redis.Redis.from_url(args["redis_url"], decode_responses=True))
app = Flask(__name__)


@app.post("/buy/<item>")
def buy(item):
    try:
        return ({"ok": True}, 200) if mgr.usage_decr(item, 1) else ({"ok": False}, 409)
    finally:
        db_session.remove()


@app.get("/healthz")
def healthz():
    return {"status": "ok"}
