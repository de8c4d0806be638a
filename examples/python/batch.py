"""The original pair (slow-a, 829 ms, and slow-b, 696 ms, on the default
models) in one GenerateBatch call from a plain synchronous grpcio client:
each item prints as it finishes, then the server's summary.

    .venv/bin/python examples/python/batch.py [--target 127.0.0.1:50051] [--check]

With --check, exits 1 unless the batch took at most 0.84 s as the client
measured it and the 696 ms item arrived before the 829 ms one.
"""

import argparse
import sys
import time

from stubs import load_stubs  # examples/python/stubs.py

pb, pb_grpc = load_stubs()

import grpc  # noqa: E402  (after the stubs, which import it too)

# (name, model, prompt): the story's two tasks, 8.29 s and 6.96 s there.
PAIR = [("task A", "slow-a", "search the literature"), ("task B", "slow-b", "rank the abstracts")]
LIMIT_S = 0.84  # the longer call (829 ms) plus 11 ms, not the sum (1.525 s)


def run(stub):
    """One GenerateBatch call; returns (the item indexes in arrival order,
    how many succeeded, the summary, the client's wall time)."""
    request = pb.GenerateBatchRequest(items=[pb.GenerateRequest(model=m, prompt=p) for _, m, p in PAIR])
    order, ok, summary = [], 0, None
    start = time.perf_counter()
    for message in stub.GenerateBatch(request, timeout=30):
        after = time.perf_counter() - start
        kind = message.WhichOneof("result")
        if kind == "summary":
            summary = message.summary
            continue
        name, model, _ = PAIR[message.index]
        order.append(message.index)
        if kind == "response":
            ok += 1
            t = message.response.timing
            print(f"{name} (item {message.index}, {message.response.model}): {t.total_us / 1e6:.3f} s  "
                  f"[server: queue {t.queue_wait_us / 1000:.1f} ms, backend {t.backend_us / 1000:.1f} ms; "
                  f"arrived after {after:.3f} s]", flush=True)
        else:
            print(f"{name} (item {message.index}, {model}): {message.error.code_name}: {message.error.message}  "
                  f"[arrived after {after:.3f} s]", flush=True)
    wall = time.perf_counter() - start
    if summary is not None:
        print(f"summary: wall {summary.wall_us / 1e6:.3f} s, sum {summary.sum_us / 1e6:.3f} s, "
              f"saved {summary.saved_us / 1e6:.3f} s ({100 * summary.saved_fraction:.1f}%); "
              f"{summary.succeeded} of {summary.items} items succeeded")
    print(f"client: {wall:.3f} s wall")
    return order, ok, summary, wall


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--check", action="store_true",
                        help=f"exit 1 unless the pair took <= {LIMIT_S} s and the 696 ms item came first")
    args = parser.parse_args()
    with grpc.insecure_channel(args.target) as channel:
        # Connect first: the clock times the batch, not the TCP and HTTP/2
        # handshakes.
        try:
            grpc.channel_ready_future(channel).result(timeout=10)
        except grpc.FutureTimeoutError:
            return f"cannot connect to {args.target}"
        order, ok, summary, wall = run(pb_grpc.InferenceStub(channel))
    if not args.check:
        return 0
    problems = []
    if ok != len(PAIR):
        problems.append(f"{ok} of {len(PAIR)} items succeeded")
    if summary is None:
        problems.append("no summary")
    if order != [1, 0]:
        problems.append(f"items arrived in the order {order}, not [1, 0] (the 696 ms item first)")
    if wall > LIMIT_S:
        problems.append(f"the batch took {wall:.3f} s, over {LIMIT_S} s")
    for problem in problems:
        print(f"check failed: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except grpc.RpcError as error:
        sys.exit(f"infergate answered {error.code().name}: {error.details()}")
