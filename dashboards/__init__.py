"""Grafana dashboards as code, the JSON they generate, and a report that renders them.

`dashboards.build` (needs the dev extra, grafana-foundation-sdk) writes `json/`;
everything else reads that JSON, so Grafana, the tests and `tillstream report` all
run exactly the same queries.
"""
