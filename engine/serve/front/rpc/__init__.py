"""The KServe V2 inference protocol over gRPC (`inference.GRPCInferenceService`, what
`tritonclient.grpc` speaks), a second front door onto the same scoring path, access control,
byte budget, metrics and access log as the HTTP routes: the messages (`pneumo_v2.proto` and the
code protoc generated from it), their codec (`codec`), the service's methods and who may call
each (`methods`), what every call passes through (`guard`), and the server itself (`door`)."""
