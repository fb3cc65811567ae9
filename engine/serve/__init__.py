"""`pneumo serve`: the HTTP server and the protocol-free pieces it calls.

The submodules `monitor` (prediction log), `reports` (its summary and drift), `jobs`
(persistent batch jobs) and `logs` (JSON log lines) use only the standard library and numpy,
so they can be imported and tested without the 'serve' extra. Nothing is imported here:
importing `engine.serve` stays free.
"""
