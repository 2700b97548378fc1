"""The control API: one typed gRPC service between the CLI and a deployment's controller.

    control.proto        the service and its messages (the one definition; versioned by package)
    control_pb2*.py      generated from it, committed (scripts/generate-control-api.sh; a test
                         fails when they are stale)
    convert.py           status dicts (what the runtime builds, what status.json keeps) <-> messages
    server.py            served by the controller process: a Unix socket, optionally TCP + TLS
    client.py            what the CLI calls

Importing this package imports nothing: grpc costs the importer ~0.1 s, so only the commands
that talk to a controller pay it, and `boxer run` (every instance) never does.
"""
