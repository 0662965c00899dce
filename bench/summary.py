"""bench/results/summary.md from a run's JSON: machine, sizes, medians, p95, ratios, targets."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _f(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "met" if x else "**not met**"
    if isinstance(x, float):
        if x == 0:
            return "0"
        return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"
    return str(x)


def _stats_table(stats: dict) -> list[str]:
    lines = ["| path | median | p95 | rounds |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {k} | {_f(v['median'])} | {_f(v['p95'])} | {v['n']} |" for k, v in stats.items()]
    return lines


def _targets(case: dict) -> list[str]:
    out = [f"- ratio {k}: **{_f(v)}**" for k, v in case.get("ratios", {}).items()]
    out += [f"- target {k}: {_f(v)}" for k, v in case.get("targets", {}).items()]
    return out


def _load(machine: dict) -> str:
    """The machine's load averages over the run, as read (older runs only said it was shared)."""
    start, end = machine.get("load_at_start"), machine.get("load_at_end")
    if start is None or end is None:
        return (
            "Taken on a machine that may be shared (this run did not record its load): absolute figures are "
            "noisy and indicative; the ratios, measured side by side in the same run, are the point."
        )
    shown = ", ".join
    return (
        f"Load average (1, 5, 15 min) at the start {shown(f'{x:.2f}' for x in start)}, at the end "
        f"{shown(f'{x:.2f}' for x in end)} (the run's own processes count in it). Absolute figures move with "
        "the machine (its speed has been seen to change 2x within minutes); the ratios, measured side by side "
        "in the same run, are the point."
    )


def render(result: dict, json_name: str) -> str:
    m = result["machine"]
    lines = [
        "# Benchmark summary",
        "",
        f"Size **{result['size']}**, run {result['started'][:19]}Z to {result['finished'][:19]}Z; raw figures in "
        f"bench/results/ ({json_name}). Reproduce with `make bench` (`BENCH_SIZE=S|M|L`, "
        "`python -m bench.run --quick`).",
        "",
        f"Machine: {m.get('cpu', '?')}, {m.get('cpus')} CPUs, {m.get('memory_gb', '?')} GB; {m.get('platform')}; "
        f"Python {m.get('python')}, SQLite {m.get('sqlite')}, PostgreSQL {m.get('postgresql')} (local, defaults).",
        "",
        _load(m),
        "",
        f"Sizes: `{json.dumps(result['sizes'])}`. What each case compares, and where the time goes: "
        "[bench/README.md](../README.md).",
        "",
    ]
    for kind, cases in result["results"].items():
        for name, case in cases.items():
            if case is None:
                continue
            lines += [f"## {name} — {kind}", ""]
            if case.get("run_size"):
                lines += [f"*Measured in a run of size `{case['run_size']}` (a smoke run), not the size above.*", ""]
            if case.get("run_machine"):
                lines += [f"*Measured on another machine of the same kind: {case['run_machine']}.*", ""]
            lines += [f"Unit: {case.get('unit', '')}", ""]
            if name == "queue":
                lines += [
                    "| total placements | follow-ups | outcomes | items | ours median | ours p95 | raw median "
                    "| raw p95 | ours/raw (median) |",
                    "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
                ]
                checked = 0
                for n, r in case["by_total_placements"].items():
                    checked += r.get("items_checked", 0)
                    lines.append(
                        f"| {int(n):,} | {r['follow_ups']:,} | {r.get('outcomes', 0):,} | {r['items_per_queue']} | "
                        f"{_f(r['ours_s']['median'])} | {_f(r['ours_s']['p95'])} | {_f(r['raw_s']['median'])} | "
                        f"{_f(r['raw_s']['p95'])} | {_f(r['ours_s']['median'] / r['raw_s']['median'])} |"
                    )
                if checked:
                    lines += [
                        "",
                        f"- {checked:,} items compared field by field with the raw query's rows (same queue, same "
                        "order, same contact and last outcome): equal",
                    ]
            elif name == "dispatch":
                lines += [
                    "| path | items | processes | time to load s | time to fire all s | fired/s | end-to-end/s "
                    "| duplicates | peak RSS MB |",
                    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
                ]
                ours = ("ours_1_process", "ours_4_processes", "ours_1_process_fifth_size", "ours_backlog_4_processes")
                for key in ours:
                    r = case.get(key)
                    if r:
                        lines.append(
                            f"| {key} | {r['messages']:,} | {r['processes']} | {_f(r.get('seconds_to_load', 0.0))} | "
                            f"{_f(r['seconds_dispatching'])} | {_f(r['per_second'])} | "
                            f"{_f(r.get('end_to_end_per_second', r['per_second']))} | {r['duplicates']} | "
                            f"{_f(r['peak_rss_mb'])} |"
                        )
                runs = case.get("apscheduler_by_jobs") or {"": case["apscheduler_sqlalchemy_jobstore"]}
                for a in runs.values():
                    took = a["seconds_to_load"] + a["seconds_to_fire_all"]
                    e2e = a.get("end_to_end_per_second") or a["fired"] / took
                    lines.append(
                        f"| APScheduler 3, a job per follow-up (SQLAlchemyJobStore) | {a['jobs']:,} | 1 | "
                        f"{_f(a['seconds_to_load'])} | {_f(a['seconds_to_fire_all'])} | {_f(a['per_second'])} | "
                        f"{_f(e2e)} | {a['duplicates']} | {_f(a['peak_rss_mb'])} |"
                    )
                if case.get("basis"):
                    lines += ["", f"- basis: {case['basis']}"]
            elif name == "pages":  # bench/pages.py: one row per page, milliseconds, against 200 ms
                lines += [
                    "| page | median ms | p95 ms | median < 200 ms | p95 < 200 ms | bytes |",
                    "| --- | ---: | ---: | --- | --- | ---: |",
                ]
                for page, st in case["stats"].items():
                    lines.append(
                        f"| {page} | {st['median'] * 1000:.0f} | {st['p95'] * 1000:.0f} | {_f(st['median'] < 0.2)} | "
                        f"{_f(st['p95'] < 0.2)} | {case['bytes'].get(page, '-')} |"
                    )
                under = sum(st["median"] < 0.2 for st in case["stats"].values())
                lines += [
                    "",
                    f"- data: {case['data']}; {case['rounds']} rounds after {case['warm_up_rounds']} warm-up rounds",
                    f"- pages under 200 ms (median): **{under} of {len(case['stats'])}**",
                    f"- every page answered 200: {_f(case['targets']['every page answered 200'])}"
                    + (f" ({case['not_200']})" if case["not_200"] else ""),
                    f"- note: {case['note']}",
                    "",
                ]
                continue
            elif name == "webhooks":  # bench/load.py: open-loop signed Twilio webhooks while the scheduler ticks
                lat, chk = case["latency_ms"], case["db_check"]
                lines += [
                    "| requests | target/s | answered/s | p50 ms | p95 ms | p99 ms | max ms | errors | re-deliveries |",
                    "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
                    f"| {case['requests']:,} | {case['target_rate']} | {_f(case['achieved_rate'])} | "
                    f"{_f(lat['p50'])} | {_f(lat['p95'])} | {_f(lat['p99'])} | {_f(lat['max'])} | "
                    f"{case['errors'] or 0} | {case['duplicate_deliveries_sent']} |",
                    "",
                    f"- layout: {case['layout']}; client send lag ms: {case['client_send_lag_ms']}",
                    f"- in the database: {chk['recorded_once']:,} of {chk['message_sids']:,} MessageSids recorded "
                    f"once, {chk['recorded_twice_or_more']} twice, {chk['acknowledged_but_missing']} answered 200 but "
                    f"missing; {chk['outcomes']:,} outcomes for {chk['answers_recorded']:,} answers; "
                    f"{chk['stop_confirmations']} STOP confirmations for {chk['stops_recorded']} STOPs",
                    f"- the tick meanwhile: {case['tick_during_run']}",
                ]
            elif name == "sms":  # bench/sms.py: the TwilioAdapter against a local endpoint enforcing 1/s per sender
                lines += [
                    "| run | senders | messages | wall s | theoretical s | wall/theoretical | gap min s | gap median s "
                    "| gap max s | overruns | accepted once |",
                    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
                ]
                for run_name, r in case["runs"].items():
                    gaps = " | ".join(
                        f"{r['gap_s'][k]:.4f}" if k in r["gap_s"] else "-" for k in ("min", "median", "max")
                    )
                    lines.append(
                        f"| {run_name} | {r['senders']} | {r['messages']} | {r['wall_s']:.2f} | "
                        f"{r['theoretical_s']:.0f} | {r['wall/theoretical']:.4f} | {gaps} | {r['overruns']} | "
                        f"{_f(r['every_message_accepted_once'])} |"
                    )
                lines.append("")
                lines += [f"- note: {case['note']}"] + [f"- target {k}: {_f(v)}" for k, v in case["targets"].items()]
                lines.append("")
                continue
            elif name == "http" and "by_workers" in case:  # bench/load.py: wrk, queue against /healthz
                lines += [
                    "| uvicorn workers | path | req/s | p50 ms | p90 ms | p99 ms | non-2xx | socket errors |",
                    "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
                ]
                for n, r in case["by_workers"].items():
                    for path in ("queue", "healthz"):
                        w = r[path]
                        lines.append(
                            f"| {n} | {path} | {_f(w['requests_per_second'])} | {_f(w['p50_ms'])} | {_f(w['p90_ms'])} "
                            f"| {_f(w['p99_ms'])} | {w['non_2xx']} | {w['socket_errors']} |"
                        )
                lines += ["", f"- wrk: {case['wrk']}"]
            elif "stats" in case:
                lines += _stats_table(case["stats"])
            lines.append("")
            extra = {
                k: v
                for k, v in case.items()
                if k
                in (
                    "placements",
                    "groups",
                    "spells",
                    "duckdb_load_s",
                    "numbers_equal",
                    "placements_per_round",
                    "messages_per_round",
                    "setup",
                    "skipped",
                    "note",
                )
            }
            lines += [f"- {k}: {_f(v) if not isinstance(v, dict) else v}" for k, v in extra.items()]
            for k, per_path in case.items():
                if k.startswith("cpu_ms_per_email"):
                    lines += [f"- {k}:"]
                    lines += [
                        f"  - {path}: " + ", ".join(f"{side} {_f(ms)}" for side, ms in sides.items())
                        for path, sides in per_path.items()
                    ]
            lines += _targets(case)
            lines.append("")
    if result.get("size") != "L":
        lines += ["## Not measured here", "", "- Size L: `BENCH_SIZE=L`, see results/summary-L.md.", ""]
    return "\n".join(lines)


def write_summary(result: dict, path: Path, json_name: str) -> None:
    path.write_text(render(result, json_name), encoding="utf-8")


def merge(results: list[dict]) -> dict:
    """Several runs (e.g. SQLite, then PostgreSQL, each kept under 5 minutes) as one."""
    merged = dict(results[0]) | {"results": {}}
    for r in results:
        for kind, cases in r["results"].items():
            for name, case in cases.items():  # a later run's case replaces an earlier one's, case by case
                if isinstance(case, dict) and r.get("size") != merged.get("size"):
                    case = case | {"run_size": r.get("size")}
                cpu = r.get("machine", {}).get("cpu")
                if isinstance(case, dict) and cpu != merged["machine"].get("cpu"):
                    case = case | {"run_machine": f"{cpu}, {r['machine'].get('cpus')} CPUs"}
                merged["results"].setdefault(kind, {})[name] = case
        merged["started"] = min(merged["started"], r["started"])
        merged["finished"] = max(merged["finished"], r["finished"])
    return merged


if __name__ == "__main__":  # python -m bench.summary [--out FILE.md] bench/results/A.json [B.json ...]
    args = sys.argv[1:]
    out = None
    if args[:1] == ["--out"]:
        out, args = Path(args[1]), args[2:]
    files = [Path(a) for a in args]
    runs = [json.loads(f.read_text(encoding="utf-8")) for f in files]
    write_summary(merge(runs), out or files[0].parent / "summary.md", ", ".join(f.name for f in files))
