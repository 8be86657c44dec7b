"""Forgejo → stored triggers.

Pure values and rules: `mentions` (what Forgejo counts as a mention, stop/retry),
`thread` (a thread's events, watermarks, idempotency keys), `decide` (Policy, what a
thread asks of an agent, who may ask, hops). Their I/O: `reader` (a thread and write
access from Forgejo), `intake` (the daemon's one Intake: read → decide → submit),
`submit` (triggers into the queue, stop/retry onto the thread's task), and its two
callers, `poller` (notifications per agent) and `webhooks` (deliveries).
"""
