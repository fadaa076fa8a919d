"""Scrapes a /metrics endpoint and prints its samples as JSON, after parsing the body
with the Prometheus project's own OpenMetrics parser (which refuses anything that is
not valid OpenMetrics text, `# EOF` included). Exits 1 with the reason otherwise."""

import json
import sys
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families

with urllib.request.urlopen(sys.argv[1], timeout=10) as answer:
    content_type = answer.headers.get("content-type", "")
    text = answer.read().decode()
if not content_type.startswith("application/openmetrics-text"):
    sys.exit(f"content-type {content_type!r} is not OpenMetrics")
samples = []
for family in text_string_to_metric_families(text):
    for s in family.samples:
        samples.append(
            {"name": s.name, "labels": s.labels, "value": s.value, "type": family.type}
        )
print(json.dumps(samples))
