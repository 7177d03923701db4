"""The report: result tables, ratios, targets with PASS/FAIL/n/a, RESULT lines and the JSON.

Everything printed is computed here from the passes' results and nothing else, so a figure
in the table, a ratio and the JSON can never disagree. The ``RESULT`` lines are the stable,
machine-readable part (tests/integration/test_bench_smoke.py reads the gateway's).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import asdict

from bench.common import MIB, fmt
from bench.throughput import RunResult

BOMB_LIMIT_MIB = 512

# The issue "bench: filters on, docx, bombs, Haraka": what --strict holds the gateway to,
# in addition to the earlier "Core" targets (which stay in force).
ISSUE_TARGETS = {
    "gateway_plain_ge_2.0x_postfix": "5 KB messages, gateway >= 2.0x Postfix msgs/s",
    "gateway_docx_ge_1.0x_postfix": "1 MiB .docx messages, gateway >= 1.0x Postfix msgs/s",
    "bombs_peak_rss_le_512mib": f"both bombs, gateway peak RSS <= {BOMB_LIMIT_MIB} MiB",
    "gateway_big_message_le_1x": "20 MiB attachments, gateway RSS growth <= 1x wire size",
}


def ratio(a: RunResult | None, b: RunResult | None) -> float | None:
    """msgs/s of ``a`` divided by msgs/s of ``b`` when both ran."""
    if a and b and a.ok and b.ok and a.msgs_per_s and b.msgs_per_s:
        return a.msgs_per_s / b.msgs_per_s
    return None


def verdict(ok: bool | None) -> str:
    """PASS / FAIL / n/a."""
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def at_least(value: float | None, limit: float) -> bool | None:
    """``value >= limit``, or None when there is no value."""
    return None if value is None else value >= limit


def print_table(results: list[RunResult]) -> None:
    """One row per system: msgs/s, drained/s, p50/p99, peak RSS, CPU per message."""
    header = (
        f"{'system':<34} {'msgs/s':>8} {'drained/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'peak RSS MiB':>12} {'CPU ms/msg':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        if r.skipped:
            print(f"{r.label:<34} skipped: {(r.error or '').splitlines()[0][:80]}")
            continue
        if not r.ok:
            print(f"{r.label:<34} FAILED: {(r.error or '').splitlines()[0][:80]}")
            continue
        decimals = 1 if r.workload == "docx" else 0  # docx rates are tens, not thousands
        print(
            f"{r.label:<34} {fmt(r.msgs_per_s, f'8.{decimals}f')} "
            f"{fmt(r.drained_msgs_per_s, f'9.{decimals}f')} "
            f"{fmt(r.p50_ms, '7.2f')} {fmt(r.p99_ms, '7.2f')} "
            f"{fmt(r.peak_rss_mib, '12.1f')} {fmt(r.cpu_ms_per_msg, '10.3f')}"
        )
        for note in r.notes:
            print(f"{'':<36}note: {note}")


def _first_line(value: object) -> str:
    lines = str(value or "").splitlines()
    return lines[0][:80] if lines else ""


def report(
    results: list[RunResult],
    big: list[dict[str, object]],
    args: argparse.Namespace,
    docx: list[RunResult] | None = None,
    bombs: list[dict[str, object]] | None = None,
    docx_info: dict[str, object] | None = None,
) -> dict[str, object]:
    """Print the result tables and return the JSON document."""
    docx = docx or []
    bombs = bombs or []
    by_name = {r.system: r for r in results}
    docx_by_name = {r.system: r for r in docx}
    print()
    if results:
        print(
            f"Plain 5 KB workload. Throughput: smtp-source -d -s {args.sessions} -l {args.size} "
            f"-m {args.messages} (after {args.warmup} warm-up messages; median of "
            f"{args.rounds} round(s)); latency: asyncio probe, "
            f"{args.latency_clients} connections x {args.latency_messages} msgs total, "
            "sequential per connection, MAIL..end-of-DATA reply, run after the throughput pass"
        )
        print_table(results)
    if docx:
        print()
        wire = (docx_info or {}).get("wire_bytes")
        print(
            f"Docx workload: {args.docx_messages} messages each carrying a "
            f"{fmt(float((docx_info or {}).get('docx_bytes', 0)) / MIB, '.2f')} MiB .docx "
            f"({wire} bytes on the wire), asyncio client, {args.docx_connections} connections "
            f"(after {args.docx_warmup} warm-up messages; median of {args.rounds} round(s)); "
            "latency: MAIL..end-of-DATA reply of every message, under that load"
        )
        print_table(docx)
    gw, pf = by_name.get("gateway"), by_name.get("postfix")
    gw_bare = ratio(gw, by_name.get("bare"))
    gw_pf = ratio(gw, pf)
    gw_pf_drained = None
    if gw and pf and gw.drained_msgs_per_s and pf.drained_msgs_per_s:
        gw_pf_drained = gw.drained_msgs_per_s / pf.drained_msgs_per_s
    gw_haraka = ratio(gw, by_name.get("haraka"))
    dgw = docx_by_name.get("gateway")
    dgw_pf = ratio(dgw, docx_by_name.get("postfix"))
    dgw_bare = ratio(dgw, docx_by_name.get("bare"))
    dgw_haraka = ratio(dgw, docx_by_name.get("haraka"))
    targets: dict[str, bool | None] = {
        "gateway_vs_bare_ge_0.60": None if gw_bare is None else gw_bare >= 0.60,
        "gateway_gt_postfix": None if gw_pf is None else gw_pf > 1.0,
    }
    if results:
        print()
        print(
            f"gateway / bare relay = {fmt(gw_bare, '.2f')}  "
            f"(target >= 0.60: {verdict(targets['gateway_vs_bare_ge_0.60'])})"
        )
        print(
            f"gateway / postfix    = {fmt(gw_pf, '.2f')}  "
            f"(target > 1.00: {verdict(targets['gateway_gt_postfix'])}; "
            f"drained to the sink: {fmt(gw_pf_drained, '.2f')})"
        )
        print(f"gateway / haraka     = {fmt(gw_haraka, '.2f')}")
    if docx:
        print(
            f"docx: gateway / postfix = {fmt(dgw_pf, '.2f')}, gateway / bare relay = "
            f"{fmt(dgw_bare, '.2f')}, gateway / haraka = {fmt(dgw_haraka, '.2f')}"
        )
    big_target: bool | None = None
    big_growth: float | None = None
    if big:
        print()
        wire = next((b.get("wire_bytes") for b in big), 0)
        print(f"Memory: one message with 20 MiB of base64 attachments, {wire} bytes on the wire")
        for b in big:
            if not b.get("ok"):
                print(f"  {b['label']:<34} FAILED: {_first_line(b.get('error'))}")
                continue
            print(
                f"  {b['label']:<34} RSS before {b['rss_before_mib']:7.1f} MiB, "
                f"peak {b['peak_rss_mib']:7.1f} MiB, growth {b['growth_mib']:6.1f} MiB "
                f"= {b['growth_x_wire']:.2f}x wire size ({b['send_s']:.1f}s)"
            )
        gw_big = next((b for b in big if b["system"] == "gateway" and b.get("ok")), None)
        if gw_big is not None:
            big_growth = float(gw_big["growth_x_wire"])  # type: ignore[arg-type]
            big_target = big_growth <= 3.0
        print(f"  gateway growth <= 3x wire size: {verdict(big_target)}")
    targets["gateway_big_message_le_3x"] = big_target
    bombs_target: bool | None = None
    if bombs:
        print()
        print("Bombs, sent once each through the gateway (peak RSS: serve's process tree)")
        for b in bombs:
            if not b.get("ok"):
                print(f"  {b['description']:<50} FAILED: {_first_line(b.get('error'))}")
                continue
            print(
                f"  {b['description']:<50} {b['wire_bytes']:>8} B on the wire: "
                f"peak RSS {b['peak_rss_mib']:7.1f} MiB (before {b['rss_before_mib']:.1f}), "
                f"{b['send_s']:.1f}s, reply {b['reply_code']} {str(b['reply'])[:70]!r}"
            )
        measured = [float(b["peak_rss_mib"]) for b in bombs if b.get("ok")]  # type: ignore[arg-type]
        if len(measured) == len(bombs):
            bombs_target = max(measured) <= BOMB_LIMIT_MIB
        elif measured and max(measured) > BOMB_LIMIT_MIB:
            bombs_target = False
    docx_ratio_target = at_least(dgw_pf, 1.0)
    targets.update(
        {
            "gateway_plain_ge_2.0x_postfix": at_least(gw_pf, 2.0),
            "gateway_docx_ge_1.0x_postfix": docx_ratio_target,
            "bombs_peak_rss_le_512mib": bombs_target,
            "gateway_big_message_le_1x": None if big_growth is None else big_growth <= 1.0,
        }
    )
    figures = {
        "gateway_plain_ge_2.0x_postfix": fmt(gw_pf, ".2f") + "x" * (gw_pf is not None),
        "gateway_docx_ge_1.0x_postfix": fmt(dgw_pf, ".2f") + "x" * (dgw_pf is not None),
        "bombs_peak_rss_le_512mib": ", ".join(
            f"{b['name']} {fmt(b.get('peak_rss_mib'), '.0f')} MiB"  # type: ignore[arg-type]
            for b in bombs
        )
        or "-",
        "gateway_big_message_le_1x": fmt(big_growth, ".2f") + "x" * (big_growth is not None),
    }
    print()
    print("Targets (gateway with its default filters, same run):")
    for key, text in ISSUE_TARGETS.items():
        print(f"  {verdict(targets[key]):<4}  {text}: {figures[key]}")
    # Machine-readable summary lines (used by tests/integration/test_bench_smoke.py).
    print()
    for r in results:
        extra = " skipped=1" if r.skipped else ""
        print(f"RESULT {r.system} ok={int(r.ok)} msgs_per_s={r.msgs_per_s or 0:.1f}{extra}")
    for r in docx:
        extra = " skipped=1" if r.skipped else ""
        print(f"RESULT docx/{r.system} ok={int(r.ok)} msgs_per_s={r.msgs_per_s or 0:.1f}{extra}")
    for b in bombs:
        print(
            f"RESULT bomb/{b['name']} ok={int(bool(b.get('ok')))} "
            f"peak_rss_mib={float(b.get('peak_rss_mib') or 0):.1f} "  # type: ignore[arg-type]
            f"reply_code={b.get('reply_code', 0)}"
        )
    return {
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "load": {
            "tool": "smtp-source -d",
            "sessions": args.sessions,
            "size": args.size,
            "messages": args.messages,
            "warmup": args.warmup,
            "rounds": args.rounds,
        },
        "postfix_settings": args.postfix_set,
        "gateway_processes": args.gateway_processes,
        "latency_method": (
            f"asyncio probe in the harness process: {args.latency_clients} connections, "
            f"{args.latency_messages} messages in total, sequential per connection, "
            "time from MAIL FROM to the reply after end-of-DATA"
        ),
        "throughput": {r.system: asdict(r) for r in results},
        "ratios": {
            "gateway_over_bare": gw_bare,
            "gateway_over_postfix": gw_pf,
            "gateway_over_postfix_drained": gw_pf_drained,
            "gateway_over_haraka": gw_haraka,
            "docx_gateway_over_postfix": dgw_pf,
            "docx_gateway_over_bare": dgw_bare,
            "docx_gateway_over_haraka": dgw_haraka,
        },
        "targets": targets,
        "issue_targets": list(ISSUE_TARGETS),
        "memory": big,
        "workload_docx": {
            **(docx_info or {}),
            "messages": args.docx_messages if docx else 0,
            "connections": args.docx_connections,
            "warmup": args.docx_warmup,
            "latency_method": "every message of the timed pass, MAIL FROM to end-of-DATA reply",
        },
        "throughput_docx": {r.system: asdict(r) for r in docx},
        "bombs": bombs,
    }
