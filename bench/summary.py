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


def render(result: dict, json_name: str) -> str:
    m = result["machine"]
    lines = [
        "# Benchmark summary",
        "",
        f"Size **{result['size']}**, run {result['started'][:19]}Z to {result['finished'][:19]}Z; raw figures in "
        f"bench/results/ ({json_name}). Reproduce with `make bench` (`BENCH_SIZE=S|M`, `python -m bench.run --quick`).",
        "",
        f"Machine: {m.get('cpu', '?')}, {m.get('cpus')} CPUs, {m.get('memory_gb', '?')} GB; {m.get('platform')}; "
        f"Python {m.get('python')}, SQLite {m.get('sqlite')}, PostgreSQL {m.get('postgresql')} (local, defaults).",
        "",
        "**Taken on a shared machine** (2 cores shared with other jobs running tests at the same time): absolute "
        "figures are noisy and indicative; the ratios, measured side by side in the same run, are the point.",
        "",
        f"Sizes: `{json.dumps(result['sizes'])}`. What each case compares, and where the time goes: "
        "[bench/README.md](../README.md).",
        "",
    ]
    for kind, cases in result["results"].items():
        for name, case in cases.items():
            if case is None:
                continue
            lines += [f"## {name} — {kind}", "", f"Unit: {case.get('unit', '')}", ""]
            if name == "queue":
                lines += [
                    "| total placements | follow-ups | items | ours median | ours p95 | raw median | raw p95 |",
                    "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
                ]
                for n, r in case["by_total_placements"].items():
                    lines.append(
                        f"| {int(n):,} | {r['follow_ups']:,} | {r['items_per_queue']} | {_f(r['ours_s']['median'])} | "
                        f"{_f(r['ours_s']['p95'])} | {_f(r['raw_s']['median'])} | {_f(r['raw_s']['p95'])} |"
                    )
            elif name == "dispatch":
                lines += [
                    "| path | messages/jobs | seconds | per second | duplicates | peak RSS MB |",
                    "| --- | ---: | ---: | ---: | ---: | ---: |",
                ]
                for key in ("ours_1_process", "ours_4_processes", "ours_1_process_fifth_size"):
                    r = case[key]
                    lines.append(
                        f"| {key} | {r['messages']:,} | {_f(r['seconds_dispatching'])} | "
                        f"{_f(r['per_second'])} | {r['duplicates']} | {_f(r['peak_rss_mb'])} |"
                    )
                a = case["apscheduler_sqlalchemy_jobstore"]
                lines.append(
                    f"| APScheduler 3 (job per follow-up): load {_f(a['seconds_to_load'])} s, then fire | "
                    f"{a['jobs']:,} | {_f(a['seconds_to_fire_all'])} | {_f(a['per_second'])} | "
                    f"{a['duplicates']} | {_f(a['peak_rss_mb'])} |"
                )
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
                    "duckdb_load_s",
                    "numbers_equal",
                    "placements_per_round",
                    "messages_per_round",
                    "note",
                )
            }
            lines += [f"- {k}: {_f(v) if not isinstance(v, dict) else v}" for k, v in extra.items()]
            lines += _targets(case)
            lines.append("")
    lines += [
        "## Not measured yet",
        "",
        "- (4) signed webhooks at 200/s while the tick runs, (5b) SMS pacing against a rate-enforcing endpoint, "
        "(7) the HTTP queue endpoint under wrk/locust, and size L.",
        "",
    ]
    return "\n".join(lines)


def write_summary(result: dict, path: Path, json_name: str) -> None:
    path.write_text(render(result, json_name), encoding="utf-8")


def merge(results: list[dict]) -> dict:
    """Several runs (e.g. SQLite, then PostgreSQL, each kept under 5 minutes) as one."""
    merged = dict(results[0]) | {"results": {}}
    for r in results:
        merged["results"].update(r["results"])
        merged["started"] = min(merged["started"], r["started"])
        merged["finished"] = max(merged["finished"], r["finished"])
    return merged


if __name__ == "__main__":  # python -m bench.summary bench/results/A.json [B.json ...]
    files = [Path(a) for a in sys.argv[1:]]
    runs = [json.loads(f.read_text(encoding="utf-8")) for f in files]
    write_summary(merge(runs), files[0].parent / "summary.md", ", ".join(f.name for f in files))
