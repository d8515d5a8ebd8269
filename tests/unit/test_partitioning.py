"""Our partitioner must place every key where Kafka's default partitioner would."""

from __future__ import annotations

from aiokafka.partitioner import murmur2
from hypothesis import given, settings
from hypothesis import strategies as st

from producers.publisher import partition_for, partitions_for


def kafka_partition(key: bytes, partitions: int) -> int:
    """The Java client's rule, with aiokafka's reference murmur2."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


@settings(max_examples=300, deadline=None)
@given(keys=st.lists(st.binary(max_size=40), max_size=50), partitions=st.integers(1, 1024))
def test_partitions_for_equals_kafkas_partitioner_for_any_keys(
    keys: list[bytes], partitions: int
) -> None:
    expected = [kafka_partition(key, partitions) for key in keys]
    assert partitions_for(keys, partitions).tolist() == expected


@settings(max_examples=100, deadline=None)
@given(key=st.text(max_size=30), partitions=st.integers(1, 64))
def test_partition_for_one_order_id_equals_kafkas(key: str, partitions: int) -> None:
    encoded = key.encode()
    assert partition_for(encoded, partitions) == kafka_partition(encoded, partitions)


JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}
"""Kafka's own test vectors (UtilsTest.testMurmur2), so aiokafka cannot drift unnoticed."""


def test_the_java_clients_test_vectors() -> None:
    keys = list(JAVA_MURMUR2)
    assert partitions_for(keys, 2**31).tolist() == [
        value & 0x7FFFFFFF for value in JAVA_MURMUR2.values()
    ]
