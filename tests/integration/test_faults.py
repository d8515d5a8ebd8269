"""Faults of the world around tillstream: it waits them out and loses nothing."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from producers.watcher import RESCAN_SECONDS
from tests.integration.test_end_to_end import assert_file_ends_at_truth, assert_matches_truth
from tests.pipeline import Pipeline
from tests.services.apache_kafka import ApacheKafka
from tillstream.sample_data import generate_sales

pytestmark = pytest.mark.integration

OUTAGE_SECONDS = 30


@pytest.fixture
def own_kafka(kafka_bootstrap: str) -> Iterator[ApacheKafka]:
    """A broker of this test's own, since the test stops it."""
    if not kafka_bootstrap:
        pytest.skip(
            "SKIPPED LOUDLY: the embedded broker keeps topics in memory, so stopping it is a "
            "restart of `up` (tested in test_restarts.py); a broker outage is tested with "
            "--broker apache"
        )
    kafka = ApacheKafka()
    kafka.start()
    yield kafka
    kafka.close()


def test_a_kafka_outage_mid_stream_is_waited_out_without_loss(
    own_kafka: ApacheKafka, tmp_path: Path
) -> None:
    source = tmp_path / "during-outage.csv"
    truth = generate_sales(source, 60_000, seed=51, order_id_prefix="K")
    pipeline = Pipeline(
        tmp_path / "run", {"kafka": {"bootstrap_servers": own_kafka.bootstrap_servers}}
    )
    try:
        pipeline.start()
        shutil.copy(source, pipeline.inbox / source.name)
        pipeline.wait_for(
            lambda: int(pipeline.scalar("SELECT count() FROM tillstream.sales")) > 1_000,
            120,
            "the first sales to be written",
        )
        own_kafka.kill()
        time.sleep(OUTAGE_SECONDS)  # the outage itself: nothing to wait for but the clock
        assert pipeline.health()["ok"], "tillstream must outlive a broker outage"
        own_kafka.start()

        assert_file_ends_at_truth(pipeline, source.name, truth)
        assert pipeline.stop() == 0
    finally:
        pipeline.close()


@contextlib.contextmanager
def unwritable(folders: list[Path]) -> Iterator[None]:
    """Folders nobody can add to or remove from, root included: root ignores permission
    bits, not the immutable flag, so as root it is `chattr +i`."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None:
            pytest.skip("SKIPPED LOUDLY: running as root without chattr, nothing is unwritable")
        subprocess.run(["chattr", "+i", *map(str, folders)], check=True)
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", *map(str, folders)], check=True)
        return
    modes = {folder: folder.stat().st_mode for folder in folders}
    for folder, mode in modes.items():
        folder.chmod(mode & ~0o222)
    try:
        yield
    finally:
        for folder, mode in modes.items():
            folder.chmod(mode)


def sales_count(pipeline: Pipeline) -> int:
    return int(pipeline.scalar("SELECT count() FROM tillstream.sales"))


def test_clickhouse_refusing_writes_for_30s_is_waited_out_without_loss(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """ClickHouse is chDB inside `up`, so it cannot be stopped apart from the pipeline,
    and the sink cannot run in a process of its own either (one process per chDB
    directory, and the watcher needs the history). What can fail for real is its
    storage: every table folder is made unwritable (immutable, as root) for 30 s, so
    each insert fails inside ClickHouse as on a full or read-only disk (code 1001). A
    server that cannot be reached raises OperationalError, which takes the same path.

    The outage starts while the first file's rows are on their way: the worker keeps
    cleaning them into Kafka, the sink retries its batch with backoff and consumes
    nothing more (memory stays flat). A file dropped during the outage waits: the
    watcher cannot record it in the history, so it publishes nothing yet.
    """
    before = tmp_path / "before-outage.csv"
    before_truth = generate_sales(before, 200_000, seed=52, order_id_prefix="C")
    during = tmp_path / "during-outage.csv"
    during_truth = generate_sales(during, 20_000, seed=53, order_id_prefix="D")
    pipeline.start()
    shutil.copy(before, pipeline.inbox / before.name)
    pipeline.wait_for(lambda: sales_count(pipeline) > 1_000, 120, "the first sales to be written")
    tables = sorted((pipeline.data_dir / "clickhouse" / "store").glob("*/*"))
    rss_before = pipeline.rss_bytes()
    with unwritable(tables):
        written = sales_count(pipeline)
        shutil.copy(during, pipeline.inbox / during.name)
        started = time.monotonic()
        rss_peak = rss_before
        while time.monotonic() - started < OUTAGE_SECONDS:
            rss_peak = max(rss_peak, pipeline.rss_bytes())
            time.sleep(1)  # the outage itself: nothing to wait for but the clock
        assert sales_count(pipeline) == written, "nothing can be written during the outage"
        retries = pipeline.metric("tillstream_sink_retries_total")
        assert pipeline.health()["ok"], "tillstream must outlive a ClickHouse outage"
    lifted = time.monotonic()
    assert_file_ends_at_truth(pipeline, before.name, before_truth)
    assert_file_ends_at_truth(pipeline, during.name, during_truth)
    recovered = time.monotonic() - lifted
    growth = (rss_peak - rss_before) / 2**20
    print(
        f"ClickHouse outage {OUTAGE_SECONDS}s: {retries:.0f} sink retries, RSS "
        f"{rss_before / 2**20:.0f} MiB before, +{growth:.0f} MiB at peak; both files done "
        f"{recovered:.1f}s after"
    )
    assert 0 < retries <= 30, "retries back off (0.1 s doubling, capped)"
    assert growth < 384, f"memory grew {growth:.0f} MiB while ClickHouse was away"
    assert pipeline.stop() == 0


def test_a_watched_folder_deleted_and_recreated_is_watched_again(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    pipeline.start()
    for n, how in enumerate(["in place", "recreated by hand", "recreated by tillstream"]):
        if how == "recreated by hand":
            shutil.rmtree(pipeline.inbox)
            pipeline.inbox.mkdir(exist_ok=True)  # often with the inode the old one had
        elif how == "recreated by tillstream":
            shutil.rmtree(pipeline.inbox)
            pipeline.wait_for(pipeline.inbox.is_dir, 30, "the inbox to be created again")
        source = tmp_path / f"inbox-{n}.csv"
        truth = generate_sales(source, 5_000, seed=70 + n, order_id_prefix=f"W{n}")
        dropped = time.monotonic()
        shutil.copy(source, pipeline.inbox / source.name)
        pipeline.wait_for_status(source.name, "processing", timeout=30)
        print(f"inbox {how}: file picked up {time.monotonic() - dropped:.1f}s after the drop")
        assert_file_ends_at_truth(pipeline, source.name, truth)
    noticed = re.findall(
        r"was deleted or moved|is missing; creating it|was replaced by a new folder",
        pipeline.log_tail(400),
    )
    assert len(noticed) >= 2, "each deletion is noticed and said"
    assert pipeline.stop() == 0


def test_an_archive_that_cannot_be_written_keeps_the_file_until_it_can(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    source = tmp_path / "kept.csv"
    truth = generate_sales(source, 5_000, seed=75, order_id_prefix="A")
    pipeline.archive.mkdir()
    pipeline.start()
    with unwritable([pipeline.archive]):
        shutil.copy(source, pipeline.inbox / source.name)
        row = pipeline.wait_for_status(source.name, "done")
        pipeline.wait_for(
            lambda: "cannot move" in pipeline.log_tail(), 30, "the archive error to be logged"
        )
        time.sleep(3 * RESCAN_SECONDS)  # the fault itself: the file is offered again meanwhile
        assert (pipeline.inbox / source.name).exists()
    pipeline.wait_for(
        lambda: (pipeline.archive / source.name).exists(), 30, "the file to be archived"
    )
    assert not (pipeline.inbox / source.name).exists()
    log = pipeline.log_file.read_text(errors="replace")
    errors = [line for line in log.splitlines() if "cannot move" in line]
    assert len(errors) == 1, errors
    assert f"cannot move {pipeline.inbox / source.name} to {pipeline.archive}: " in errors[0]
    assert errors[0].endswith("; it stays in the inbox and is tried again")
    tries = re.search(rf"moved {source.name} to .* after (\d+) failed tries", log)
    assert tries is not None and int(tries[1]) >= 2
    print(f"archive unwritable: {tries[1]} tries to move, one error line, then archived")
    assert [r["source_name"] for r in pipeline.status()] == [row["source_name"]]
    assert_matches_truth(pipeline, row["source_id"], truth)
    assert sales_count(pipeline) == truth.valid
    assert pipeline.stop() == 0


def test_messages_too_large_for_the_broker_are_split_or_quarantined_not_a_stopped_worker(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    """Long product names make the cleaning stage's messages about twice the size of the
    raw chunk (each row travels as received and as cleaned): with one partition, every
    validated message of this file is over the 1 MiB a broker takes at its defaults,
    and one row alone is. Before, the clean agent stopped at the first of them on Apache
    Kafka. Messages are now kept under that size whatever the broker, so the embedded
    one (which takes any size) gives the same outcome."""
    pipeline = make_pipeline(config={"kafka": {"partitions": 1}})
    pipeline.start()
    rows = [f"L-{n},2025-03-01,Lamp {'x' * 4000},1,$10.00" for n in range(600)]
    rows.append(f"HUGE-1,2025-03-01,Lamp {'y' * 600_000},1,$10.00")
    (pipeline.inbox / "wide.csv").write_text(
        "OrderID,Date,Product,Qty,Price\n" + "\n".join(rows) + "\n", encoding="utf-8"
    )
    row = pipeline.wait_for_status("wide.csv", "done")
    assert (row["rows_read"], row["valid"], row["rejected"]) == (601, 600, 1)
    assert row["rejected_by_reason"] == {"message_too_large": 1}
    letter = pipeline.query(
        "SELECT reasons, line, length(original) FROM tillstream.quarantine FINAL"
    )
    assert letter[0][:2] == [["message_too_large"], 602]
    assert int(letter[0][2]) < 2**16
    assert pipeline.health()["ok"]
    assert pipeline.stop() == 0
