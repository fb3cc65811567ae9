"""The server's data plane, protocol-free and testable without HTTP: the scoring path every
front door takes (`scoring`: cache, admission, decoding, dynamic batching), the models it
serves (`registry`), what a request asks it to score (`items`), and the background runner of
stored batch jobs (`job_runner`)."""
