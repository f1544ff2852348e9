"""``mi-probe cache``: list the activation store's entries and prune them.

``cache_main(argv)`` is the whole command (``argv`` without the word ``cache``); the
top-level CLI only forwards to it. Listing and pruning read the entries' markers only,
so they work without zarr.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from mi_probe.errors import MiProbeError, RunError

DAY_S = 86400.0


def cache_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mi-probe cache", description="List or prune the activation store: captured "
        "activations that later runs on the same model and data read instead of running "
        "the network (docs/store.md).")
    parser.add_argument("--store", metavar="PATH|URL", help="the store (default: "
                        "$MI_PROBE_STORE when it names one, else <cache>/activations)")
    parser.add_argument("--cache-dir", type=Path, help="the cache folder holding the default "
                        "store (default $MI_PROBE_CACHE, else the user cache folder)")
    sub = parser.add_subparsers(dest="action", metavar="{list,prune}", required=True)
    listing = sub.add_parser("list", help="entries with their key, size and last use")
    listing.add_argument("--json", action="store_true", help="one JSON object per entry")
    listing.add_argument("--long", action="store_true", help="every key field, in full")
    prune = sub.add_parser("prune", help="delete entries by age, total size, or all")
    prune.add_argument("--older-than", type=float, metavar="DAYS",
                       help="entries not read or written for more than DAYS days")
    prune.add_argument("--max-size", type=float, metavar="GB",
                       help="least recently used entries until at most GB (10^9 bytes) remain")
    prune.add_argument("--all", action="store_true", help="every entry")
    prune.add_argument("--dry-run", action="store_true", help="say what would be deleted")
    return parser


def _location(args: argparse.Namespace) -> tuple[str, str | None]:
    """The store to act on, and a note when MI_PROBE_STORE turns runs' store off."""
    from mi_probe._core.runner.rundir import resolve_cache_dir
    from mi_probe._core.store.location import OFF, ON, STORE_ENV, default_location

    if args.store:
        return args.store, None
    env = os.environ.get(STORE_ENV, "").strip()
    if env and env.lower() not in OFF | ON:
        return env, None
    note = (f"note: {STORE_ENV}={env} turns the store off for runs; showing the default "
            "store") if env.lower() in OFF else None
    return str(default_location(resolve_cache_dir(args.cache_dir))), note


def size_text(nbytes: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if nbytes < 1000 or unit == "TB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.1f} TB"


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 2 * DAY_S:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / DAY_S:.0f} days ago"


def _shape(entry: Any) -> str:
    arrays = entry.arrays
    main = arrays.get("acts") or arrays.get("logits") or next(iter(arrays.values()), None)
    return "x".join(str(s) for s in main["shape"]) if main else "?"


def _describe(entry: Any) -> str:
    info = entry.info
    parts = [str(info[k]) for k in ("arch", "state") if info.get(k) is not None]
    if info.get("seed") is not None:
        parts.append(f"seed {info['seed']}")
    if info.get("spec"):
        parts.append(f"spec {info['spec']}")
    return ", ".join(parts)


def _list(store: Any, args: argparse.Namespace) -> int:
    entries = store.entries()
    now = time.time()
    if args.json:
        for e in entries:
            print(json.dumps({"digest": e.digest, "key": e.key, "arrays": e.arrays,
                              "nbytes": e.nbytes, "created": e.created,
                              "last_used": e.last_used, "info": e.info}, sort_keys=True))
        return 0
    print(f"activation store {store.location}: {len(entries)} entr"
          f"{'y' if len(entries) == 1 else 'ies'}, "
          f"{size_text(sum(e.nbytes for e in entries))}")
    if not entries:
        return 0
    rows = [("entry", "site", "reduction", "shape", "size", "last used", "model", "data",
             "what")]
    for e in sorted(entries, key=lambda e: (e.key.get("model", ""), e.key.get("site", ""))):
        rows.append((e.digest[:12], e.key.get("site", "?"), e.key.get("reduction") or "-",
                     _shape(e), size_text(e.nbytes), _age(now - e.last_used),
                     e.key.get("model", "?")[:10], e.key.get("data", "?")[:10], _describe(e)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    if args.long:
        for e in entries:
            print(f"\n{e.digest}")
            for name, value in sorted(e.key.items()):
                print(f"  {name}: {value}")
            created = _dt.datetime.fromtimestamp(e.created).isoformat(timespec="seconds")
            print(f"  created: {created}")
    partial = store.unpublished()
    if partial:
        print(f"{len(partial)} unfinished write(s) (in progress or interrupted; "
              "`mi-probe cache prune` removes those older than an hour)")
    return 0


def _prune(store: Any, args: argparse.Namespace) -> int:
    if not (args.all or args.older_than is not None or args.max_size is not None):
        raise RunError("mi-probe cache prune: say what to delete: --older-than DAYS, "
                       "--max-size GB or --all")
    if args.all and (args.older_than is not None or args.max_size is not None):
        raise RunError("mi-probe cache prune: --all deletes every entry; give it alone")
    for name, value in (("--older-than", args.older_than), ("--max-size", args.max_size)):
        if value is not None and not value >= 0:
            raise RunError(f"mi-probe cache prune: {name} must be a number >= 0, got {value}")
    before = store.entries()
    kwargs = {"older_than_s": None if args.older_than is None else args.older_than * DAY_S,
              "max_bytes": None if args.max_size is None else int(args.max_size * 1e9),
              "everything": args.all}
    doomed = store.prune(dry_run=args.dry_run, **kwargs)
    freed = sum(e.nbytes for e in doomed)
    verb = "would delete" if args.dry_run else "deleted"
    print(f"activation store {store.location}: {verb} {len(doomed)} of {len(before)} "
          f"entries ({size_text(freed)}); {len(before) - len(doomed)} remain "
          f"({size_text(sum(e.nbytes for e in before) - freed)})")
    return 0


def cache_main(argv: Sequence[str] | None = None) -> int:
    """``mi-probe cache list | prune ...``; returns the exit status (errors are printed
    as ``error: ...``, status 1; bad arguments exit 2 as argparse does)."""
    from mi_probe._core.store.zarrstore import ActivationStore

    args = cache_parser().parse_args(argv)
    try:
        location, note = _location(args)
        if note:
            print(note, file=sys.stderr)
        store = ActivationStore(location)
        if store.is_local and not Path(store.location).exists():
            if args.action == "list":
                print(f"activation store {store.location}: 0 entries (nothing stored yet)")
            else:
                print(f"activation store {store.location}: nothing stored yet; nothing to "
                      "delete")
            return 0
        if store.is_local and not Path(store.location).is_dir():
            raise RunError(f"activation store {store.location} is a file, not a folder")
        return _list(store, args) if args.action == "list" else _prune(store, args)
    except MiProbeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (OSError, ValueError) as exc:  # an unreachable URL, a permission error
        print(f"error: activation store {getattr(args, 'store', None) or 'default'}: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
