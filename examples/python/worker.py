"""An infergate process worker: a stand-in for your synchronous LLM call.

Run through the gateway with examples/process.toml:

    infergate serve --config examples/process.toml

Replace `fake_llm_call` with your own blocking call (an agent framework's
`llm.call(messages)`, a local model, an HTTP client): each of the model's
`workers` processes runs one call at a time, and they run side by side.
"""

import os
import sys
import time

# The worker library is one standard-library file: copy it next to your
# worker, or point sys.path at infergate's python/ directory as here.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))

from infergate_worker import serve  # noqa: E402


def fake_llm_call(text):
    """Blocks like a remote model would, then answers."""
    time.sleep(0.5)
    return f"[{os.getpid()}] you said: {text}"


def generate(request):
    if request.get("max_tokens"):
        # Streaming form: yield tokens; the client sees them as they come.
        def tokens():
            for word in fake_llm_call(request.text).split():
                if request.cancelled:
                    return
                time.sleep(0.05)
                yield word + " "
        return tokens()
    return fake_llm_call(request.text)


# Load your model here, before serve(): serve() sends the gateway the ready
# line, and the worker counts as started (within the model's
# start_timeout_ms) only then.
serve(generate)
