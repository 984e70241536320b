"""bench/scale.py runs end to end with tiny sizes (so the benchmark cannot rot)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from bench import scale

POSTGRES_URL = os.environ.get(
    "IDEMPOTENCE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
MYSQL_URL = os.environ.get("IDEMPOTENCE_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")


def test_scale_bench_runs_end_to_end(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n<!-- notes -->\nkept\n")
    table = f"bench_scale_test_{os.getpid()}"
    argv = ["--sizes", "100", "--callers", "1,2", "--rounds", "1", "--calls", "4",
            "--purge-seconds", "0.2", "--purge-batch", "3", "--table", table,
            "--postgres", POSTGRES_URL, "--mysql", MYSQL_URL,
            "--json", str(tmp_path / "scale.json"), "--plot", str(tmp_path / "img" / "s.png"),
            "--docs", str(docs)]  # fmt: skip
    results = scale.main(argv)

    stores = {r["store"] for r in results["rows"]}
    assert stores == {"sqlite", "postgres", "mysql", "postgres (asyncio)"}
    # every store x callers x mode measured
    assert len(results["rows"]) == 4 * 1 * 2 * 2
    assert all(r["latency_us"] > 0 and r["throughput"] > 0 for r in results["rows"])
    # the seeded expired records (1 in 10 of 100) were purged in batches of 3, nothing else
    for purge in results["purge"]:
        assert purge["expired_before"] == purge["deleted"] == 10, purge
        assert purge["batches"] == 4, purge
    assert json.loads((tmp_path / "scale.json").read_text())["rows"] == results["rows"]
    assert (tmp_path / "img" / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = docs.read_text()
    assert "<!-- notes -->\nkept\n" in text
    assert "](img/s.png)" in text
    assert text.count("<!-- scale -->") == 1
    scale.write_markdown(docs, tmp_path / "img" / "s.png", results)  # rewritten in place
    assert docs.read_text().count("<!-- scale -->") == 1
