"""The one request path: a proxied request's life, from the client to an engine and back.

    client ─ passthrough (ASGI) ─ request: read and parse the body
                                  Runtime.resolve: alias → model id
             path.Relay ───────── scheduler lease: load, queue, slot
                                  engine_client: forward (pooled / raw), retry a dead socket
                                  whole answer, or a Stream (spliced, or piece by piece)
                                  release, metrics; engine errors in OpenAI's shape

``Relay.whole()`` and ``Relay.stream()`` are the two contracts; ``passthrough`` serves
OpenAI's routes on them, and other dialects are thin adapters on the same two calls.
"""
