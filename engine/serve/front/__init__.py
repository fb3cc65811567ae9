"""The server's front doors: what speaks HTTP, and the V2 gRPC service (`rpc/`, sharing the
HTTP routes' tensor checks `v2_tensors`, model answers `v2_models`, access decisions and byte
budget). The gate every request passes first (`gate`,
with its keys and rate limits in `security`, the HTTP parser's guards in `protocol`), the routes
of each protocol (`routes/`), the wire codecs they read and write (`v2_wire`, request `bodies`
and where they are parsed, `inputs`, job `uploads`), and the one table from errors to HTTP
statuses (`errors`). Everything here is thin onto the data plane (`serve.dataplane`)."""
