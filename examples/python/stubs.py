"""The infergate.v1 stubs, generated from proto/ by grpcio-tools on first
use (into examples/python/generated/), shared by client.py and batch.py."""

import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
GENERATED = os.path.join(HERE, "generated")


def load_stubs():
    """Generates (if needed) and imports the infergate.v1 stubs."""
    proto = os.path.join(ROOT, "proto", "infergate", "v1", "inference.proto")
    target = os.path.join(GENERATED, "infergate", "v1", "inference_pb2_grpc.py")
    if not os.path.exists(target) or os.path.getmtime(target) < os.path.getmtime(proto):
        from grpc_tools import protoc

        # Into a scratch folder, then renamed into place (the _grpc module,
        # checked above, last): two clients starting at once never import
        # a half-written file.
        os.makedirs(GENERATED, exist_ok=True)
        scratch = tempfile.mkdtemp(dir=GENERATED)
        try:
            code = protoc.main([
                "grpc_tools.protoc",
                f"-I{os.path.join(ROOT, 'proto')}",
                f"--python_out={scratch}",
                f"--grpc_python_out={scratch}",
                proto,
            ])
            if code != 0:
                sys.exit(f"protoc failed with exit code {code}")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            for name in ("inference_pb2.py", "inference_pb2_grpc.py"):
                os.replace(os.path.join(scratch, "infergate", "v1", name),
                           os.path.join(GENERATED, "infergate", "v1", name))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    sys.path.insert(0, GENERATED)
    from infergate.v1 import inference_pb2, inference_pb2_grpc

    return inference_pb2, inference_pb2_grpc
