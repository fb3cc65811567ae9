"""`pneumo serve`: the HTTP server, in three layers (as in KServe's Python SDK), each a folder,
each importing only the ones below it (an import-linter contract):

- `front/`: the front doors, what speaks HTTP: `routes/` (seed, v2, ops, docs), thin; the wire
  codecs they use (`v2_wire`, `bodies`, `inputs`, job `uploads`); around them the `gate`
  (request id, Host/Origin, body budget and deadline, keys and rate limits from `security`,
  access log), `protocol` (the HTTP parser's guards: header deadline and size) and
  `errors` (the one error -> status table);
- `dataplane/`: protocol-free and testable without HTTP: `scoring` (cache -> admission ->
  decoding -> batcher -> prediction log -> metrics, one path for every route and the batch
  jobs), the models (`registry`: load, unload, rollback, warm-up gate), `job_runner`;
- `store/`: the state on disk (SQLite: prediction log, reports, jobs), which needs neither
  FastAPI nor onnxruntime, so `pneumo monitor` and tests use it without the 'serve' extra.

Beside them: `config` (every setting, its default, range and help, written once), `setting`
(what a setting is, read from text or TOML), `keys` (API and admin keys, from the environment
and key files), `config_sources` (defaults < TOML file < environment < flags), `state` (the
parts of a running server, as routes reach them), `app` (wiring), `server` (uvicorn, TLS,
workers), `logs` and `metrics`. A new V2 extension goes in `front/` (its route and codec) over
`dataplane/scoring`; a new table in `store/schema` with its module in `store/`. Nothing is
imported here: importing `pneumo_onnx.engine.serve` stays free.
"""
