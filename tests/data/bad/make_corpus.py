#!/usr/bin/env python3
"""Writes the bad-input corpus of tests/integration/decoding.rs: one file per case, plus MANIFEST.tsv.

The Avro bodies are encoded by hand against schemas/order_event.avsc (local schema id 1 in
schemas/registry.json), independently of the Rust encoders, so the corpus also checks that the
decoder reads spec-conformant Avro. Deterministic: rerunning it rewrites identical files.

    python3 tests/data/bad/make_corpus.py
"""

import os
import random
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def zigzag(n: int) -> bytes:
    """Avro int/long: zigzag, then little-endian base-128 varint."""
    z = (n << 1) ^ (n >> 63)
    z &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = z & 0x7F
        z >>= 7
        if z:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def string(s) -> bytes:
    raw = s if isinstance(s, bytes) else s.encode("utf-8")
    return zigzag(len(raw)) + raw


TYPES = ["CREATED", "UPDATED", "CONFIRMED", "SHIPPED", "DELIVERED", "CANCELLED"]

GOOD_ITEM = {"sku": "sku-1", "category_id": "cat-1", "quantity": 2, "unit_price_cents": 600}
GOOD = {
    "event_id": "0b7c6f4e-8f7a-4c61-9d0e-2f3b1a0c9d11",
    "tenant_id": "6f1d2c3b-4a59-4e6f-8a7b-9c0d1e2f3a4b",
    "order_id": "o-1",
    "version": 1,
    "type": "CREATED",
    "occurred_at": 1_700_000_000_000,
    "customer_id": "c-1",
    "currency": "EUR",
    "total_cents": 1200,
    "items": [GOOD_ITEM],
}


def head(event) -> bytes:
    """Every field of OrderEvent before `items`."""
    return (
        string(event["event_id"])
        + string(event["tenant_id"])
        + string(event["order_id"])
        + zigzag(event["version"])
        + zigzag(TYPES.index(event["type"]) if isinstance(event["type"], str) else event["type"])
        + zigzag(event["occurred_at"])
        + string(event["customer_id"])
        + string(event["currency"])
        + zigzag(event["total_cents"])
    )


def item(i) -> bytes:
    return (
        string(i["sku"])
        + string(i["category_id"])
        + zigzag(i["quantity"])
        + zigzag(i["unit_price_cents"])
    )


def body(**changes) -> bytes:
    event = dict(GOOD, **changes)
    items = event["items"]
    encoded = head(event)
    if items:
        encoded += zigzag(len(items)) + b"".join(item(i) for i in items)
    return encoded + zigzag(0)


def with_item(**changes):
    return [dict(GOOD_ITEM, **changes)]


def confluent(schema_id: int, payload: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", schema_id) + payload


def single_object(fingerprint: bytes, payload: bytes) -> bytes:
    assert len(fingerprint) == 8
    return b"\xc3\x01" + fingerprint + payload


def garbage() -> bytes:
    rng = random.Random(20261127)
    data = bytearray(rng.getrandbits(8) for _ in range(64))
    data[0] = 0x5A  # neither 0x00 (Confluent) nor 0xC3 (single-object)
    return bytes(data)


# (file, bytes, expected code, field named by InvalidField or "")
CASES = [
    # Framing.
    ("empty.bin", b"", "undecodable", ""),
    ("json_text.bin", b'{"event_id": "0b7c6f4e-8f7a-4c61-9d0e-2f3b1a0c9d11", "version": 1}\n', "undecodable", ""),
    ("garbage.bin", garbage(), "undecodable", ""),
    ("confluent_magic_only.bin", b"\x00", "undecodable", ""),
    ("confluent_short_id.bin", b"\x00\x00\x00", "undecodable", ""),
    ("confluent_header_only.bin", confluent(1, b""), "undecodable", ""),
    ("confluent_unknown_id_9999.bin", confluent(9999, body()), "unknown_schema", ""),
    ("single_object_unknown_fingerprint.bin", single_object(bytes.fromhex("deadbeefcafef00d"), body()), "unknown_schema", ""),
    ("single_object_too_short.bin", b"\xc3\x01\x01\x02\x03", "undecodable", ""),
    ("single_object_marker_only.bin", b"\xc3\x01", "undecodable", ""),
    ("single_object_bad_version.bin", b"\xc3\x02" + bytes(8) + body(), "undecodable", ""),
    # Avro body.
    ("truncated_body.bin", confluent(1, body()[:40]), "undecodable", ""),
    ("truncated_in_last_item.bin", confluent(1, body()[:-3]), "undecodable", ""),
    ("trailing_bytes.bin", confluent(1, body() + b"TRAILING"), "undecodable", ""),
    ("string_length_past_end.bin", confluent(1, zigzag(1000) + b"0b7c6f4e"), "undecodable", ""),
    ("string_length_huge.bin", confluent(1, zigzag(1 << 62) + b"0b7c6f4e"), "undecodable", ""),
    ("string_length_negative.bin", confluent(1, zigzag(-5) + body()), "undecodable", ""),
    ("string_invalid_utf8.bin", confluent(1, body(order_id=b"o-\xff\xfe")), "undecodable", ""),
    ("enum_index_out_of_range.bin", confluent(1, body(type=6)), "undecodable", ""),
    ("enum_index_negative.bin", confluent(1, body(type=-1)), "undecodable", ""),
    ("array_count_huge.bin", confluent(1, head(GOOD) + zigzag(1 << 62) + item(GOOD_ITEM) + zigzag(0)), "too_large", ""),
    ("array_count_i64_min.bin", confluent(1, head(GOOD) + zigzag(-(1 << 63)) + zigzag(30) + item(GOOD_ITEM) + zigzag(0)), "too_large", ""),
    ("array_unterminated.bin", confluent(1, head(GOOD) + zigzag(1) + item(GOOD_ITEM)), "undecodable", ""),
    # version: 32 bytes with the continuation bit set, then the rest of a good event.
    ("varint_never_terminates.bin", confluent(1, body().replace(string("o-1") + zigzag(1), string("o-1") + b"\xff" * 32 + zigzag(1), 1)), "undecodable", ""),
    # version = 1, but as an 11-byte varint (a 64-bit varint has at most 10 bytes).
    ("varint_overlong_11_bytes.bin", confluent(1, head(GOOD).replace(zigzag(1) + zigzag(0) + zigzag(GOOD["occurred_at"]), b"\x82" + b"\x80" * 9 + b"\x00" + zigzag(0) + zigzag(GOOD["occurred_at"]), 1) + zigzag(0)), "undecodable", ""),
    ("int_overflows_i32.bin", confluent(1, head(GOOD) + zigzag(1) + string("sku-1") + string("cat-1") + zigzag(1 << 31) + zigzag(600) + zigzag(0)), "undecodable", ""),
    # Well-formed Avro, but fields validate() rejects.
    ("tenant_id_not_uuid.bin", confluent(1, body(tenant_id="not-a-tenant")), "invalid_field", "tenant_id"),
    ("event_id_empty.bin", confluent(1, body(event_id="")), "invalid_field", "event_id"),
    ("quantity_negative.bin", confluent(1, body(items=with_item(quantity=-3))), "invalid_field", "items[0].quantity"),
    ("unit_price_negative.bin", confluent(1, body(items=with_item(unit_price_cents=-1))), "invalid_field", "items[0].unit_price_cents"),
    ("total_negative.bin", confluent(1, body(total_cents=-1200)), "invalid_field", "total_cents"),
    ("version_negative.bin", confluent(1, body(version=-1)), "invalid_field", "version"),
    ("version_above_2_pow_53.bin", confluent(1, body(version=2**53 + 1)), "invalid_field", "version"),
    ("occurred_at_after_year_9999.bin", confluent(1, body(occurred_at=2**62)), "invalid_field", "occurred_at"),
    ("occurred_at_before_1970.bin", confluent(1, body(occurred_at=-1)), "invalid_field", "occurred_at"),
    ("currency_unknown_xxy.bin", confluent(1, body(currency="XXY")), "invalid_field", "currency"),
    ("currency_lowercase.bin", confluent(1, body(currency="eur")), "invalid_field", "currency"),
    ("order_id_blank.bin", confluent(1, body(order_id="   ")), "invalid_field", "order_id"),
    ("order_id_201_chars.bin", confluent(1, body(order_id="o" * 201)), "invalid_field", "order_id"),
    ("order_id_nul.bin", confluent(1, body(order_id="o-\x001")), "invalid_field", "order_id"),
    ("customer_id_nul.bin", confluent(1, body(customer_id="c\x00")), "invalid_field", "customer_id"),
    ("sku_nul.bin", confluent(1, body(items=with_item(sku="sku\x00-1"))), "invalid_field", "items[0].sku"),
    ("category_id_nul.bin", confluent(1, body(items=with_item(category_id="\x00"))), "invalid_field", "items[0].category_id"),
    ("sku_empty.bin", confluent(1, body(items=with_item(sku=""))), "invalid_field", "items[0].sku"),
]


def main():
    names = [name for name, *_ in CASES]
    assert len(names) == len(set(names)), "duplicate file names"
    for name, data, _, _ in CASES:
        with open(os.path.join(HERE, name), "wb") as f:
            f.write(data)
    with open(os.path.join(HERE, "MANIFEST.tsv"), "w") as f:
        f.write("# file\texpected dead-letter code\tfield named by InvalidField (invalid_field only)\n")
        f.write("# Generated by make_corpus.py; read by tests/integration/decoding.rs.\n")
        for name, _, code, field in CASES:
            f.write("\t".join([name, code, field]).rstrip("\t") + "\n")


if __name__ == "__main__":
    main()
