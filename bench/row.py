"""One loadgen JSON report (stdin) as a markdown table row; argv[1] names the scenario."""
import json
import sys

d = json.load(sys.stdin)
l = d["latency_ms"]
print(
    "| {} | {} | {:,.0f} | {} / {} | {} / {} / {} / {} | {:.2f} | {:.1f} |".format(
        sys.argv[1], d["target"], d["deliveries_per_s"], d["lost"], d["duplicated"],
        l["p50"], l["p99"], l["p999"], l["max"], d["cpu_seconds"], d["rss_kib_per_connection"],
    )
)
