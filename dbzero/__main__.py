"""Inspect prefix files without the application's classes.

    python -m dbzero stat   ROOT/name.db0       sizes and entry counts of each table
    python -m dbzero readers ROOT/name.db0      LMDB reader table (stale readers are cleared)
    python -m dbzero copy   ROOT/name.db0 DEST  consistent compacted hot copy
    python -m dbzero dump   ROOT/name.db0 [N]   the first N object records, decoded
"""

from __future__ import annotations

import argparse
import struct
import sys

import lmdb
import msgpack

from .storage import current_state


def _open(path: str) -> lmdb.Environment:
    return lmdb.open(path, subdir=False, readonly=True, lock=True, max_dbs=16, max_readers=2048)


def stat(path: str) -> int:
    env = _open(path)
    with env.begin() as txn:
        meta = env.open_db(b"meta", txn=txn, create=False)
        state = current_state(txn, env.open_db(b"history", txn=txn, create=False), meta)
        fmt = struct.unpack(">Q", txn.get(b"format", db=meta))[0]
        print(f"format {fmt}, state {state}, map size {env.info()['map_size']:,} bytes")
        for name in (b"classes", b"objects", b"chunks", b"index", b"tags", b"obj_tags", b"history"):
            db = env.open_db(name, txn=txn, create=False)
            st = txn.stat(db)
            pages = st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
            print(f"{name.decode():10} {st['entries']:>12,} entries {pages * st['psize']:>14,} bytes")
    return 0


def readers(path: str) -> int:
    env = _open(path)
    print(f"cleared {env.reader_check()} stale reader slot(s)")
    print(env.readers())
    return 0


def copy(path: str, dest: str) -> int:
    _open(path).copy(dest, compact=True)
    print(f"copied {path} -> {dest}")
    return 0


def _ext(code: int, data: bytes):
    return msgpack.ExtType(code, data)


def dump(path: str, limit: int) -> int:
    env = _open(path)
    with env.begin() as txn:
        classes_db = env.open_db(b"classes", txn=txn, create=False)
        classes = {}
        for key, value in txn.cursor(db=classes_db):
            classes[struct.unpack(">I", key)[0]] = msgpack.unpackb(value[8:], raw=False)
        objects = env.open_db(b"objects", txn=txn, create=False)
        for n, (key, value) in enumerate(txn.cursor(db=objects)):
            if n >= limit:
                break
            rec = msgpack.unpackb(value[8:], raw=False, ext_hook=_ext, strict_map_key=False)
            oid = struct.unpack(">Q", key)[0]
            info = classes.get(rec[0])
            if info is None:
                print(f"{oid}: collection kind {rec[0]} refcount {rec[1]}")
                continue
            fields = {f: v for f, v in zip(info["fields"], rec[2:])
                      if not (isinstance(v, msgpack.ExtType) and v.code == 13)}
            print(f"{oid}: {info['name']} refcount {rec[1]} {fields}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dbzero", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("stat", "readers"):
        sub.add_parser(name).add_argument("path")
    p = sub.add_parser("copy")
    p.add_argument("path")
    p.add_argument("dest")
    p = sub.add_parser("dump")
    p.add_argument("path")
    p.add_argument("limit", nargs="?", type=int, default=20)
    args = parser.parse_args(argv)
    if args.cmd == "stat":
        return stat(args.path)
    if args.cmd == "readers":
        return readers(args.path)
    if args.cmd == "copy":
        return copy(args.path, args.dest)
    return dump(args.path, args.limit)


if __name__ == "__main__":
    sys.exit(main())
