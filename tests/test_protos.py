"""The committed stubs in ``intent_embed/v1`` must be exactly what ``make protos`` generates."""

from __future__ import annotations

from pathlib import Path

from intent_embed import codegen


def test_generated_stubs_match_the_proto_files(tmp_path: Path) -> None:
    written = codegen.generate(tmp_path)
    assert written, "no .proto files found under protos/"
    stale = []
    for fresh in written:
        committed = codegen.REPO_ROOT / fresh.relative_to(tmp_path)
        if not committed.exists() or committed.read_bytes() != fresh.read_bytes():
            stale.append(str(committed.relative_to(codegen.REPO_ROOT)))
    assert not stale, f"stubs are stale against protos/, run `make protos`: {stale}"


def test_stubs_import_from_the_single_generated_package() -> None:
    from intent_embed.v1 import embed_pb2, embed_pb2_grpc, metering_pb2, metering_pb2_grpc

    assert embed_pb2.EmbedRequest.DESCRIPTOR.full_name == "intent_embed.v1.EmbedRequest"
    assert hasattr(embed_pb2_grpc, "EmbedServiceStub")
    assert metering_pb2.UsageEvent.DESCRIPTOR.fields_by_name["event_id"].number == 1
    assert hasattr(metering_pb2_grpc, "MeteringServiceStub")
