"""The server's front doors, one router per protocol, all thin onto `ScoringService`:
`seed` (the original deployment guide's routes), `v2` (KServe V2 / Open Inference Protocol),
`ops` (batch jobs, monitoring, Prometheus metrics), `docs` (Swagger UI from the package),
`cloud` (the container contracts of SageMaker and Vertex AI).
Each reads the server's parts with `engine.serve.state.server(request)`; none maps errors to
statuses (`http_errors` does)."""
