"""`pneumo serve`: the HTTP server, in three layers as in KServe's Python SDK.

- front doors: `routes/` (seed, v2 with its wire format `v2_wire`, ops, docs), thin; `gate`
  (request id, Host/Origin, body budget and deadline, keys, rate limits, access log),
  `protocol` (the header deadline) and `http_errors` (the one error -> status table) around
  them; `inputs` parses bodies on one thread; `app` wires it all;
- the protocol-free scoring layer: `scoring` (cache -> decode -> batcher -> prediction log ->
  metrics, one path for every route and the batch jobs), `admission` (the decode budgets it
  checks from image headers), `batching`, `cache`, `job_runner`;
- the models: `registry` (load, unload, rollback, warm-up gate) over the engine.

`store/` (SQLite: prediction log, reports, jobs, uploads) and `logs` need neither FastAPI nor
onnxruntime, so `pneumo monitor` and tests use them without the 'serve' extra. Nothing is
imported here: importing `engine.serve` stays free.
"""
