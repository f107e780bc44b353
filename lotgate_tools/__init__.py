"""Operator tools: the `lotgate` command, the demo, dossiers, the local stack, the client.

No service imports this package; it imports the service library (`shared`) and the
generated protos, never a service's internals.
"""
