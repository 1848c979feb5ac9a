"""A Python agent that publishes its run with the agentwire publisher.

    pip install ./clients/python && agentwire serve     # then, in another shell:
    python examples/python_agent.py                     # watch thread_demo as alice on the chat page
"""

import os

from agentwire import Publisher

URL = os.environ.get("AGENTWIRE_URL", "http://127.0.0.1:8080")
THREAD = os.environ.get("AGENTWIRE_THREAD", "thread_demo")

with Publisher(URL, publish_key=os.environ.get("AGENTWIRE_PUBLISH_KEY", "dev-publish-key")) as agentwire:
    with agentwire.run(thread_id=THREAD, user_id="alice", agent_name="python-example", input="2 + 2?") as run:
        run.thinking("Adding two numbers")
        with run.tool("calculator", {"expression": "2 + 2"}) as call:
            call.result = 2 + 2
        for word in ["2 ", "+ ", "2 ", "= ", "4"]:
            run.message(word)
        run.result = {"answer": 4}
