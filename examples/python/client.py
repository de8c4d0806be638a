"""A Python client for infergate, with stubs generated from proto/ by
grpcio-tools at start-up (stubs.py, into examples/python/generated/).

    python3 -m venv .venv && .venv/bin/pip install -r examples/python/requirements.txt
    infergate serve &
    .venv/bin/python examples/python/client.py story

Commands:
    unary    one Generate call, printing the text, usage and server timing
    stream   one GenerateStream call, printing text as it arrives
    story    the original scenario: two independent tasks under
             asyncio.gather, 8.29 s and 6.96 s in the story (829 ms and
             696 ms on the default models), printing each call's time and
             the total; with --check, exits 1 unless they overlapped
    all      unary, stream, then story
"""

import argparse
import asyncio
import sys
import time

from stubs import load_stubs  # examples/python/stubs.py

pb, pb_grpc = load_stubs()

import grpc  # noqa: E402  (after the stubs, which import it too)


def timing_line(timing):
    return (f"queue {timing.queue_wait_us / 1000:.1f} ms, backend {timing.backend_us / 1000:.1f} ms, "
            f"total {timing.total_us / 1000:.1f} ms")


async def unary(stub, model):
    response = await stub.Generate(pb.GenerateRequest(model=model, prompt="find papers on sepsis biomarkers"), timeout=30)
    print(f"Generate on {model}: {response.text!r}")
    print(f"  finish {pb.FinishReason.Name(response.finish_reason)}, tokens {response.usage.prompt_tokens} in / "
          f"{response.usage.completion_tokens} out; {timing_line(response.timing)}")


async def stream(stub, model):
    print(f"GenerateStream on {model}: ", end="", flush=True)
    request = pb.GenerateRequest(
        model=model,
        messages=[pb.Message(role="user", content="summarise the retrieved abstracts")],
        max_tokens=12,
    )
    async for chunk in stub.GenerateStream(request, timeout=30):
        if chunk.finish_reason == pb.FINISH_REASON_UNSPECIFIED:
            print(chunk.text, end="", flush=True)
        else:
            print(f"\n  finish {pb.FinishReason.Name(chunk.finish_reason)}, "
                  f"first token after {chunk.timing.time_to_first_token_us / 1000:.1f} ms; {timing_line(chunk.timing)}")


async def story(stub, model_a, model_b, check):
    async def task(name, model, prompt):
        start = time.perf_counter()
        response = await stub.Generate(pb.GenerateRequest(model=model, prompt=prompt), timeout=60)
        elapsed = time.perf_counter() - start
        print(f"{name} ({model}): {elapsed:.3f} s  [server: {timing_line(response.timing)}]")
        return elapsed

    start = time.perf_counter()
    a, b = await asyncio.gather(
        task("task A", model_a, "search the literature"),
        task("task B", model_b, "rank the abstracts"),
    )
    total = time.perf_counter() - start
    serial = a + b
    print(f"total: {total:.3f} s (one after the other: {serial:.3f} s; saved {100 * (1 - total / serial):.1f}%)")
    if check and total > 0.8 * serial:
        print("the calls did not overlap", file=sys.stderr)
        return 1
    return 0


async def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["unary", "stream", "story", "all"])
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--model", default="slow-a", help="model for unary")
    parser.add_argument("--stream-model", default="chat", help="model for stream")
    parser.add_argument("--model-a", default="slow-a")
    parser.add_argument("--model-b", default="slow-b")
    parser.add_argument("--check", action="store_true", help="story: exit 1 unless the calls overlapped")
    args = parser.parse_args()
    async with grpc.aio.insecure_channel(args.target) as channel:
        stub = pb_grpc.InferenceStub(channel)
        status = 0
        if args.command in ("unary", "all"):
            await unary(stub, args.model)
        if args.command in ("stream", "all"):
            await stream(stub, args.stream_model)
        if args.command in ("story", "all"):
            status = await story(stub, args.model_a, args.model_b, args.check)
        return status


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except grpc.aio.AioRpcError as error:
        sys.exit(f"infergate answered {error.code().name}: {error.details()}")
