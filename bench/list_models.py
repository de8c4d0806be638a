"""Prints a gateway's ListModels answer as JSON (one object per model, keyed
by name; proto field names), for the benchmark suite (S7 reads
`backend_calls` before and after a run). Run with a Python that has grpcio
and grpcio-tools (bench/run.sh's virtualenv); the stubs are generated from
proto/ into --stubs at the first use.

    python bench/list_models.py --stubs /tmp/stubs 127.0.0.1:50051
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def load_stubs(folder):
    proto = os.path.join(ROOT, "proto", "infergate", "v1", "inference.proto")
    target = os.path.join(folder, "infergate", "v1", "inference_pb2_grpc.py")
    if not os.path.exists(target) or os.path.getmtime(target) < os.path.getmtime(proto):
        from grpc_tools import protoc

        os.makedirs(folder, exist_ok=True)
        code = protoc.main(["grpc_tools.protoc", f"-I{os.path.join(ROOT, 'proto')}",
                            f"--python_out={folder}", f"--grpc_python_out={folder}", proto])
        if code != 0:
            sys.exit(f"protoc failed with exit code {code}")
    sys.path.insert(0, folder)
    from infergate.v1 import inference_pb2, inference_pb2_grpc

    return inference_pb2, inference_pb2_grpc


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("target", help="host:port of the gateway")
    parser.add_argument("--stubs", required=True, help="folder for the generated stubs")
    args = parser.parse_args()
    pb, pb_grpc = load_stubs(args.stubs)
    import grpc

    with grpc.insecure_channel(args.target) as channel:
        answer = pb_grpc.InferenceStub(channel).ListModels(pb.ListModelsRequest(), timeout=10)
    # Scalars and lists of scalars, zeros included (every protobuf version).
    models = {}
    for m in answer.models:
        models[m.name] = {}
        for field in m.DESCRIPTOR.fields:
            if field.message_type is not None:
                continue
            value = getattr(m, field.name)
            models[m.name][field.name] = value if isinstance(value, (bool, int, float, str)) else list(value)
    print(json.dumps(models))


if __name__ == "__main__":
    main()
