"""moto's server, with DynamoDB requests serialised.

moto's threaded server runs DynamoDB's UpdateItem and conditional writes without
a lock, so concurrent atomic adds can lose updates or hand out one value twice
(seen here under load). DynamoDB itself applies each item write atomically. This
launcher keeps moto's threads (SQS long polls must not block each other) but
runs DynamoDB calls one at a time, which restores the semantics the contract tests
assert. usage: moto_server.py HOST PORT
"""

import os
import sys
import threading

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple

host, port = sys.argv[1], int(sys.argv[2])
os.environ.setdefault("MOTO_PORT", str(port))
app = DomainDispatcherApplication(create_backend_app)
dynamodb = threading.Lock()


def serialised(environ, start_response):
    if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
        with dynamodb:
            # moto computes the whole response inside the call; materialise it under the lock.
            return list(app(environ, start_response))
    return app(environ, start_response)


run_simple(host, port, serialised, threaded=True, request_handler=MotoRequestHandler)
