"""The operator subcommands of `lmcache`: status, describe, ping, quota, kvcache (admin API clients)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any, TextIO

from lmcache_frontends.cli import render
from lmcache_frontends.cli.http import DEFAULT_URL, AdminClient, Reply, Unreachable

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_REJECTED = 2


class CommandFailed(Exception):
    """Ends a command with an exit code and a message for stderr (or stdout for REJECTED)."""

    def __init__(self, code: int, message: str, body: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.body = body


# ---------------------------------------------------------------------- common options


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """--url, --token, --format, --output, -q: the same on every admin-client subcommand."""
    group = parser.add_argument_group("common options")
    group.add_argument(
        "--url",
        default=os.environ.get("LMCACHE_URL", DEFAULT_URL),
        help=f"admin API base URL (env LMCACHE_URL; default {DEFAULT_URL})",
    )
    group.add_argument(
        "--token",
        default=os.environ.get("LMCACHE_TOKEN"),
        help="bearer token sent as 'Authorization: Bearer' (env LMCACHE_TOKEN)",
    )
    group.add_argument(
        "--format", choices=("terminal", "json"), default="terminal", help="output format (default terminal)"
    )
    group.add_argument("--output", metavar="PATH", help="write the output to PATH instead of stdout")
    group.add_argument("-q", "--quiet", action="store_true", help="print nothing on success; the exit code says it")
    group.add_argument("--timeout", type=float, default=30.0, help=argparse.SUPPRESS)


def auth_hint(reply: Reply, token: str | None) -> str:
    """What to do about a 401/403: which flag or variable carries the token."""
    if reply.status == 401:
        if token:
            return " (the token from --token / LMCACHE_TOKEN was not accepted)"
        return " (this server needs a token: pass --token TOKEN or set LMCACHE_TOKEN)"
    if reply.status == 403:
        return " (the token from --token / LMCACHE_TOKEN lacks the scope this call needs, e.g. admin)"
    return ""


class Context:
    """What a command needs: the client, the output stream and how to print."""

    def __init__(self, args: argparse.Namespace, out: TextIO) -> None:
        self.args = args
        self.client = AdminClient(args.url, token=args.token, timeout_s=args.timeout)
        self.out = out
        self.json = args.format == "json"
        self.colour = not self.json and args.output is None and render.use_colour(out)

    def call(self, method: str, path: str, **kwargs: Any) -> Reply:
        """A call whose non-2xx answers end the command: 409 `rejected` -> exit 2, else exit 1."""
        reply = self.client.call(method, path, **kwargs)
        if reply.ok:
            return reply
        body = reply.body if isinstance(reply.body, dict) else {"error": reply.message()}
        if reply.status == 409 and isinstance(reply.body, dict) and reply.body.get("status") == "rejected":
            raise CommandFailed(EXIT_REJECTED, reply.message(), body)
        raise CommandFailed(EXIT_ERROR, f"HTTP {reply.status}: {reply.message()}{auth_hint(reply, self.args.token)}", body)

    def emit(self, document: Any, lines: list[str]) -> None:
        if self.args.quiet:
            return
        if self.json:
            self.out.write(json.dumps(document, indent=2, sort_keys=False) + "\n")
        else:
            self.out.write("".join(line + "\n" for line in lines))


Handler = Callable[[Context], None]


def run_with(handler: Handler) -> Callable[[argparse.Namespace], int]:
    """Wraps a command: opens --output, maps Unreachable/CommandFailed to messages and exit codes."""

    def run(args: argparse.Namespace) -> int:
        stream: TextIO
        if args.output:
            try:
                stream = open(args.output, "w", encoding="utf-8")  # noqa: SIM115 - closed below
            except OSError as exc:
                print(f"lmcache: error: cannot write {args.output}: {exc.strerror}", file=sys.stderr)
                return EXIT_ERROR
        else:
            stream = sys.stdout
        try:
            try:
                ctx = Context(args, stream)
            except ValueError as exc:
                print(f"lmcache: error: {exc}", file=sys.stderr)
                return EXIT_ERROR
            try:
                handler(ctx)
            except Unreachable as exc:
                print(f"lmcache: error: {exc}", file=sys.stderr)
                return EXIT_ERROR
            except CommandFailed as exc:
                if exc.code == EXIT_REJECTED:
                    if ctx.json and exc.body is not None:
                        stream.write(json.dumps(exc.body, indent=2) + "\n")
                    else:
                        stream.write(f"REJECTED: {exc}\n")
                else:
                    if ctx.json and exc.body is not None and not args.quiet:
                        stream.write(json.dumps(exc.body, indent=2) + "\n")
                    print(f"lmcache: error: {exc}", file=sys.stderr)
                return exc.code
            return EXIT_OK
        finally:
            if stream is not sys.stdout:
                stream.close()

    return run


# ---------------------------------------------------------------------- status / describe / ping


def _status(ctx: Context) -> None:
    reply = ctx.call("GET", "/status")
    title = f"LMCache server {ctx.client.url}"
    ctx.emit(reply.body, render.status_tree(reply.body, colour=ctx.colour, title=title))


def configure_status(parser: argparse.ArgumentParser) -> None:
    add_common_options(parser)
    parser.add_argument("--json", dest="format", action="store_const", const="json", help="same as --format json")


def _get_or_none(ctx: Context, path: str) -> Any:
    reply = ctx.client.call("GET", path)
    return reply.body if reply.ok else None


def _uptime(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return " ".join(f"{v}{u}" for v, u in ((d, "d"), (h, "h"), (m, "m"), (s, "s")) if v) or "0s"


def _describe(ctx: Context) -> None:
    health = ctx.client.call("GET", "/healthcheck")
    status = ctx.call("GET", "/status").body or {}
    version = _get_or_none(ctx, "/version")
    quotas = _get_or_none(ctx, "/quota") or {}
    storage = status.get("storage_manager", {}) or {}
    l1 = storage.get("l1_manager", {}) or {}
    ev = storage.get("eviction_controller", {}) or {}
    meta = status.get("cache_context_meta", {}) or {}
    models = sorted({str(m.get("model_name")) for m in meta.values() if isinstance(m, dict) and m.get("model_name")})
    salts = sorted((quotas.get("users") or {}).keys()) if isinstance(quotas, dict) else []
    adapters = []
    for rep in storage.get("l2_adapters") or []:
        label = f"{rep.get('index')}:{rep.get('name')}"
        # A serde-wrapped adapter reports its space under `inner`.
        rep = {**(rep.get("inner") or {}), **{k: v for k, v in rep.items() if v is not None}}
        used = rep.get("used_bytes")
        cap = rep.get("capacity_bytes")
        use = "-" if used is None else render.human_bytes(used)
        if cap:
            use += f" of {render.human_bytes(cap)}"
        adapters.append(
            {
                "adapter": label,
                "kind": rep.get("kind"),
                "healthy": bool(rep.get("is_healthy")),
                "used_bytes": used,
                "capacity_bytes": cap,
                "objects": rep.get("stored_object_count"),
                "summary": f"{label} ({rep.get('kind', '?')}): {use}, {rep.get('stored_object_count', '?')} objects",
            }
        )
    used, total = l1.get("memory_used_bytes", 0), l1.get("memory_total_bytes", 0)
    doc = {
        "url": ctx.client.url,
        "healthy": health.ok and bool(status.get("is_healthy")),
        "version": version,
        "engine_type": status.get("engine_type"),
        "uptime_seconds": status.get("uptime_seconds"),
        "chunk_size": status.get("chunk_size"),
        "hash_algorithm": status.get("hash_algorithm"),
        "active_sessions": status.get("active_sessions"),
        "l1": {
            "used_bytes": used,
            "total_bytes": total,
            "usage_ratio": l1.get("memory_usage_ratio"),
            "objects": l1.get("total_object_count"),
            "pinned": l1.get("pinned_count"),
        },
        "eviction": {
            "policy": ev.get("policy"),
            "trigger_watermark": ev.get("trigger_watermark"),
            "eviction_ratio": ev.get("eviction_ratio"),
        },
        "models": models,
        "cache_salts_with_quota": salts,
        "l2_adapters": adapters,
    }
    ratio = l1.get("memory_usage_ratio") or 0.0
    rows = [
        ("health", render.health_tag(doc["healthy"], ctx.colour)),
        ("version", str(version or "-")),
        ("engine", f"{doc['engine_type'] or '-'}, up {_uptime(doc['uptime_seconds'])}"),
        ("chunk size", f"{doc['chunk_size']} tokens, hash {doc['hash_algorithm']}"),
        ("sessions", f"{doc['active_sessions'] if doc['active_sessions'] is not None else '-'} active"),
        (
            "L1",
            f"{render.human_bytes(used)} of {render.human_bytes(total)} used ({ratio:.1%}), "
            f"{l1.get('total_object_count', 0)} objects, {l1.get('pinned_count', 0)} pinned",
        ),
        (
            "eviction",
            f"{ev.get('policy', '-')}, trigger at {float(ev.get('trigger_watermark') or 0):.0%}, "
            f"evicts {float(ev.get('eviction_ratio') or 0):.0%} per cycle",
        ),
        ("models", ", ".join(models) or "(none registered)"),
        ("cache salts", ", ".join(salts) or "(no quota registered)"),
    ]
    if adapters:
        rows += [("L2 adapters" if i == 0 else "", a["summary"]) for i, a in enumerate(adapters)]
    else:
        rows.append(("L2 adapters", "(none)"))
    ctx.emit(doc, [f"LMCache server at {ctx.client.url}", *render.table(rows)])


def _ping(ctx: Context) -> None:
    reply = ctx.client.call("GET", "/healthcheck")
    ms = round(reply.elapsed_s * 1000, 2)
    doc = {"url": ctx.client.url, "healthy": reply.ok, "status_code": reply.status, "round_trip_ms": ms}
    if not reply.ok:
        doc["reason"] = reply.message()
        ctx.emit(doc, [f"{ctx.client.url}: {render.health_tag(False, ctx.colour)} ({reply.message()}), {ms} ms"])
        raise CommandFailed(EXIT_ERROR, f"HTTP {reply.status}: {reply.message()}{auth_hint(reply, ctx.args.token)}")
    ctx.emit(doc, [f"{ctx.client.url}: {render.health_tag(True, ctx.colour)}, round trip {ms} ms"])


# ---------------------------------------------------------------------- quota


def _salt_path(salt: str) -> str:
    import urllib.parse

    return "/quota/" + urllib.parse.quote(salt or "_default", safe="")


def _quota(ctx: Context) -> None:
    a = ctx.args
    if a.quota_command == "set":
        body = ctx.call("PUT", _salt_path(a.salt), body={"limit_gb": a.limit_gb}).body
        ctx.emit(body, [f"quota of {body.get('cache_salt', a.salt)} set to {body.get('limit_gb')} GB"])
    elif a.quota_command == "get":
        body = ctx.call("GET", _salt_path(a.salt)).body
        if not body.get("exists", True):
            line = f"{body.get('cache_salt')}: no quota (limit 0 GB), using {body.get('current_usage_gb', 0):.3f} GB"
        else:
            line = f"{body.get('cache_salt')}: {body.get('current_usage_gb', 0):.3f} of {body.get('limit_gb')} GB used"
        ctx.emit(body, [line])
    elif a.quota_command == "delete":
        body = ctx.call("DELETE", _salt_path(a.salt)).body
        ctx.emit(body, [f"quota of {body.get('cache_salt', a.salt)}: {body.get('status')}"])
    else:
        body = ctx.call("GET", "/quota").body
        users = (body or {}).get("users", {}) or {}
        lines = [f"{'CACHE SALT':<40} {'LIMIT GB':>12} {'USED GB':>12}"]
        for salt, q in sorted(users.items()):
            name = salt if len(salt) <= 40 else salt[:39] + "…"
            lines.append(f"{name:<40} {q.get('limit_gb', 0):>12.3f} {q.get('current_usage_gb', 0):>12.3f}")
        if not users:
            lines = ["no quota registered"]
        ctx.emit(body, lines)


def configure_quota(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="quota_command", metavar="ACTION", required=True, parser_class=type(parser))
    p = sub.add_parser("set", help="set a cache_salt's budget (IsolatedLRU)")
    p.add_argument("salt", help="cache_salt ('_default' = the empty salt)")
    p.add_argument("--limit-gb", type=float, required=True, help="budget in GB (>= 0)")
    add_common_options(p)
    for name, text in (("get", "show a cache_salt's budget and usage"), ("delete", "remove a cache_salt's budget")):
        p = sub.add_parser(name, help=text)
        p.add_argument("salt", help="cache_salt ('_default' = the empty salt)")
        add_common_options(p)
    add_common_options(sub.add_parser("list", help="list every budget with its usage"))


# ---------------------------------------------------------------------- kvcache


def _range(a: argparse.Namespace) -> dict[str, Any]:
    return {"start": getattr(a, "start", None), "end": getattr(a, "end", None)}


def _req_path(request_id: str, action: str = "") -> str:
    import urllib.parse

    return "/kvcache/requests/" + urllib.parse.quote(request_id, safe="") + (f"/{action}" if action else "")


def _kv_info_lines(body: dict[str, Any], colour: bool) -> list[str]:
    s = body.get("summary", {})
    lines = render.fit("", f"request {body['request_id']} ({body['state']}), model {body['model_name']}, "
                            f"salt {body['cache_salt']}, chunk size {body['chunk_size']}")
    l2 = ", ".join(f"{k}: {v}" for k, v in (s.get("in_l2") or {}).items()) or "no adapter"
    lines += render.fit(
        "",
        f"{s.get('chunks', 0)} chunks: {s.get('in_l1', 0)} in L1 ({render.human_bytes(s.get('l1_bytes', 0))}), "
        f"{s.get('locked', 0)} locked, {s.get('pinned', 0)} pinned; in L2: {l2}",
    )
    for label, err in (s.get("l2_errors") or {}).items():
        lines += render.fit("", render.warn(f"L2 {label}: {err}", colour))
    if body.get("chunks"):
        lines.append(f"{'#':>4} {'TOKENS':<13} {'HASH':<16} {'L1':<9} {'SIZE':>9} {'LOCK':<5} {'PIN':<4} L2")
    for c in body.get("chunks", []):
        l1 = ("temp" if c["temporary"] else "ready" if c["readable"] else "writing") if c["in_l1"] else "-"
        size = render.human_bytes(c["size_bytes"]) if c["size_bytes"] is not None else "-"
        lock = "w" if c["write_locked"] else f"r{c['read_lock_count']}" if c["read_lock_count"] else "-"
        pin = "yes" if c["pinned"] else "-"
        l2c = ",".join(c["l2_adapters"]) or "-"
        tokens = f"{c['token_start']}-{c['token_end']}"
        line = f"{c['index']:>4} {tokens:<13} {c['chunk_hash'][:16]:<16} {l1:<9} {size:>9} {lock:<5} {pin:<4} {l2c}"
        lines.append(line if len(line) <= render.WIDTH else line[: render.WIDTH - 1] + "…")
    return lines


def _kvcache(ctx: Context) -> None:
    a = ctx.args
    cmd = a.kvcache_command
    if cmd == "clear":
        query = {"cache_salt": a.cache_salt, "model_name": a.model_name}
        body = ctx.call("POST", "/clear-cache", query=query).body
        scope = ", ".join(f"{k}={v}" for k, v in query.items() if v is not None) or "everything"
        ctx.emit(body, [f"L1 cleared ({scope})"])
    elif cmd == "info":
        body = ctx.call("GET", _req_path(a.request_id), query=_range(a)).body
        ctx.emit(body, _kv_info_lines(body, ctx.colour))
    elif cmd == "pin":
        payload = {"ttl_seconds": a.ttl_seconds}
        body = ctx.call("POST", _req_path(a.request_id, "pin"), body=payload, query=_range(a)).body
        until = f"for {a.ttl_seconds:g} s" if a.ttl_seconds else "until unpinned"
        ctx.emit(body, [f"pinned {body['pinned_chunks']} chunks ({render.human_bytes(body['pinned_bytes'])}) "
                        f"of request {a.request_id} in L1 {until}"])
    elif cmd == "unpin":
        body = ctx.call("POST", _req_path(a.request_id, "unpin"), body={}, query=_range(a)).body
        ctx.emit(body, [f"unpinned {body['unpinned_chunks']} chunks of request {a.request_id} "
                        f"({body['not_pinned_chunks']} were not pinned)"])
    elif cmd == "compress":
        payload: dict[str, Any] = {"method": a.method}
        for field in ("adapter", "level", "dtype"):
            if getattr(a, field, None) is not None:
                payload[field] = getattr(a, field)
        body = ctx.call("POST", _req_path(a.request_id, "compress"), body=payload, query=_range(a)).body
        ratio = f"{body['ratio']:g}x" if body.get("ratio") else "-"
        lines = [
            f"re-stored {body['recompressed_chunks']} of {body['chunks']} chunks of request {a.request_id} "
            f"in {body['adapter']} with {body['method']}",
            f"bytes before: {render.human_bytes(body['bytes_before'])}, after: "
            f"{render.human_bytes(body['bytes_after'])} (ratio {ratio})",
        ]
        ctx.emit(body, [ln for line in lines for ln in render.fit("", line)])


def configure_kvcache(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="kvcache_command", metavar="ACTION", required=True, parser_class=type(parser))
    p = sub.add_parser("clear", help="clear L1 (everything, one tenant or one model)")
    p.add_argument("--cache-salt", help="only this tenant ('_default' = the empty salt)")
    p.add_argument("--model-name", help="only this model")
    add_common_options(p)

    def with_request(name: str, text: str) -> argparse.ArgumentParser:
        q = sub.add_parser(name, help=text)
        q.add_argument("request_id", help="the request id the engine used on the data path")
        q.add_argument("--start", type=int, help="first token of the range (default 0)")
        q.add_argument("--end", type=int, help="token after the range (default: the end)")
        add_common_options(q)
        return q

    with_request("info", "where a live or recently ended request's chunks are (L1, L2, locks, sizes)")
    p = with_request("pin", "keep the request's chunks in L1 against eviction")
    p.add_argument("--ttl-seconds", type=float, help="pin lifetime (default: until unpinned)")
    with_request("unpin", "release the request's pins")
    p = with_request("compress", "re-store the request's chunks in L2 through a serde codec")
    p.add_argument("--method", required=True, choices=("zstd", "zlib", "fp8"), help="codec")
    p.add_argument("--adapter", help="L2 adapter selector (default: the first)")
    p.add_argument("--level", type=int, help="compression level (zstd 1..22, zlib 1..9)")
    p.add_argument("--dtype", choices=("bfloat16", "float16"), help="KV dtype (fp8 only, required there)")


RUN_STATUS = run_with(_status)
RUN_DESCRIBE = run_with(_describe)
RUN_PING = run_with(_ping)
RUN_QUOTA = run_with(_quota)
RUN_KVCACHE = run_with(_kvcache)
