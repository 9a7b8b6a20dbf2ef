from algm_export.runtimes.torch.runner import TorchRunner  # noqa: F401
