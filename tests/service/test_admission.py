"""The admission API on its own (``service/admission.py``) and the gRPC interceptor on a
streaming RPC: a stream is authenticated at its start (its messages are never read when the
token is wrong), each message takes a slot through ``admission.slot(current_call.get())``, and
a draining server refuses new streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from service.admission import Admission, current_call, decimal
from service.auth import TokenChecker
from service.errors import NotReadyError, OverloadedError
from service.grpc_server import AdmissionInterceptor
from service.loader import load_settings
from service.metrics import Metrics


class Plane:
    draining = False


def admission(**settings: Any) -> Admission:
    s = load_settings(models=[], **settings)
    return Admission(s, Metrics(), TokenChecker([b"tok"]), Plane())  # type: ignore[arg-type]


def test_fair_share_and_header_integers() -> None:
    """With ``fair_share`` a client holding limit / clients slots is refused while others get
    theirs; alone, a client may use the whole limit. ``decimal`` takes ASCII digits only."""
    adm = admission(max_concurrent_requests=4, fair_share=True)
    for _ in range(3):
        adm.acquire("a")  # alone: a takes 3 of 4
    adm.acquire("b")  # b's first slot
    adm.release("a")
    with pytest.raises(OverloadedError, match="fair share"):
        adm.acquire("a")  # two clients: a's share is 2 and it holds 2
    adm.acquire("b")  # b is under its share
    assert adm.by_client == {"a": 2, "b": 2}
    assert decimal("123") == 123
    for bad in ("\u00b2", "\u0661", "-1", "1.0", "", "9" * 19, " 1"):
        assert decimal(bad) is None, bad


def test_streaming_rpc_through_the_interceptor() -> None:
    adm = admission(max_concurrent_requests=2)
    seen: list[int] = []

    async def echo(requests: Any, context: Any) -> AsyncIterator[bytes]:
        stream = current_call.get()
        assert stream is not None
        async for msg in requests:  # per-message admission: the streaming servicer's part
            async with adm.message(stream, f"m-{msg.decode()}", "grpc:ModelStreamInfer"):
                seen.append(adm.active)
                yield msg

    async def scenario() -> dict[str, Any]:
        server = grpc.aio.server(interceptors=[AdmissionInterceptor(adm)])
        handler = grpc.stream_stream_rpc_method_handler(echo)
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("test.Svc", {"ModelStreamInfer": handler})]
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        out: dict[str, Any] = {}
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stream = ch.stream_stream("/test.Svc/ModelStreamInfer")
            ok = stream(iter([b"a", b"b"]), metadata=[("authorization", "Bearer tok")])
            out["ok"] = [m async for m in ok]
            for name, meta in (("none", []), ("wrong", [("authorization", "Bearer x")])):
                try:
                    [m async for m in stream(iter([b"x" * 1000]), metadata=meta)]
                except grpc.aio.AioRpcError as err:
                    out[name] = err.code()
            Plane.draining = True
            try:
                [m async for m in stream(iter([b"a"]), metadata=[("authorization", "Bearer tok")])]
            except grpc.aio.AioRpcError as err:
                out["draining"] = err.code()
            finally:
                Plane.draining = False
        await server.stop(None)
        return out

    out = asyncio.run(scenario())
    assert out["ok"] == [b"a", b"b"] and seen == [1, 1] and adm.active == 0
    text = adm.metrics.render().decode()
    # each request of the stream is counted as a request; the stream on its own line
    assert 'sepvit_requests_total{code="OK",route="grpc:ModelStreamInfer"} 2.0' in text
    assert 'sepvit_requests_total{code="OK",route="grpc:ModelStreamInfer:stream"} 1.0' in text
    assert 'code="UNAUTHENTICATED",route="grpc:ModelStreamInfer:stream"} 1.0' in text
    assert out["none"] == grpc.StatusCode.UNAUTHENTICATED
    assert out["wrong"] == grpc.StatusCode.PERMISSION_DENIED
    assert out["draining"] == grpc.StatusCode.UNAVAILABLE
    assert adm.calls == set()


def test_stream_message_refused_while_draining_or_full() -> None:
    adm = admission(max_concurrent_requests=1)
    stream = adm.open("grpc", "rpc", "/x/ModelStreamInfer", {"authorization": "Bearer tok"}, None)

    async def use() -> None:
        async with adm.message(stream, "r1", "grpc:ModelStreamInfer") as call:
            assert call.request_id == "r1" and call.client == stream.client
            with pytest.raises(OverloadedError):
                async with adm.message(stream, "r2", "grpc:ModelStreamInfer"):
                    pass
        Plane.draining = True
        try:
            with pytest.raises(NotReadyError):
                async with adm.message(stream, "r3", "grpc:ModelStreamInfer"):
                    pass
        finally:
            Plane.draining = False

    asyncio.run(use())
    adm.close(stream, "OK", "grpc:ModelStreamInfer")
    assert adm.active == 0 and not adm.by_client and not adm.calls
    text = adm.metrics.render().decode()
    assert 'code="RESOURCE_EXHAUSTED"' not in text  # overload is UNAVAILABLE, as unary
    assert 'sepvit_requests_total{code="UNAVAILABLE",route="grpc:ModelStreamInfer"} 2.0' in text
