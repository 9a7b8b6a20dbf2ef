"""NVIDIA Triton Inference Server: host an export folder's entries (`server.FolderServer`, through
PyTriton, each model on a runner of the registry) and call a served model (`client.TritonRunner`,
the `Runner` interface over HTTP or gRPC). Both need the optional extra `algm-export[serve]`
(PyTriton, tritonclient); nothing here imports them at module load."""
