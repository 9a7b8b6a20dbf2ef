"""Run the PyTorch reference (baseline, dynamic or static ALGM) through the `Runner` interface."""

from __future__ import annotations

import numpy as np
import torch

from algm_export.merging.patch import AlgmModel, check_finite_array
from algm_export.runtimes.base import RunOutput, Runner


class TorchRunner(Runner):
    backend = "torch"

    def __init__(self, model, name="torch", device="cpu"):
        self.model = model.eval().to(device)
        self.device = device
        self.name = name

    def _infer(self, image) -> RunOutput:
        if isinstance(image, np.ndarray):
            image = torch.from_numpy(image)
        check_finite_array(image.detach().cpu().numpy())
        with torch.no_grad():
            logits = self.model(image.to(self.device).float())
        out = RunOutput(logits.float().cpu().numpy())
        if isinstance(self.model, AlgmModel):
            st = torch.stack([self.model.merge_stats["merges"], self.model.merge_stats["forced"]], -1)
            out.merge_stats = st.to(torch.int32).cpu().numpy()
            out.tokens = self.model.merge_stats["tokens"].cpu().numpy()
        return out
